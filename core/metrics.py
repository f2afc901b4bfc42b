"""Image quality metrics.

``psnr`` and ``ssim`` are the field's evaluation numbers: the images are quantised to 8 bit
exactly as BasicSR's ``tensor2img`` does (clamp to [0, 1], x255, round, BGR) and scored by
BasicSR's ``calculate_psnr`` / ``calculate_ssim`` (``crop_border`` pixels removed on each side,
``y_channel`` for the BT.601 luma). ``psnr_torch`` is a fast, differentiable, batched PSNR for
training-time monitoring (no quantisation).

:data:`TABLE` is the one list of full-reference metrics: ``vlir eval`` computes each row for the
restored and the degraded input, its CSV, HTML and chart read the rows' names, labels and
formats, and training validation calls :func:`validation_values`. Adding a metric is adding a row.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # pragma: no cover
    import torch  # imported where used: the table is read by commands that must start fast


def _to_uint8_bgr(img: torch.Tensor, who: str):
    """One image [3, H, W] / [1, 3, H, W] in [0, 1] -> HWC uint8 BGR, as BasicSR's tensor2img."""
    from basicsr.utils.img_util import tensor2img

    if img.dim() == 4 and img.shape[0] == 1:
        img = img[0]
    if img.dim() != 3 or img.shape[0] not in (1, 3):
        raise ValueError(f"{who}: expected one image [3, H, W] or [1, 3, H, W], got shape {tuple(img.shape)}")
    return tensor2img(img.detach(), rgb2bgr=True, min_max=(0, 1))


def _batched(fn_name: str, a: torch.Tensor, b: torch.Tensor, crop_border: int, y_channel: bool) -> float:
    from basicsr.metrics import psnr_ssim

    if a.shape != b.shape:
        raise ValueError(f"{fn_name}: images differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    fn = getattr(psnr_ssim, "calculate_" + fn_name)
    if a.dim() == 4 and a.shape[0] > 1:
        vals = [fn(_to_uint8_bgr(x, fn_name), _to_uint8_bgr(y, fn_name), crop_border=crop_border,
                   test_y_channel=y_channel) for x, y in zip(a, b)]
        return float(sum(vals) / len(vals))
    return float(fn(_to_uint8_bgr(a, fn_name), _to_uint8_bgr(b, fn_name), crop_border=crop_border,
                    test_y_channel=y_channel))


def psnr(img: torch.Tensor, ref: torch.Tensor, crop_border: int = 0, y_channel: bool = False) -> float:
    """PSNR (dB) of 8-bit-quantised images, BasicSR's ``calculate_psnr``; batches are averaged.

    ``inf`` for identical images.
    """
    return _batched("psnr", img, ref, crop_border, y_channel)


def ssim(img: torch.Tensor, ref: torch.Tensor, crop_border: int = 0, y_channel: bool = False) -> float:
    """SSIM of 8-bit-quantised images, BasicSR's ``calculate_ssim``; batches are averaged."""
    return _batched("ssim", img, ref, crop_border, y_channel)


def rgb_to_y(img: torch.Tensor) -> torch.Tensor:
    """BT.601 luma [B, 1, H, W] in [16/255, 235/255] of RGB images [B, 3, H, W] in [0, 1]."""
    import torch

    w = torch.tensor([65.481, 128.553, 24.966], dtype=img.dtype, device=img.device) / 255.0
    return (img * w[:, None, None]).sum(dim=-3, keepdim=True) + 16.0 / 255.0


def psnr_torch(img: torch.Tensor, ref: torch.Tensor, crop_border: int = 0, y_channel: bool = False,
               data_range: float = 1.0, eps: float = 1e-10) -> torch.Tensor:
    """Per-image PSNR [B] of float images [B, C, H, W] (no quantisation; differentiable)."""
    import torch

    if img.shape != ref.shape:
        raise ValueError(f"psnr_torch: images differ in shape: {tuple(img.shape)} vs {tuple(ref.shape)}")
    if img.dim() == 3:
        img, ref = img[None], ref[None]
    if crop_border:
        c = crop_border
        img, ref = img[..., c:-c, c:-c], ref[..., c:-c, c:-c]
    if y_channel:
        img, ref = rgb_to_y(img), rgb_to_y(ref)
    mse = (img.double() - ref.double()).pow(2).mean(dim=(1, 2, 3))
    return (10 * torch.log10(data_range ** 2 / (mse + eps))).to(img.dtype if img.is_floating_point() else torch.float32)


def mean_finite(values) -> float:
    """Mean of a list of metric values, ignoring ``inf`` (identical images); ``nan`` if none."""
    vals = [float(v) for v in values if math.isfinite(float(v))]
    return sum(vals) / len(vals) if vals else float("nan")


@dataclass(frozen=True)
class Metric:
    """One row of :data:`TABLE`.

    ``fn(img, ref, crop_border=0, y_channel=False) -> float`` scores one image against its
    reference (``reference=False``: ``fn(img) -> float``, a no-reference measure of the image,
    border already cropped); ``batched(img, ref, y_channel=False) -> Tensor[B]`` is the fast
    per-image version for training validation (None: not computed there). ``min_size``: the
    smallest side (after ``crop_border``) the metric is defined on (SSIM's 11 x 11 window); smaller
    images get None.
    """

    name: str  # results key and CSV column; ``input_<name>`` scores the degraded input
    fn: Callable[..., float]
    y_channel: bool
    higher_is_better: bool
    fmt: str  # format spec of one value, e.g. ".2f"
    label: str  # column heading
    unit: str = ""
    min_size: int = 1
    batched: Callable[..., torch.Tensor] | None = None
    reference: bool = True

    def defined(self, height: int, width: int, crop_border: int = 0) -> bool:
        return min(height, width) - 2 * crop_border >= self.min_size

    def __call__(self, img: torch.Tensor, ref: torch.Tensor | None = None, crop_border: int = 0) -> float | None:
        """The value for one image; None where the image is too small for the metric, or where a
        full-reference metric has no reference."""
        h, w = img.shape[-2:]
        if not self.defined(h, w, crop_border):
            return None
        if not self.reference:
            c = crop_border
            return self.fn(img[..., c:h - c, c:w - c] if c else img)
        if ref is None:
            return None
        return self.fn(img, ref, crop_border=crop_border, y_channel=self.y_channel)

    def format(self, value: float | None) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "n/a"
        if math.isinf(value):
            return "inf"
        return format(value, self.fmt)


SSIM_WINDOW = 11  # BasicSR's Gaussian window: SSIM is undefined on smaller images

TABLE: tuple[Metric, ...] = (
    Metric("psnr", psnr, False, True, ".2f", "PSNR", "dB", batched=psnr_torch),
    Metric("ssim", ssim, False, True, ".4f", "SSIM", min_size=SSIM_WINDOW),
    Metric("psnr_y", psnr, True, True, ".2f", "PSNR-Y", "dB", batched=psnr_torch),
    Metric("ssim_y", ssim, True, True, ".4f", "SSIM-Y", min_size=SSIM_WINDOW),
)


def get(name: str) -> Metric:
    """The row of :data:`TABLE` called ``name``."""
    for m in TABLE:
        if m.name == name:
            return m
    raise KeyError(f"no metric {name!r}; metrics: {', '.join(m.name for m in TABLE)}")


def columns() -> list[str]:
    """Result columns of :data:`TABLE`: each metric of the restored images, then of the inputs."""
    return [m.name for m in TABLE] + [f"input_{m.name}" for m in TABLE]


def score(img: torch.Tensor, ref: torch.Tensor | None, crop_border: int = 0, prefix: str = "",
          table: tuple[Metric, ...] | None = None) -> dict[str, float | None]:
    """Every metric of ``table`` (default :data:`TABLE`) for one image: ``{prefix + name: value or None}``."""
    return {prefix + m.name: m(img, ref, crop_border) for m in (TABLE if table is None else table)}


def validation_values(pred: torch.Tensor, gt: torch.Tensor, lq: torch.Tensor | None = None,
                      table: tuple[Metric, ...] | None = None) -> dict[str, torch.Tensor]:
    """Per-image values [B] of every metric with a ``batched`` function, for training validation:
    ``{name: ...}`` of ``pred`` (restored) and, with ``lq``, ``{input_<name>: ...}`` of the input."""
    out: dict[str, torch.Tensor] = {}
    for m in TABLE if table is None else table:
        if m.batched is None:
            continue
        out[m.name] = m.batched(pred, gt, y_channel=m.y_channel)
        if lq is not None:
            out["input_" + m.name] = m.batched(lq, gt, y_channel=m.y_channel)
    return out
