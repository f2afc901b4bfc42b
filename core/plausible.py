"""Whether an image can show a degradation at all, from plain image statistics.

A multi-label perceiver reads photos unlike its training data too, and can call a well-lit photo
low-light or a clear one hazy; the chain would then brighten or dehaze it (the PolyU and clean
CBSD68 rows of ``benchmarks/real_sets.py``). Two classes have a statistic that bounds them plainly:

- ``low-light``: the mean luminance (BT.601 Y). A low-light image is dark.
- ``hazy``: the mean dark channel (He et al., CVPR 2009: the minimum over the colours and a 15×15
  window). Haze adds airlight, so a hazy image's dark channel is bright; a clear one's is near 0.

:data:`BOUNDS` holds, for each, the range of the statistic over 99% of the training images that show
the class (the 99th percentile of low-light images' luminance, the 1st of hazy images' dark
channel), and a narrower range over those whose severity is saturated
(:data:`vlir.core.classes.SATURATED` and up: low-light images that dark are darker still). A reading
at a saturated severity is the one the chain's guard cannot check (a right restoration of it may
change the image without bound, :func:`vlir.core.chain.too_much`), so its statistic must lie in
the narrower range. Measured by ``benchmarks/plausible.py`` on the training data of
``specs/default-v2.yaml`` (its synthetic degradations and mixes on the training folders and the real
LOL training pairs; no test set). :func:`ruled_out` says why a class lies outside its range; the
chain (:mod:`vlir.core.chain`) then takes it for absent: an image is not treated for a degradation
that hardly any training image of it resembles (leaving an image alone costs less than treating
it on a guess).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .classes import SATURATED

DARK_WINDOW = 15  # He et al.'s patch size


def mean_luminance(x: torch.Tensor) -> torch.Tensor:
    """Mean luminance (BT.601 Y, [0, 1]) of each image of ``x`` (B, 3, H, W)."""
    x = x.float().clamp(0, 1)
    y = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    return y.flatten(1).mean(1)


def dark_channel(x: torch.Tensor) -> torch.Tensor:
    """Mean dark channel ([0, 1]) of each image of ``x`` (B, 3, H, W): min over RGB and a 15×15 window."""
    m = x.float().clamp(0, 1).amin(1, keepdim=True)
    k = min(DARK_WINDOW, m.shape[-2], m.shape[-1]) | 1
    m = F.pad(m, [k // 2] * 4, mode="replicate")
    return (-F.max_pool2d(-m, k, stride=1)).flatten(1).mean(1)


# class word -> (name, statistic) of its bound
STATISTICS: dict[str, tuple[str, Callable[[torch.Tensor], torch.Tensor]]] = {
    "low-light": ("mean luminance", mean_luminance), "hazy": ("mean dark channel", dark_channel)}
Range = tuple[float | None, float | None]  # (lowest, highest); None: unbounded
# class word -> {"any": range over its training images, "saturated": over those of saturated severity};
# benchmarks/results/plausible.json: 12000 items of default-v2's perceiver stage
BOUNDS: dict[str, dict[str, Range]] = {
    "low-light": {"any": (None, 0.261), "saturated": (None, 0.231)},  # 2546 items, 1779 saturated
    "hazy": {"any": (0.188, None), "saturated": (0.272, None)},  # 1246 items, 563 saturated
}


def ruled_out(word: str, x: torch.Tensor, severity: float | None = None,
              bounds: dict[str, dict[str, Range]] | None = None) -> str | None:
    """Why image ``x`` (1, 3, H, W), read as showing class ``word`` at ``severity``, cannot show it (its
    statistic outside ``bounds``, default :data:`BOUNDS`), or None when it can (or the class has no bound)."""
    bounds = BOUNDS if bounds is None else bounds
    if word not in STATISTICS or word not in bounds:
        return None
    name, stat = STATISTICS[word]
    v = float(stat(x[:1])[0])
    which = ["any"] + (["saturated"] if severity is not None and severity >= SATURATED else [])
    for key in which:
        low, high = bounds[word].get(key, (None, None))
        among = f"{word} training images" + (" of saturated severity" if key == "saturated" else "")
        if high is not None and v > high:
            return f"{name} {v:.3f} above {high:.3f} (higher than in 99% of {among})"
        if low is not None and v < low:
            return f"{name} {v:.3f} under {low:.3f} (lower than in 99% of {among})"
    return None
