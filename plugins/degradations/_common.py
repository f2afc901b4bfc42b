"""Helpers shared by the built-in degradations: seeded draws, kernels and per-image filtering.

All random numbers are drawn on the generator's device (CPU when no generator is given) and
then moved to the image's device, so a seeded ``torch.Generator`` gives the same result on
any device.
"""
from __future__ import annotations

import math
from typing import Annotated, Union

import torch
import torch.nn.functional as F
from pydantic import AfterValidator, Field


def _check_span(v):
    if isinstance(v, (tuple, list)):
        lo, hi = v
        if lo > hi:
            raise ValueError(f"range must be (low, high) with low <= high, got {tuple(v)}")
    return v


def _within(low: float, high: float = math.inf, low_open: bool = False) -> AfterValidator:
    """A check that every value of a fixed value or a range lies in [low, high] ((low, high] with
    ``low_open``)."""
    below = ">" if low_open else ">="
    what = f"{below} {low:g}" if high == math.inf else f"in {'(' if low_open else '['}{low:g}, {high:g}]"

    def check(v):
        lo, hi = span(v)
        if lo < low or (low_open and lo <= low) or hi > high:
            raise ValueError(f"expected values {what}, got {v}")
        return v

    return AfterValidator(check)


# the largest blur, streak or shake size in pixels a param may ask for: kernels are sized from it,
# so a typo (a length of 1e6) is a spec error, not an allocation
MAX_PIXELS = 256.0

# a fixed value or a (low, high) range sampled uniformly per image
FloatRange = Annotated[Union[float, tuple[float, float]], AfterValidator(_check_span)]
IntRange = Annotated[Union[int, tuple[int, int]], AfterValidator(_check_span)]
Unit = Annotated[float, Field(ge=0.0, le=1.0)]  # a fixed fraction or weight in [0, 1]
Probability = Unit
NonNegativeRange = Annotated[FloatRange, _within(0.0)]  # e.g. a noise sigma (0: none)
PositiveRange = Annotated[FloatRange, _within(0.0, low_open=True)]  # e.g. a gamma
UnitRange = Annotated[FloatRange, _within(0.0, 1.0)]  # e.g. a density, an intensity
PixelRange = Annotated[FloatRange, _within(0.0, MAX_PIXELS, low_open=True)]  # e.g. a blur sigma, a length
CountRange = Annotated[IntRange, _within(1)]  # e.g. a number of layers
QualityRange = Annotated[IntRange, _within(1, 100)]  # a JPEG quality


def span(v) -> tuple[float, float]:
    """(low, high) of a fixed value or a range."""
    if isinstance(v, (tuple, list)):
        return float(v[0]), float(v[1])
    return float(v), float(v)


def _gen_device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def rand(shape, generator=None, device=None) -> torch.Tensor:
    """U(0, 1) float32 draws of ``shape``, moved to ``device``."""
    x = torch.rand(shape, generator=generator, device=_gen_device(generator))
    return x.to(device) if device is not None else x.cpu()


def randn(shape, generator=None, device=None) -> torch.Tensor:
    """N(0, 1) float32 draws of ``shape``, moved to ``device``."""
    x = torch.randn(shape, generator=generator, device=_gen_device(generator))
    return x.to(device) if device is not None else x.cpu()


def uniform(value, n: int, generator=None) -> torch.Tensor:
    """``n`` float64 CPU draws from a fixed value or a (low, high) range."""
    lo, hi = span(value)
    u = torch.rand(n, generator=generator, device=_gen_device(generator), dtype=torch.float64).cpu()
    return lo + (hi - lo) * u


def randint(value, n: int, generator=None) -> torch.Tensor:
    """``n`` int64 CPU draws from a fixed int or an inclusive (low, high) range."""
    lo, hi = (int(v) for v in span(value))
    return torch.randint(lo, hi + 1, (n,), generator=generator, device=_gen_device(generator)).cpu()


def odd(n: float) -> int:
    """Smallest odd integer >= n (at least 1)."""
    k = max(1, int(math.ceil(n)))
    return k if k % 2 == 1 else k + 1


def gaussian_kernels(sigma: torch.Tensor, size: int) -> torch.Tensor:
    """Isotropic Gaussian kernels [n, size, size] (sum 1) for sigmas [n] (pixels)."""
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    d2 = (xx ** 2 + yy ** 2)[None]
    s = sigma.to(torch.float64).clamp_min(1e-6)[:, None, None]
    k = torch.exp(-0.5 * d2 / s ** 2)
    return (k / k.sum(dim=(1, 2), keepdim=True)).float()


def line_kernels(length: torch.Tensor, angle_deg: torch.Tensor, size: int, normalize: bool = True) -> torch.Tensor:
    """Anti-aliased straight-line kernels [n, size, size].

    ``length`` in pixels, ``angle_deg`` counter-clockwise from the horizontal axis. Each kernel
    pixel is weighted by how close it lies to the centred segment (1 on it, 0 at one pixel away);
    the centre pixel always has weight, so a kernel is never empty.
    With ``normalize`` each kernel sums to 1, otherwise its peak is 1.
    """
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    a = torch.deg2rad(angle_deg.to(torch.float64))[:, None, None]
    c, s = torch.cos(a), torch.sin(a)
    along = xx[None] * c - yy[None] * s  # image y points down: minus for counter-clockwise
    across = xx[None] * s + yy[None] * c
    half = length.to(torch.float64)[:, None, None] / 2
    w = (1 - across.abs()).clamp_min(0) * (half + 0.5 - along.abs()).clamp(0, 1)
    if normalize:
        w = w / w.sum(dim=(1, 2), keepdim=True)
    else:
        w = w / w.amax(dim=(1, 2), keepdim=True)
    return w.float()


def filter_per_image(img: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Filter each image of ``img`` [B, C, H, W] with its own kernel [B, k, k] (same size).

    Borders are reflected (replicated where the image is too small to reflect).
    """
    b, c, h, w = img.shape
    k = kernels.shape[-1]
    p = k // 2
    mode = "reflect" if p < h and p < w else "replicate"
    x = F.pad(img.reshape(1, b * c, h, w), (p, p, p, p), mode=mode)
    weight = kernels.to(img.device, img.dtype)[:, None].repeat_interleave(c, dim=0)
    return F.conv2d(x, weight, groups=b * c).reshape(b, c, h, w)


def smooth_field(n: int, h: int, w: int, generator=None, cells: int = 4, device=None) -> torch.Tensor:
    """Smooth random fields [n, 1, h, w] in [0, 1]: coarse uniform noise upsampled bicubically."""
    g = rand((n, 1, cells + 1, cells + 1), generator)
    f = F.interpolate(g, size=(h, w), mode="bicubic", align_corners=True)
    lo = f.amin(dim=(2, 3), keepdim=True)
    hi = f.amax(dim=(2, 3), keepdim=True)
    f = (f - lo) / (hi - lo).clamp_min(1e-6)
    return f.to(device) if device is not None else f


def as_float(img: torch.Tensor, who: str) -> tuple[torch.Tensor, torch.dtype]:
    """Check an image batch and return it as float32 with its original dtype."""
    if img.dim() != 4 or img.shape[1] != 3:
        raise ValueError(f"{who}: expected images [B, 3, H, W], got shape {tuple(img.shape)}")
    dtype = img.dtype if img.is_floating_point() else torch.float32
    return img.float(), dtype


def finish(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return x.clamp(0, 1).to(dtype)


def log_uniform(value, n: int, generator=None) -> torch.Tensor:
    """``n`` float64 CPU draws, uniform in log space between a range's ends (for scales such as noise levels)."""
    lo, hi = span(value)
    if lo <= 0:
        raise ValueError(f"log-uniform range must be positive, got {value}")
    return torch.exp(uniform((math.log(lo), math.log(hi)), n, generator))


def anisotropic_gaussian_kernels(sigma_x: torch.Tensor, sigma_y: torch.Tensor, theta: torch.Tensor,
                                 size: int) -> torch.Tensor:
    """Anisotropic Gaussian kernels [n, size, size] (sum 1): standard deviations ``sigma_x`` and
    ``sigma_y`` (pixels) along axes turned by ``theta`` (radians). Equals BasicSR's
    ``bivariate_Gaussian(size, sigma_x, sigma_y, theta, isotropic=False)``."""
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    c, s = torch.cos(theta.double())[:, None, None], torch.sin(theta.double())[:, None, None]
    sx2 = sigma_x.double().clamp_min(1e-6)[:, None, None] ** 2
    sy2 = sigma_y.double().clamp_min(1e-6)[:, None, None] ** 2
    # covariance R diag(sx2, sy2) R^T, R the rotation by theta; inverse quadratic form
    a, b, d = c * c * sx2 + s * s * sy2, c * s * (sx2 - sy2), s * s * sx2 + c * c * sy2
    det = a * d - b * b
    q = (d * xx ** 2 - 2 * b * xx * yy + a * yy ** 2) / det
    k = torch.exp(-0.5 * q)
    return (k / k.sum(dim=(1, 2), keepdim=True)).float()


def disc_kernels(radius: torch.Tensor, size: int) -> torch.Tensor:
    """Defocus (pill-box) kernels [n, size, size] (sum 1) of ``radius`` pixels, edges anti-aliased."""
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    dist = (xx ** 2 + yy ** 2).sqrt()[None]
    k = (radius.double().clamp_min(0.5)[:, None, None] + 0.5 - dist).clamp(0, 1)
    return (k / k.sum(dim=(1, 2), keepdim=True)).float()


def srgb_to_linear(x: torch.Tensor, gamma: float | torch.Tensor = 2.2) -> torch.Tensor:
    """Undo a camera's display gamma (a plain power law, as in most synthetic camera pipelines)."""
    return x.clamp(0, 1) ** gamma


def linear_to_srgb(x: torch.Tensor, gamma: float | torch.Tensor = 2.2) -> torch.Tensor:
    return x.clamp(1e-8, 1) ** (1.0 / gamma)
