"""No-reference image quality: figures of one image without a ground truth.

Each measure takes one RGB image and returns a float: a PIL image, a numpy array ``HxWx3`` or ``HxW``
(uint8, uint16, or float in [0, 1]) or a tensor ``[3, H, W]`` / ``[1, 3, H, W]`` / ``[H, W]``
(float in [0, 1]). Images are quantised to 8 bit first, as for PSNR/SSIM (BasicSR's
``tensor2img``), and grey images count as three equal channels.

- ``niqe``: NIQE (Mittal et al., "Making a completely blind image quality analyzer", 2013),
  BasicSR's ``calculate_niqe``: the Y channel, 96x96 blocks, the pristine model BasicSR ships
  (``niqe_pris_params.npz``). Lower is better; needs at least two whole 96x96 blocks.
- ``noise_sigma``: the standard deviation of white Gaussian noise in 8-bit levels, Immerkaer's
  estimator ("Fast noise variance estimation", 1996): the mean absolute response to the
  difference of two Laplacians, per channel, averaged. Texture and edges read as noise too, so
  compare an image with itself (before / after), not across photos. Lower is less noisy.
- ``sharpness``: the variance of the Laplacian of Y in 8-bit levels squared (Pech-Pacheco et al.,
  2000). Higher is sharper; noise raises it too, so read it with ``noise_sigma``.

``MEASURES`` lists them as rows ``(name, fn, higher_is_better, fmt, label, unit)``; :func:`measure`
computes all of them on the central ``crop`` x ``crop`` pixels (NIQE costs about a second per
768x768 on a CPU, and a crop keeps the noise and blur statistics that a resize would change).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

DEFAULT_CROP = 768  # pixels on a side measured by default (0: the whole image)
NIQE_BLOCK = 96


class TooSmall(ValueError):
    """An image smaller than a measure needs."""


@dataclass(frozen=True)
class Measure:
    """One row of :data:`MEASURES`: ``fn(img) -> float`` scores one image on its own."""

    name: str  # results key and CSV column; ``input_<name>`` scores the degraded input
    fn: Callable[[Any], float]
    higher_is_better: bool
    fmt: str  # format spec of one value, e.g. ".2f"
    label: str  # column heading
    unit: str = ""

    def format(self, value: float | None) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "n/a"
        return format(value, self.fmt)


def rgb8(img: Any, who: str = "image") -> np.ndarray:
    """One image -> ``HxWx3`` uint8 RGB (floats x255 rounded, as BasicSR's ``tensor2img``)."""
    if hasattr(img, "detach"):  # a torch tensor
        import torch

        t = img.detach().cpu()
        if t.dim() == 4 and t.shape[0] == 1:
            t = t[0]
        if t.dim() == 3 and t.shape[0] in (1, 3):
            t = t.permute(1, 2, 0)
        elif t.dim() != 2:
            raise ValueError(f"{who}: expected a tensor [3, H, W] or [1, 3, H, W], got shape {tuple(img.shape)}")
        if t.dtype != torch.uint8 and not t.dtype.is_floating_point:
            raise ValueError(f"{who}: expected uint8 or float samples, got {t.dtype}")
        arr = t.numpy() if t.dtype in (torch.uint8, torch.float32, torch.float64) else t.float().numpy()
    else:
        arr = np.asarray(img)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3):
        raise ValueError(f"{who}: expected an array HxWx3 or HxW, got shape {arr.shape}")
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if arr.dtype == np.uint16:
        return np.round(arr.astype(np.float64) / 257.0).astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"{who}: expected uint8, uint16 or float samples, got {arr.dtype}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{who}: samples must be finite (NaN or infinity found)")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < -0.5 or hi > 1.5:  # slight overshoot of a network is clipped; more is a scale mistake
        raise ValueError(f"{who}: float samples must be in [0, 1], got [{lo:.3g}, {hi:.3g}]"
                         + (" (divide 0-255 values by 255)" if hi > 1.5 else ""))
    dt = np.float32 if arr.dtype.itemsize <= 4 else np.float64  # float32 arithmetic as tensor2img's
    return (np.clip(arr.astype(dt), 0, 1) * dt(255.0)).round().astype(np.uint8)


def center_crop(arr: np.ndarray, size: int) -> np.ndarray:
    """The central ``size`` x ``size`` pixels (or fewer, on a smaller side) of ``HxW...``; 0: all."""
    if not size:
        return arr
    h, w = arr.shape[:2]
    sh, sw = min(size, h), min(size, w)
    top, left = (h - sh) // 2, (w - sw) // 2
    return arr[top:top + sh, left:left + sw]


def _y(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma in [16, 235] (float64) of ``HxWx3`` uint8 RGB, as BasicSR's ``to_y_channel``."""
    w = np.array([65.481, 128.553, 24.966]) / 255.0
    return rgb.astype(np.float64) @ w + 16.0


def _laplacian(x: np.ndarray) -> np.ndarray:
    """4-neighbour Laplacian of ``HxW`` on the interior pixels."""
    return x[:-2, 1:-1] + x[2:, 1:-1] + x[1:-1, :-2] + x[1:-1, 2:] - 4.0 * x[1:-1, 1:-1]


def niqe(img: Any) -> float:
    """NIQE of one image (lower is better): BasicSR's ``calculate_niqe`` on its 8-bit Y channel."""
    from basicsr.metrics.niqe import calculate_niqe

    rgb = rgb8(img, "niqe")
    h, w = rgb.shape[:2]
    if (h // NIQE_BLOCK) * (w // NIQE_BLOCK) < 2:
        raise TooSmall(f"niqe: a {w}x{h} image is too small: NIQE needs at least two whole "
                         f"{NIQE_BLOCK}x{NIQE_BLOCK} blocks (e.g. {2 * NIQE_BLOCK}x{NIQE_BLOCK})")
    return float(calculate_niqe(np.ascontiguousarray(rgb[..., ::-1]), crop_border=0, input_order="HWC",
                                convert_to="y"))


def noise_sigma(img: Any) -> float:
    """Noise standard deviation in 8-bit levels (Immerkaer 1996), averaged over the channels."""
    rgb = rgb8(img, "noise_sigma").astype(np.float64)
    h, w = rgb.shape[:2]
    if h < 3 or w < 3:
        raise TooSmall(f"noise_sigma: a {w}x{h} image is too small (at least 3x3)")
    # [[1, -2, 1], [-2, 4, -2], [1, -2, 1]]: the 8-neighbour minus twice the 4-neighbour Laplacian
    c = rgb[1:-1, 1:-1]
    edge = rgb[:-2, 1:-1] + rgb[2:, 1:-1] + rgb[1:-1, :-2] + rgb[1:-1, 2:]
    corner = rgb[:-2, :-2] + rgb[:-2, 2:] + rgb[2:, :-2] + rgb[2:, 2:]
    response = np.abs(4.0 * c - 2.0 * edge + corner)
    return float(math.sqrt(math.pi / 2.0) * response.mean() / 6.0)


def sharpness(img: Any) -> float:
    """Variance of the Laplacian of Y (8-bit levels squared; higher is sharper)."""
    rgb = rgb8(img, "sharpness")
    h, w = rgb.shape[:2]
    if h < 3 or w < 3:
        raise TooSmall(f"sharpness: a {w}x{h} image is too small (at least 3x3)")
    return float(_laplacian(_y(rgb)).var())


MEASURES: tuple[Measure, ...] = (
    Measure("niqe", niqe, False, ".2f", "NIQE"),
    Measure("noise_sigma", noise_sigma, False, ".2f", "noise σ", "8-bit levels"),
    Measure("sharpness", sharpness, True, ".0f", "sharpness", "8-bit levels²"),
)
BY_NAME = {m.name: m for m in MEASURES}
NAMES = tuple(BY_NAME)
KEYS = tuple(k for n in NAMES for k in (f"input_{n}", n))  # result keys: before and after restoration


def measure(img: Any, crop: int = DEFAULT_CROP) -> dict[str, float | None]:
    """Every measure of ``MEASURES`` on the central ``crop`` x ``crop`` pixels (0: the whole image);
    ``None`` for a measure the image is too small for."""
    arr = center_crop(rgb8(img), crop)
    out: dict[str, float | None] = {}
    for m in MEASURES:
        try:
            out[m.name] = m.fn(arr)
        except TooSmall:
            out[m.name] = None
    return out


def before_after(before: Any, after: Any, crop: int = DEFAULT_CROP) -> dict[str, float | None]:
    """:func:`measure` of an input (keys ``input_<name>``) and of its restoration (keys ``<name>``)."""
    out = {f"input_{k}": v for k, v in measure(before, crop).items()}
    out.update(measure(after, crop))
    return out
