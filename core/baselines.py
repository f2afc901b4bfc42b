"""Classical restoration baselines (no learning), to compare learned models against.

Each baseline maps an RGB float image in [0, 1] to one of the same shape. Functions take a
numpy array ``[H, W, 3]``; :func:`apply` takes torch tensors ``[3, H, W]`` or ``[B, 3, H, W]``.
``BASELINES`` lists, per degradation name of the registry, the baselines that suit it:

- noise: Gaussian filter, median filter, bilateral filter
- jpeg: Gaussian filter (smooths blocking)
- blur, motion_blur: unsharp mask
- low_light: histogram equalisation of the value channel, automatic gamma
- haze: dark channel prior (He et al., CVPR 2009) with a guided-filter refinement
- rain: median filter; median applied only where it darkens (rain streaks are bright)

Needs scipy (``pip install vlir[baselines]``).
"""
from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Callable

import numpy as np
from scipy import ndimage

if TYPE_CHECKING:  # pragma: no cover
    import torch

Baseline = Callable[[np.ndarray], np.ndarray]


def _spatial(fn, img: np.ndarray, **kw) -> np.ndarray:
    """Apply a 2-D scipy filter to each channel of ``[H, W, C]``."""
    return np.stack([fn(img[..., c], **kw) for c in range(img.shape[-1])], axis=-1)


def gaussian(img: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """Gaussian filter, ``sigma`` in pixels."""
    return np.clip(_spatial(ndimage.gaussian_filter, img, sigma=sigma, mode="reflect"), 0, 1)


def median(img: np.ndarray, size: int = 3) -> np.ndarray:
    """Median filter over a ``size`` x ``size`` window per channel."""
    return _spatial(ndimage.median_filter, img, size=size, mode="reflect")


def bilateral(img: np.ndarray, sigma_space: float = 1.5, sigma_range: float = 0.15, radius: int = 3) -> np.ndarray:
    """Bilateral filter: weights exp(-d²/2σs²) · exp(-|ΔI|²/2σr²), colour distance over channels."""
    h, w, _ = img.shape
    pad = np.pad(img, ((radius, radius), (radius, radius), (0, 0)), mode="reflect")
    num = np.zeros_like(img, dtype=np.float64)
    den = np.zeros((h, w, 1), dtype=np.float64)
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            ws = np.exp(-(dy * dy + dx * dx) / (2 * sigma_space ** 2))
            shifted = pad[radius + dy:radius + dy + h, radius + dx:radius + dx + w]
            d2 = ((shifted - img) ** 2).sum(axis=-1, keepdims=True)
            wt = ws * np.exp(-d2 / (2 * sigma_range ** 2))
            num += wt * shifted
            den += wt
    return np.clip(num / den, 0, 1).astype(img.dtype)


def streak_median(img: np.ndarray, size: int = 7) -> np.ndarray:
    """Rain removal: pixels brighter than their local median are replaced by it (streaks add light)."""
    return np.minimum(img, median(img, size))


def unsharp(img: np.ndarray, sigma: float = 2.0, amount: float = 1.0) -> np.ndarray:
    """Unsharp mask: ``img + amount * (img - gaussian(img, sigma))``."""
    smooth = _spatial(ndimage.gaussian_filter, img, sigma=sigma, mode="reflect")
    return np.clip(img + amount * (img - smooth), 0, 1)


def hist_eq(img: np.ndarray, bins: int = 256) -> np.ndarray:
    """Histogram equalisation of the HSV value (max over channels); hue and saturation kept."""
    v = img.max(axis=-1)
    hist, edges = np.histogram(v, bins=bins, range=(0.0, 1.0))
    cdf = np.cumsum(hist).astype(np.float64)
    cdf = (cdf - cdf[0]) / max(cdf[-1] - cdf[0], 1.0)
    v_eq = np.interp(v, edges[1:], cdf)
    gain = v_eq / np.maximum(v, 1e-4)
    return np.clip(img * gain[..., None], 0, 1)


def auto_gamma(img: np.ndarray, target: float = 0.45) -> np.ndarray:
    """Gamma correction that brings the mean intensity to ``target``."""
    m = float(np.clip(img.mean(), 1e-4, 0.999))
    g = np.log(target) / np.log(m)
    return np.clip(img, 0, 1) ** g


def _box(x: np.ndarray, r: int) -> np.ndarray:
    return ndimage.uniform_filter(x, size=2 * r + 1, mode="reflect")


def guided_filter(guide: np.ndarray, src: np.ndarray, radius: int = 30, eps: float = 1e-3) -> np.ndarray:
    """Grey-guide guided filter (He et al., 2010) of ``src`` [H, W] by ``guide`` [H, W]."""
    mean_i, mean_p = _box(guide, radius), _box(src, radius)
    cov = _box(guide * src, radius) - mean_i * mean_p
    var = _box(guide * guide, radius) - mean_i ** 2
    a = cov / (var + eps)
    b = mean_p - a * mean_i
    return _box(a, radius) * guide + _box(b, radius)


def dark_channel_prior(img: np.ndarray, patch: int = 15, omega: float = 0.95, t0: float = 0.1,
                       refine: bool = True) -> np.ndarray:
    """Dehazing by the dark channel prior: airlight from the haziest 0.1 %, transmission, recovery."""
    x = img.astype(np.float64)
    dark = ndimage.minimum_filter(x.min(axis=-1), size=patch, mode="nearest")
    n = max(1, dark.size // 1000)
    idx = np.argpartition(dark.ravel(), -n)[-n:]
    candidates = x.reshape(-1, 3)[idx]
    airlight = candidates[candidates.sum(axis=1).argmax()]
    airlight = np.maximum(airlight, 1e-3)
    norm = (x / airlight).min(axis=-1)
    t = 1.0 - omega * ndimage.minimum_filter(norm, size=patch, mode="nearest")
    if refine:
        grey = x @ np.array([0.299, 0.587, 0.114])
        t = guided_filter(grey, t, radius=max(patch * 2, 8), eps=1e-3)
    t = np.maximum(t, t0)[..., None]
    return np.clip((x - airlight) / t + airlight, 0, 1).astype(img.dtype)


def identity(img: np.ndarray) -> np.ndarray:
    return img


BASELINES: dict[str, dict[str, Baseline]] = {
    "noise": {"gaussian": partial(gaussian, sigma=1.0), "median": partial(median, size=3),
              "bilateral": partial(bilateral, sigma_space=1.5, sigma_range=0.15, radius=3)},
    "jpeg": {"gaussian": partial(gaussian, sigma=0.6)},
    "blur": {"unsharp": partial(unsharp, sigma=2.0, amount=1.0)},
    "motion_blur": {"unsharp": partial(unsharp, sigma=2.0, amount=1.0)},
    "low_light": {"hist_eq": hist_eq, "gamma": auto_gamma},
    "haze": {"dark_channel_prior": dark_channel_prior},
    "rain": {"median": partial(median, size=5), "streak_median": partial(streak_median, size=7)},
}


def baselines_for(degradation: str) -> dict[str, Baseline]:
    """The baselines suited to a degradation (empty when there are none)."""
    return dict(BASELINES.get(degradation, {}))


def apply(fn: Baseline, img: "torch.Tensor") -> "torch.Tensor":
    """Run a numpy baseline on a tensor ``[3, H, W]`` or ``[B, 3, H, W]`` in [0, 1]."""
    import torch

    if img.dim() == 4:
        return torch.stack([apply(fn, x) for x in img])
    if img.dim() != 3 or img.shape[0] != 3:
        raise ValueError(f"baseline expects an image [3, H, W] or [B, 3, H, W], got {tuple(img.shape)}")
    arr = img.detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy()
    out = np.ascontiguousarray(fn(arr), dtype=np.float32)
    if out.shape != arr.shape:
        raise ValueError(f"baseline changed the image shape {arr.shape} -> {out.shape}")
    return torch.from_numpy(out).permute(2, 0, 1).to(img.device, img.dtype)
