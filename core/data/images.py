"""Robust image reading and atomic writing.

``read_image`` returns an RGB float tensor [3, H, W] in [0, 1] for any common file:
8- and 16-bit, grey, palette, grey+alpha, RGBA, CMYK; PNG, JPEG, TIFF, BMP, WebP, GIF (first frame).
Transparent images are composited on white by default (``alpha="white"``; ``"black"`` or ``"drop"``
to keep the colour under the alpha). EXIF orientation is applied to 8-bit files (16-bit
files are read by OpenCV as stored). Files that are empty,
truncated, corrupt or not images raise :class:`ImageError` naming the path and the reason.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm")
_HIGH_DEPTH_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"}


class ImageError(ValueError):
    """An image file that cannot be read or written."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"image {self.path}: {reason}")


def is_image_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def _bit_depth(path: Path, im) -> int:
    """Bits per sample declared by the file (16 for 16-bit PNG/TIFF, else 8)."""
    if im.mode in _HIGH_DEPTH_MODES:
        return 16
    if im.format == "PNG":
        with open(path, "rb") as f:
            head = f.read(25)
        if len(head) == 25 and head[12:16] == b"IHDR":
            return int(head[24])
    if im.format == "TIFF":
        bits = getattr(im, "tag_v2", {}).get(258)
        if bits:
            return int(max(bits if isinstance(bits, tuple) else (bits,)))
    return 8


def _composite(rgb: np.ndarray, alpha: np.ndarray | None, mode: str) -> np.ndarray:
    """rgb [H, W, 3], alpha [H, W] float in [0, 1]."""
    if alpha is None or mode == "drop":
        return rgb
    bg = 1.0 if mode == "white" else 0.0
    a = alpha[..., None]
    return rgb * a + bg * (1 - a)


def _read_high_depth(path: Path, alpha: str) -> tuple[np.ndarray, bool]:
    """16-bit files through OpenCV (Pillow reduces 16-bit colour to 8 bits)."""
    import cv2

    arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise ImageError(path, "OpenCV could not decode this 16-bit image (corrupt or truncated?)")
    if arr.dtype == np.uint16:
        arr = arr.astype(np.float32) / 65535.0
    elif arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / 255.0
    elif arr.dtype in (np.float32, np.float64):
        arr = np.clip(arr.astype(np.float32), 0, 1)
    else:
        raise ImageError(path, f"unsupported sample type {arr.dtype}")
    has_alpha = False
    if arr.ndim == 2:
        rgb, a = np.repeat(arr[..., None], 3, axis=2), None
    elif arr.shape[2] == 1:
        rgb, a = np.repeat(arr, 3, axis=2), None
    elif arr.shape[2] == 2:
        rgb, a = np.repeat(arr[..., :1], 3, axis=2), arr[..., 1]
    elif arr.shape[2] == 3:
        rgb, a = arr[..., ::-1], None
    else:
        rgb, a = arr[..., 2::-1], arr[..., 3]
    has_alpha = a is not None
    return _composite(rgb, a, alpha), has_alpha


def read_image(path: str | os.PathLike, alpha: Literal["white", "black", "drop"] = "white"
               ) -> tuple[torch.Tensor, dict[str, Any]]:
    """Read an image as an RGB float32 tensor [3, H, W] in [0, 1] and an info dict.

    ``info`` holds ``path``, ``format``, ``mode`` (as stored), ``bit_depth`` (8 or 16), ``size``
    (W, H), ``alpha`` (whether the file had transparency) and ``converted`` (a short note of what
    was done to get RGB, or ``None`` for plain 8-bit RGB).
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.exists():
        raise ImageError(path, "no such file")
    if path.is_dir():
        raise ImageError(path, "is a directory")
    if path.stat().st_size == 0:
        raise ImageError(path, "empty file (0 bytes)")
    try:
        with Image.open(path) as im:
            fmt, mode = im.format, im.mode
            depth = _bit_depth(path, im)
            im.load()  # full decode: truncation and corruption surface here
            arr = None
            if depth > 8 and mode not in ("P", "1"):
                try:
                    arr, has_alpha = _read_high_depth(path, alpha)
                    note = f"{depth}-bit {mode}" + (f", alpha composited on {alpha}"
                                                     if has_alpha and alpha != "drop" else "")
                except ImageError:
                    arr = None  # OpenCV cannot read it: Pillow's decoding below
            if arr is None:
                rotated = im.getexif().get(0x0112, 1) != 1
                if rotated:
                    im = ImageOps.exif_transpose(im)
                arr, has_alpha, note = _pil_to_rgb(im, alpha)
                if rotated:
                    note = (note + "; " if note else "") + "EXIF orientation applied"
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(path, "not a recognised image format (corrupt or not an image)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        msg = str(e) or type(e).__name__
        if "truncated" in msg.lower():
            msg = f"truncated file ({msg})"
        raise ImageError(path, msg) from e
    t = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))).float().clamp_(0, 1)
    info = {"path": str(path), "format": fmt, "mode": mode, "bit_depth": 16 if depth > 8 else 8,
            "size": (t.shape[2], t.shape[1]), "alpha": has_alpha, "converted": note}
    return t, info


def _pil_to_rgb(im, alpha: str) -> tuple[np.ndarray, bool, str | None]:
    mode = im.mode
    if mode == "RGB":
        return np.asarray(im, dtype=np.float32) / 255.0, False, None
    if mode in _HIGH_DEPTH_MODES:  # integer or float grey that OpenCV could not read
        a = np.asarray(im, dtype=np.float32)
        scale = 1.0 if mode == "F" and a.max(initial=0) <= 1.0 else (255.0 if a.max(initial=0) <= 255 else 65535.0)
        g = np.clip(a / scale, 0, 1)
        return np.repeat(g[..., None], 3, axis=2), False, f"{mode} grey"
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode in ("P", "L", "RGB") and "transparency" in im.info)
    if has_alpha:
        rgba = np.asarray(im.convert("RGBA"), dtype=np.float32) / 255.0
        rgb = _composite(rgba[..., :3], rgba[..., 3], alpha)
        return rgb, True, f"{mode} with alpha" + (f" composited on {alpha}" if alpha != "drop" else " dropped")
    rgb = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return rgb, False, f"{mode} converted to RGB"


def write_image(path: str | os.PathLike, img: torch.Tensor, bit_depth: int = 8, quality: int = 95) -> Path:
    """Write an image tensor ([3, H, W], [1, 3, H, W] or grey [1, H, W] / [H, W], values in [0, 1]).

    The format comes from the suffix (PNG, JPEG, TIFF, BMP, WebP). ``bit_depth=16`` is kept for
    PNG and TIFF; other formats are 8-bit only. Values are clamped and rounded. The file is
    written atomically: a failed write never leaves a partial file.
    """
    from ..io import atomic_path

    path = Path(path)
    suffix = path.suffix.lower()
    formats = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF",
               ".bmp": "BMP", ".webp": "WEBP"}
    if suffix not in formats:
        raise ImageError(path, f"unknown image suffix {path.suffix!r}; use one of {sorted(formats)}")
    if bit_depth not in (8, 16):
        raise ImageError(path, f"bit_depth must be 8 or 16, got {bit_depth}")
    if bit_depth == 16 and formats[suffix] not in ("PNG", "TIFF"):
        raise ImageError(path, f"{formats[suffix]} cannot store 16-bit samples; use .png or .tif")
    x = img.detach().float().cpu()
    if x.dim() == 4:
        if x.shape[0] != 1:
            raise ImageError(path, f"expected one image, got a batch of {x.shape[0]}")
        x = x[0]
    if x.dim() == 2:
        x = x[None]
    if x.dim() != 3 or x.shape[0] not in (1, 3):
        raise ImageError(path, f"expected a tensor [3, H, W] or [1, H, W], got shape {tuple(img.shape)}")
    if not torch.isfinite(x).all():
        raise ImageError(path, "image tensor contains NaN or infinite values")
    x = x.clamp(0, 1).permute(1, 2, 0).numpy()
    with atomic_path(path) as tmp:
        if bit_depth == 16:
            import cv2

            arr = np.round(x * 65535.0).astype(np.uint16)
            arr = arr[..., 0] if arr.shape[2] == 1 else np.ascontiguousarray(arr[..., ::-1])
            if not cv2.imwrite(str(tmp), arr):
                raise ImageError(path, "OpenCV failed to write the 16-bit image")
        else:
            from PIL import Image

            arr = np.round(x * 255.0).astype(np.uint8)
            pil = Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr)
            kw = {"quality": int(quality)} if formats[suffix] in ("JPEG", "WEBP") else {}
            pil.save(tmp, format=formats[suffix], **kw)
    return path
