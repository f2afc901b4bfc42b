"""Robust image reading and atomic writing.

``read_image`` returns an RGB float tensor [3, H, W] in [0, 1] for any common file:
8- and 16-bit, grey, palette, grey+alpha, RGBA, CMYK; PNG, JPEG, TIFF, BMP, WebP, GIF.
Transparent images are composited on white by default (``alpha="white"``; ``"black"`` or ``"drop"``
to keep the colour under the alpha). EXIF / TIFF orientation is applied at every bit depth.

Sample values map to [0, 1] by one rule (:func:`to_unit`): 8-bit / 255, 16-bit / 65535; float
samples are taken as they are when they lie in [0, 1] and refused otherwise (naming the range
found: 0..255 or HDR floats have no single right scale); wider integers (int32, ...) are read as
16-bit samples when 0 <= values <= 65535 and refused otherwise. Animated GIFs and multi-page
TIFFs give their first frame, and ``info["converted"]`` says how many frames were left out.

The declared size is checked against a pixel limit from the header, before anything is decoded
(:data:`MAX_PIXELS`, :func:`set_max_pixels`). Files that are empty, truncated, corrupt, too large
or not images raise :class:`ImageError` naming the path and the reason.

EXIF and ICC profiles come back in ``info`` (``exif``, with the orientation reset to 1 since it
is applied to the pixels, and ``icc_profile``); ``write_image`` keeps them where the output format
can hold them, and :func:`dropped_metadata` says what it cannot keep.
"""
from __future__ import annotations

import contextlib
import os
import struct
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Literal

if TYPE_CHECKING:  # pragma: no cover - numpy and torch load on first use (vlir --help stays light)
    import numpy as np
    import torch

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm")
_HIGH_DEPTH_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"}
_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF",
            ".bmp": "BMP", ".webp": "WEBP"}
# what write_image keeps, by (format, bit depth); 32 = float32 samples (TIFF only)
KEEPS = {("PNG", 8): {"EXIF", "ICC profile"}, ("PNG", 16): {"EXIF", "ICC profile"},
         ("JPEG", 8): {"EXIF", "ICC profile"}, ("WEBP", 8): {"EXIF", "ICC profile"},
         ("TIFF", 8): {"EXIF", "ICC profile"}, ("TIFF", 16): {"ICC profile"}, ("TIFF", 32): {"ICC profile"},
         ("BMP", 8): set()}

# Pixel limits, checked from the header before decoding. A whole-image restore with the default
# model peaks near 0.7 KB per pixel on a CPU (torch, 1 megapixel, ru_maxrss), so 4096 x 4096 is
# about 12 GB; with tiles the backbone's memory is bounded by the tile and the whole image costs
# about 0.1 KB per pixel (input, output and blend buffers), so 8x more pixels take about as much.
MAX_PIXELS = 4096 * 4096
TILED_MAX_PIXELS = 8 * MAX_PIXELS
_limit = MAX_PIXELS  # the process default of read_image (set_max_pixels)


class ImageError(ValueError):
    """An image file that cannot be read or written."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"image {self.path}: {reason}")


class PixelLimitError(ImageError):
    """An image whose declared size is over the pixel limit (nothing was decoded)."""


def is_image_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def set_max_pixels(n: int) -> None:
    """Default pixel limit of :func:`read_image` in this process (0: no limit)."""
    global _limit
    _limit = int(n)


def max_pixels_arg(text: str) -> int:
    """argparse type of ``--max-pixels``: a pixel count (``50000000``, ``5e7``) or 0 for no limit."""
    import argparse

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of pixels, got {text!r}") from None
    if not value >= 0 or value != int(value):
        raise argparse.ArgumentTypeError(f"expected a whole number of pixels >= 0 (0: no limit), got {text!r}")
    return int(value)


def max_pixels_help(whole: bool = True) -> str:
    """``--max-pixels`` help: ``whole`` for commands that run the backbone on whole images unless --tile."""
    default = (f"{MAX_PIXELS:,} = 4096x4096, {TILED_MAX_PIXELS:,} with --tile" if whole else f"{TILED_MAX_PIXELS:,}")
    return f"refuse images over N pixels, checked before decoding (default {default}; 0: no limit)"


def check_pixels(path: str | os.PathLike, width: int, height: int, limit: int) -> None:
    """Raise :class:`PixelLimitError` when ``width x height`` is over ``limit`` (0: no limit)."""
    if limit and width * height > limit:
        hint = ""
        if limit == MAX_PIXELS and width * height <= TILED_MAX_PIXELS:
            hint = f", or restore it in tiles (--tile 512 allows {TILED_MAX_PIXELS / 1e6:.0f} MP)"
        raise PixelLimitError(path, f"{width}x{height} pixels ({width * height / 1e6:.1f} MP) is over vlir's "
                                    f"pixel limit of {limit:,} ({limit / 1e6:.1f} MP); raise it with "
                                    f"--max-pixels N if the machine has the memory (0: no limit){hint}")


def pixel_problem(path: str | os.PathLike, limit: int) -> str | None:
    """Why ``path`` is over the pixel ``limit``, read from its header alone (nothing is decoded), or
    None: within the limit, or not readable here (:func:`read_image` then says why)."""
    from PIL import Image

    path = Path(path)
    try:
        tiff = _tiff_page(path, limit)
        if tiff is not None:
            tiff[0].close()
            return None
        with _own_limit(), Image.open(path) as im:
            check_pixels(path, im.width, im.height, limit)
    except PixelLimitError as e:
        return e.reason
    except Exception:  # noqa: BLE001 - unreadable: read_image reports it with the file's other problems
        return None
    return None


@contextlib.contextmanager
def _own_limit() -> Iterator[None]:
    """Let vlir's own limit decide instead of Pillow's bomb check: ``read_image`` checks the size right
    after opening, before anything is decoded (Pillow's check is off meanwhile, and only then)."""
    from PIL import Image

    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = old


def to_unit(path: str | os.PathLike, arr: np.ndarray) -> tuple[np.ndarray, int, str | None]:
    """Samples -> float32 in [0, 1], the bit depth they count as (8, 16, or 32 for float) and a note."""
    import numpy as np
    dt = arr.dtype
    if dt == np.uint8:
        return arr.astype(np.float32) / 255.0, 8, None
    if dt == np.uint16:
        return arr.astype(np.float32) / 65535.0, 16, None
    if dt == np.bool_:
        return arr.astype(np.float32), 8, None
    if dt.kind == "f":
        a = arr.astype(np.float32)
        if not np.isfinite(a).all():
            raise ImageError(path, f"{dt} samples include NaN or infinite values")
        lo, hi = float(a.min(initial=0)), float(a.max(initial=0))
        if lo < 0 or hi > 1:
            raise ImageError(path, f"{dt} samples range {lo:g}..{hi:g}, outside [0, 1]: vlir reads float images "
                                   "only as values in [0, 1] (there is no single right scale for others); "
                                   "rescale them to [0, 1] or save 8- or 16-bit integers")
        return a, 32, None
    if dt.kind in "iu":
        lo, hi = int(arr.min(initial=0)), int(arr.max(initial=0))
        if lo < 0 or hi > 65535:
            raise ImageError(path, f"{dt} samples range {lo}..{hi}: vlir reads integer samples wider than 8 bits "
                                   "as 16-bit (0..65535) and these do not fit; save 16-bit or [0, 1] float")
        return arr.astype(np.float32) / 65535.0, 16, f"{dt} samples read as 16-bit (0..65535)"
    raise ImageError(path, f"unsupported sample type {dt}")


def orient(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF / TIFF orientation (1..8) to an [H, W, ...] array, as Pillow's exif_transpose does."""
    import numpy as np
    ops = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
           5: lambda a: a.swapaxes(0, 1), 6: lambda a: np.rot90(a, -1),
           7: lambda a: a[::-1, ::-1].swapaxes(0, 1), 8: lambda a: np.rot90(a, 1)}
    op = ops.get(int(orientation))
    return np.ascontiguousarray(op(arr)) if op else arr


def _composite(rgb: np.ndarray, alpha: np.ndarray | None, mode: str, premultiplied: bool = False) -> np.ndarray:
    """rgb [H, W, 3], alpha [H, W] float in [0, 1]."""
    import numpy as np
    if alpha is None:
        return rgb
    a = alpha[..., None]
    if mode == "drop":
        return np.divide(rgb, a, out=np.zeros_like(rgb), where=a > 0) if premultiplied else rgb
    bg = 1.0 if mode == "white" else 0.0
    return (rgb if premultiplied else rgb * a) + bg * (1 - a)


def _channels(path: Path, arr: np.ndarray, bgr: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """[H, W] or [H, W, C] float -> (rgb [H, W, 3], alpha [H, W] or None)."""
    import numpy as np
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 2, 3, 4):
        raise ImageError(path, f"unsupported sample layout {tuple(arr.shape)} (expected grey, grey+alpha, RGB or RGBA)")
    c = arr.shape[2]
    if c <= 2:
        return np.repeat(arr[..., :1], 3, axis=2), arr[..., 1] if c == 2 else None
    rgb = arr[..., 2::-1] if bgr else arr[..., :3]
    return rgb, arr[..., 3] if c == 4 else None


def _alpha_note(has_alpha: bool, alpha: str) -> str | None:
    if not has_alpha:
        return None
    return "alpha " + (f"composited on {alpha}" if alpha != "drop" else "dropped")


def _join(*notes: str | None) -> str | None:
    text = "; ".join(n for n in notes if n)
    return text or None


def _frames_note(n: int) -> str | None:
    return f"first of {n} frames read, the other {n - 1} left out" if n > 1 else None


def _read_opencv(path: Path, alpha: str, orientation: int) -> tuple[np.ndarray, bool, int, str | None]:
    """16-bit files through OpenCV (Pillow reduces 16-bit colour to 8 bits)."""
    import cv2

    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise ImageError(path, "OpenCV could not decode this high-bit-depth image (corrupt or truncated?)")
    arr, depth, note = to_unit(path, raw)
    rgb, a = _channels(path, orient(arr, orientation), bgr=True)
    return _composite(rgb, a, alpha), a is not None, depth, note


def _read_tiff(path: Path, page, alpha: str) -> tuple[np.ndarray, bool, int, str | None, bytes | None]:
    """A TIFF that is not plain 8-bit (16-bit, float, int32, ...) through tifffile."""
    import numpy as np
    photometric = int(page.photometric)
    if photometric not in (0, 1, 2):  # MINISWHITE, MINISBLACK, RGB
        raise ImageError(path, f"{page.dtype} TIFF with photometric {page.photometric.name} is not supported "
                               "(grey or RGB only above 8 bits)")
    tag = page.tags.get(274)
    orientation = int(tag.value) if tag is not None else 1
    try:
        raw = page.asarray()
    except ValueError as e:  # a compression tifffile cannot decode without imagecodecs: OpenCV's libtiff
        if "imagecodecs" not in str(e):
            raise ImageError(path, f"cannot decode TIFF data ({e})") from e
        arr, has_alpha, depth, note = _read_opencv(path, alpha, orientation)
        icc = page.tags.get(34675)
        return arr, has_alpha, depth, note, icc.value if icc is not None else None
    if page.axes.startswith("S"):  # planar: samples first
        raw = np.moveaxis(raw, 0, -1)
    arr, depth, note = to_unit(path, raw)
    if photometric == 0:
        arr = 1.0 - arr
    rgb, a = _channels(path, orient(arr, orientation), bgr=False)
    extra = tuple(getattr(page, "extrasamples", ()) or ())
    premultiplied = bool(extra) and int(extra[0]) == 1
    icc = page.tags.get(34675)
    note = _join(note, "TIFF orientation applied" if orientation != 1 else None)
    return _composite(rgb, a, alpha, premultiplied), a is not None, depth, note, icc.value if icc is not None else None


def _tiff_page(path: Path, limit: int):
    """(first page, frame count) of a TIFF whose samples are not 8-bit, else None (Pillow reads it)."""
    import numpy as np
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic not in (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+"):
        return None
    import tifffile

    try:
        tf = tifffile.TiffFile(path)
    except Exception:  # noqa: BLE001 - Pillow's decoding reports the damage
        return None
    page = tf.pages[0]
    if page.dtype in (np.uint8, np.bool_):
        tf.close()
        return None
    try:
        check_pixels(path, int(page.imagewidth), int(page.imagelength), limit)
    except PixelLimitError:
        tf.close()
        raise
    n = sum(1 for p in tf.pages if not getattr(p, "is_reduced", False))
    return tf, page, n


def _metadata(im) -> tuple[bytes | None, bytes | None, list[str]]:
    """(EXIF with the orientation reset to 1, ICC profile, what cannot be carried) of an open Pillow image.

    TIFFs hold EXIF as tags of the image itself: their descriptive tags (make, model, date, ...)
    are carried over, an EXIF sub-IFD is not.
    """
    from PIL import Image

    icc = im.info.get("icc_profile") or None
    exif, lost = Image.Exif(), []
    if im.format == "TIFF":
        tags = im.getexif()
        for k in _TIFF_DESCRIPTIVE:
            if k in tags:
                exif[k] = tags[k]
        if 0x8769 in tags or 0x8825 in tags:
            lost.append("EXIF sub-IFD of the TIFF not kept")
    elif im.info.get("exif"):
        exif.load(im.info["exif"])
    if not len(exif):
        return None, icc, lost
    if exif.get(0x0112, 1) != 1:
        exif[0x0112] = 1  # applied to the pixels
    return exif.tobytes(), icc, lost


# TIFF tags that are EXIF-like descriptions rather than the image's layout: description, make,
# model, software, date and time, artist, copyright
_TIFF_DESCRIPTIVE = (270, 271, 272, 305, 306, 315, 33432)


def read_image(path: str | os.PathLike, alpha: Literal["white", "black", "drop"] = "white",
               max_pixels: int | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
    """Read an image as an RGB float32 tensor [3, H, W] in [0, 1] and an info dict.

    ``info`` holds ``path``, ``format``, ``mode`` (as stored), ``bit_depth`` (8, 16, or 32 for
    float samples), ``size`` (W, H, after orientation), ``alpha`` (whether the file had
    transparency), ``frames`` (how many the file has; the first is read), ``exif`` and
    ``icc_profile`` (bytes or None) and ``converted`` (a short note of what was done, or ``None``).
    ``max_pixels``: refuse larger images before decoding (default :func:`set_max_pixels`'s, 0: no limit).
    """
    import numpy as np
    import torch
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    limit = _limit if max_pixels is None else int(max_pixels)
    if not path.exists():
        raise ImageError(path, "no such file")
    if path.is_dir():
        raise ImageError(path, "is a directory")
    if path.stat().st_size == 0:
        raise ImageError(path, "empty file (0 bytes)")
    try:
        tiff = _tiff_page(path, limit)
        if tiff is not None:
            tf, page, frames = tiff
            with tf:
                arr, has_alpha, depth, note, icc = _read_tiff(path, page, alpha)
            fmt, mode, exif = "TIFF", f"{page.dtype} {page.photometric.name}", None
            note = _join(note, _alpha_note(has_alpha, alpha), _frames_note(frames),
                         "EXIF not kept (TIFF above 8 bits)" if 34665 in page.tags else None)
        else:
            with _own_limit(), Image.open(path) as im:
                check_pixels(path, im.width, im.height, limit)
                fmt, mode = im.format, im.mode
                frames = int(getattr(im, "n_frames", 1))
                depth = _bit_depth(path, im)
                im.load()  # full decode: truncation and corruption surface here
                orientation = im.getexif().get(0x0112, 1)
                exif, icc, lost = _metadata(im)
                oriented = "EXIF orientation applied" if orientation != 1 else None
                arr = None
                if depth > 8 and mode not in ("P", "1"):
                    try:
                        arr, has_alpha, depth, note = _read_opencv(path, alpha, orientation)
                        note = _join(f"{depth}-bit {mode}", note, oriented, _alpha_note(has_alpha, alpha))
                    except ImageError:
                        arr = None  # OpenCV cannot read it: Pillow's decoding below
                if arr is None:
                    if orientation != 1:
                        im = ImageOps.exif_transpose(im)
                    arr, has_alpha, depth, note = _pil_to_rgb(path, im, alpha)
                    note = _join(note, oriented)
                note = _join(note, _frames_note(frames), *lost)
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
    info = {"path": str(path), "format": fmt, "mode": mode, "bit_depth": depth,
            "size": (t.shape[2], t.shape[1]), "alpha": has_alpha, "frames": frames, "exif": exif,
            "icc_profile": icc, "converted": note}
    return t, info


def _bit_depth(path: Path, im) -> int:
    """Bits per sample declared by the file (16 for 16-bit PNG/TIFF, else 8)."""
    if im.mode in _HIGH_DEPTH_MODES:
        return 16
    if im.format == "PNG":
        with open(path, "rb") as f:
            head = f.read(25)
        if len(head) == 25 and head[12:16] == b"IHDR":
            return int(head[24])
    return 8


def _pil_to_rgb(path: Path, im, alpha: str) -> tuple[np.ndarray, bool, int, str | None]:
    import numpy as np
    mode = im.mode
    if mode == "RGB":
        return np.asarray(im, dtype=np.float32) / 255.0, False, 8, None
    if mode in _HIGH_DEPTH_MODES:  # integer or float grey that OpenCV could not read
        g, depth, note = to_unit(path, np.asarray(im))
        return np.repeat(g[..., None], 3, axis=2), False, depth, _join(f"{mode} grey", note)
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode in ("P", "L", "RGB") and "transparency" in im.info)
    if has_alpha:
        rgba = np.asarray(im.convert("RGBA"), dtype=np.float32) / 255.0
        rgb = _composite(rgba[..., :3], rgba[..., 3], alpha)
        return rgb, True, 8, f"{mode} with alpha" + (f" composited on {alpha}" if alpha != "drop" else " dropped")
    rgb = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return rgb, False, 8, f"{mode} converted to RGB"


def dropped_metadata(path: str | os.PathLike, bit_depth: int, info: dict[str, Any]) -> list[str]:
    """The metadata of ``info`` (``exif``, ``icc_profile``) that ``write_image`` cannot keep in ``path``."""
    fmt = _FORMATS.get(Path(path).suffix.lower())
    keeps = KEEPS.get((fmt, bit_depth), set())
    have = [name for name, key in (("EXIF", "exif"), ("ICC profile", "icc_profile")) if info.get(key)]
    return [name for name in have if name not in keeps]


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_with_metadata(png: bytes, exif: bytes | None, icc: bytes | None) -> bytes:
    """Insert eXIf and iCCP chunks after IHDR (both must come before the image data)."""
    extra = b""
    if icc:
        extra += _png_chunk(b"iCCP", b"ICC Profile\0\0" + zlib.compress(icc))
    if exif:
        extra += _png_chunk(b"eXIf", exif[6:] if exif.startswith(b"Exif\0\0") else exif)
    end = 8 + 8 + 13 + 4  # signature, IHDR length + type, IHDR data, CRC
    return png[:end] + extra + png[end:]


def write_image(path: str | os.PathLike, img: torch.Tensor, bit_depth: int = 8, quality: int = 95,
                exif: bytes | None = None, icc_profile: bytes | None = None) -> Path:
    """Write an image tensor ([3, H, W], [1, 3, H, W] or grey [1, H, W] / [H, W], values in [0, 1]).

    The format comes from the suffix (PNG, JPEG, TIFF, BMP, WebP). ``bit_depth=16`` is kept for
    PNG and TIFF, ``bit_depth=32`` writes float32 TIFF; other formats are 8-bit only. Values are
    clamped (and rounded for integers). ``exif`` / ``icc_profile`` are written where the format
    holds them (:data:`KEEPS`; :func:`dropped_metadata` names the rest). The file is written
    atomically: a failed write never leaves a partial file.
    """
    import numpy as np
    import torch

    from ..io import atomic_path

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _FORMATS:
        raise ImageError(path, f"unknown image suffix {path.suffix!r}; use one of {sorted(_FORMATS)}")
    fmt = _FORMATS[suffix]
    if bit_depth not in (8, 16, 32):
        raise ImageError(path, f"bit_depth must be 8, 16 or 32 (float), got {bit_depth}")
    if (fmt, bit_depth) not in KEEPS:
        raise ImageError(path, f"{fmt} cannot store {bit_depth}-bit samples; use "
                               + (".png or .tif" if bit_depth == 16 else ".tif"))
    keeps = KEEPS[(fmt, bit_depth)]
    exif = exif if "EXIF" in keeps else None
    icc_profile = icc_profile if "ICC profile" in keeps else None
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
        if fmt == "TIFF" and bit_depth > 8:
            import tifffile

            arr = x.astype(np.float32) if bit_depth == 32 else np.round(x * 65535.0).astype(np.uint16)
            grey = arr.shape[2] == 1
            tifffile.imwrite(tmp, arr[..., 0] if grey else arr, photometric="minisblack" if grey else "rgb",
                             compression="zlib", iccprofile=icc_profile)
        elif bit_depth == 16:  # PNG
            import cv2

            arr = np.round(x * 65535.0).astype(np.uint16)
            arr = arr[..., 0] if arr.shape[2] == 1 else np.ascontiguousarray(arr[..., ::-1])
            ok, png = cv2.imencode(".png", arr)
            if not ok:
                raise ImageError(path, "OpenCV failed to encode the 16-bit image")
            tmp.write_bytes(_png_with_metadata(png.tobytes(), exif, icc_profile))
        else:
            from PIL import Image

            arr = np.round(x * 255.0).astype(np.uint8)
            pil = Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr)
            kw: dict[str, Any] = {"quality": int(quality)} if fmt in ("JPEG", "WEBP") else {}
            if exif:
                kw["exif"] = exif
            if icc_profile:
                kw["icc_profile"] = icc_profile
            pil.save(tmp, format=fmt, **kw)
    return path
