"""Training and evaluation datasets.

Every item is a dict ``{lq, gt, degradation, degradation_name, parts, caption, lq_caption, path}``:
``lq`` and ``gt`` are float tensors [3, H, W] in [0, 1], ``degradation`` the class index,
``degradation_name`` the degradation word (DA-CLIP vocabulary; of a composed degradation such as
``mix``, its most severe part), ``parts`` every degradation the item shows with its severity
(:func:`vlir.core.classes.format_parts`: ``"low-light=0.7300;noisy=0.4100"`` in the order applied,
``""`` for a clean image; severities by :func:`severity`), ``caption`` a clean-content caption from
a caption source (any object with ``caption(path) -> str | None``, e.g.
``vlir.core.data.captions.CSVCaptions``; "a photo" when it has none).

Items are deterministic given the dataset's ``seed``, the epoch (``set_epoch``) and the index,
whatever the worker or the order of access. Unreadable files (empty, truncated, corrupt, too
small) are skipped with a warning on the ``vlir.data`` logger; grey, palette, 16-bit and
transparent images are converted to RGB (see :func:`vlir.core.data.images.read_image`).
"""
from __future__ import annotations

import logging
import os
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch.utils.data import Dataset

from ..classes import CLEAN, degradation_word, format_parts, severity_of, shown_words as _shown
from .images import ImageError, is_image_file, read_image

log = logging.getLogger("vlir.data")

PathLike = str | os.PathLike


# -- captions -----------------------------------------------------------------------------------
DEFAULT_CAPTION = "a photo"


def _caption(source: Any, *paths: PathLike) -> str:
    """The first caption ``source`` has for ``paths`` (``caption(path) -> str | None``), else "a photo"."""
    if source is None:
        return DEFAULT_CAPTION
    fn = source.caption if callable(getattr(source, "caption", None)) else source
    if not callable(fn):
        raise TypeError(f"caption source {type(source).__name__} has no caption(path) method")
    for p in paths:
        text = fn(str(p))
        if text:
            return str(text)
    log.debug("no caption for %s; using %r", paths[0], DEFAULT_CAPTION)
    return DEFAULT_CAPTION


# -- seeding, files -----------------------------------------------------------------------------
def item_generator(*keys: int) -> torch.Generator:
    """A CPU generator seeded from integer keys (e.g. seed, epoch, index): :func:`vlir.core.seed.generator`."""
    from ..seed import generator

    return generator(*keys)


@lru_cache(maxsize=64)
def _perm(n: int, *keys: int) -> tuple[int, ...]:
    return tuple(torch.randperm(n, generator=item_generator(*keys)).tolist())


def list_images(roots: PathLike | Iterable[PathLike], recursive: bool = True) -> list[Path]:
    """Image files (by suffix) under one or more folders or files, sorted per root."""
    if isinstance(roots, (str, os.PathLike)):
        roots = [roots]
    out: list[Path] = []
    for root in roots:
        root = Path(root)
        if root.is_file():
            out.append(root)
        elif root.is_dir():
            it = root.rglob("*") if recursive else root.iterdir()
            out.extend(sorted(p for p in it if p.is_file() and is_image_file(p) and not p.name.startswith(".")))
        else:
            raise FileNotFoundError(f"image folder {root} does not exist")
    return out


def check_image(path: PathLike) -> tuple[tuple[int, int] | None, str | None, str | None]:
    """Cheap header check: ``(size (W, H) or None, reason it is unusable or None, conversion note)``."""
    from PIL import Image

    path = Path(path)
    try:
        if path.stat().st_size == 0:
            return None, "empty file (0 bytes)", None
        with Image.open(path) as im:
            size, mode, fmt = im.size, im.mode, im.format
            im.verify()
    except Exception as e:  # noqa: BLE001 - any failure means the file is unusable
        msg = str(e) or type(e).__name__
        if "cannot identify" in msg:
            msg = "not a recognised image format"
        return None, msg, None
    note = None
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        note = f"{mode} (16-bit/float grey)"
    elif mode != "RGB":
        note = {"L": "grey", "1": "1-bit", "P": "palette", "RGBA": "RGBA", "LA": "grey+alpha",
                "CMYK": "CMYK"}.get(mode, mode)
    elif fmt == "PNG":
        with open(path, "rb") as f:
            head = f.read(25)
        if len(head) == 25 and head[24] == 16:
            note = "16-bit RGB"
    return size, None, note


def scan_images(paths: Sequence[PathLike], min_size: int = 1, what: str = "images"
                ) -> tuple[list[Path], dict[Path, tuple[int, int]]]:
    """Keep readable images at least ``min_size`` on each side; log skipped and converted files."""
    good: list[Path] = []
    sizes: dict[Path, tuple[int, int]] = {}
    notes: Counter = Counter()
    for p in paths:
        p = Path(p)
        size, reason, note = check_image(p)
        if reason is None and min(size) < min_size:
            reason = f"{size[0]}x{size[1]} is smaller than the patch size {min_size}"
        if reason is not None:
            log.warning("skipping %s: %s", p, reason)
            continue
        if note:
            notes[note] += 1
            log.debug("%s: %s image, converted to RGB when read", p, note)
        good.append(p)
        sizes[p] = size
    if notes:
        log.info("%s: converting to RGB when read: %s", what, ", ".join(f"{k} x{v}" for k, v in sorted(notes.items())))
    return good, sizes


def crop_flip(images: Sequence[torch.Tensor], patch: int | None, generator: torch.Generator,
              flips: bool = True, rot90: bool = False, channels: bool = False,
              scale: tuple[float, float] = (1.0, 1.0),
              exposure: tuple[float, float] = (1.0, 1.0)) -> list[torch.Tensor]:
    """The same random ``patch`` x ``patch`` crop and augmentations of images of equal size.

    ``flips``: random horizontal and vertical flips; ``rot90``: then a random quarter turn (with
    flips: all eight symmetries of the square); ``channels``: a random order of the colour
    channels; ``scale`` (lo, hi): the crop shows a region ``patch / s`` wide, ``s`` drawn uniformly
    from the range, shrunk to ``patch`` (antialiased bicubic; ``s`` is capped so the region fits
    the image); ``exposure`` (lo, hi): the crops multiplied by ``e`` drawn uniformly from the range
    (a darker scene). Random numbers are drawn only for the augmentations in use.
    """
    h, w = images[0].shape[-2:]
    out = list(images)
    if patch is not None:
        if h < patch or w < patch:
            raise ValueError(f"image {w}x{h} is smaller than patch {patch}")
        size = patch
        if scale != (1.0, 1.0):
            lo, hi = scale
            s = lo + (hi - lo) * float(torch.rand(1, generator=generator))
            size = min(h, w, max(patch, round(patch / s)))
        top = int(torch.randint(0, h - size + 1, (1,), generator=generator))
        left = int(torch.randint(0, w - size + 1, (1,), generator=generator))
        out = [x[..., top:top + size, left:left + size] for x in out]
        if size != patch:
            out = [_shrink(x, patch) for x in out]
    if flips:
        hf, vf = (torch.rand(2, generator=generator) < 0.5).tolist()
        if hf:
            out = [x.flip(-1) for x in out]
        if vf:
            out = [x.flip(-2) for x in out]
    if rot90:
        k = int(torch.randint(0, 4, (1,), generator=generator))
        out = [torch.rot90(x, k, (-2, -1)) for x in out]
    if channels and out[0].shape[-3] > 1:
        order = torch.randperm(out[0].shape[-3], generator=generator)
        out = [x[..., order, :, :] for x in out]
    if exposure != (1.0, 1.0):
        lo, hi = exposure
        e = lo + (hi - lo) * float(torch.rand(1, generator=generator))
        out = [x * e for x in out]
    return [x.contiguous() for x in out]


def _shrink(x: torch.Tensor, size: int) -> torch.Tensor:
    """A square image [C, S, S] resized to ``size`` (antialiased bicubic, clamped to [0, 1])."""
    import torch.nn.functional as F

    y = F.interpolate(x[None].float(), size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    return y[0].clamp(0, 1).to(x.dtype)


# -- degradations -------------------------------------------------------------------------------
def resolve_degradation(spec: Any, registry: Any = None) -> torch.nn.Module:
    """A degradation module from a module, a name, ``(name, params)`` or ``{name|type, preset, params}``,
    built by ``registry`` (default: the environment's)."""
    if isinstance(spec, torch.nn.Module):
        return spec
    preset = None
    if isinstance(spec, str):
        name, params = spec, None
    elif isinstance(spec, Mapping):
        name = spec.get("name", spec.get("type"))
        if name is None:
            raise ValueError(f"degradation spec {dict(spec)} has no 'name' (or 'type')")
        preset, params = spec.get("preset"), spec.get("params")
    elif isinstance(spec, (tuple, list)) and len(spec) == 2 and isinstance(spec[0], str):
        name, params = spec
    else:
        raise TypeError(f"cannot make a degradation from {spec!r}: expected a module, a name, "
                        "(name, params) or {name, preset, params}")
    if registry is None:
        from ..registry import get_registry

        registry = get_registry()
    return registry.build("degradation", {"type": name, "preset": preset, "params": dict(params or {})})



# -- what an item shows -------------------------------------------------------------------------
def severity(before: torch.Tensor, after: torch.Tensor) -> float:
    """How much one degradation changed an image: ``clamp((40 - PSNR(before, after)) / 30, 0, 1)``
    (float PSNR in dB, :func:`vlir.core.metrics.psnr_torch`): 0 at 40 dB and above (barely
    visible), 1 at 10 dB and below. Images [C, H, W] or [1, C, H, W] in [0, 1]."""
    from ..metrics import psnr_torch

    a, b = (x.reshape(-1, *x.shape[-3:]).float() for x in (after, before))
    return severity_of(float(psnr_torch(a, b)))


def shown_words(module: Any) -> list[str]:
    """The class words a degradation module can show: its parts' (``class_words(params)``, e.g.
    ``mix``), else its own word."""
    return _shown(module, module.params)


def vocabulary(modules: Iterable[Any]) -> list[str]:
    """The class words of degradation modules, their parts expanded, in order of first appearance
    without duplicates (as :func:`vlir.core.classes.data_words` gives them for a spec)."""
    return list(dict.fromkeys(w for m in modules for w in shown_words(m)))


def degrade(module: torch.nn.Module, gt: torch.Tensor, generator: torch.Generator
            ) -> tuple[torch.Tensor, dict[str, float]]:
    """``module`` applied to one clean image [3, H, W], and the parts the result shows
    (``{word: severity}`` in the order applied): each part of a module with ``compose_steps``
    (``mix``) measured on the images before and after it; none for ``clean``."""
    with torch.no_grad():
        steps = getattr(module, "compose_steps", None)
        if callable(steps):
            lq, (done,) = steps(gt[None], generator=generator)
            parts, before = {}, gt
            for word, after in done:
                parts[word] = severity(before, after)
                before = after
            return lq[0], parts
        lq = module(gt[None], generator=generator)[0]
    word = degradation_word(module)
    return lq, {} if word == CLEAN else {word: severity(gt, lq)}


def label_parts(word: str, lq: torch.Tensor, gt: torch.Tensor) -> str:
    """The parts string of a pair with a declared degradation word: the word at the severity of
    ``lq`` against ``gt`` (``""`` for ``clean``)."""
    return "" if word == CLEAN else format_parts({word: severity(gt, lq)})


class _Epoch:
    epoch: int = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the random draws of this epoch (call before each epoch)."""
        self.epoch = int(epoch)


# -- synthetic ----------------------------------------------------------------------------------
class SyntheticDegradations(_Epoch, Dataset):
    """Clean images degraded on the fly.

    With ``balanced`` item ``i`` uses degradation ``i % K``, so every batch of K consecutive
    items holds each degradation once; otherwise the degradation is drawn at random. Images
    are visited in a fresh random order each round of ``len(images)`` items. ``length``
    defaults to ``len(images) * K``. Each item is a random ``patch_size`` crop (``None``: the
    whole image) with random flips and the augmentations of :func:`crop_flip` asked for
    (``rot90``, ``channels``, ``scale``, ``exposure``); the degradation runs on the augmented clean crop.

    ``names`` are the degradations' own words (one per degradation; ``mixed`` for a mix),
    ``classes`` the class vocabulary :func:`vocabulary` (a mix's parts expanded) that an item's
    ``degradation`` indexes: ``classes[degradation] == degradation_name``, the most severe part of a mix.
    """

    def __init__(self, roots: PathLike | Iterable[PathLike], degradations: Sequence[Any],
                 patch_size: int | None = 64, length: int | None = None, seed: int = 0, balanced: bool = True,
                 captions: Any = None, flips: bool = True, scan: bool = True, cache: bool = False,
                 recursive: bool = True, rot90: bool = False, channels: bool = False,
                 scale: tuple[float, float] = (1.0, 1.0), exposure: tuple[float, float] = (1.0, 1.0),
                 registry: Any = None):
        if not degradations:
            raise ValueError("SyntheticDegradations needs at least one degradation")
        files = list_images(roots, recursive=recursive)
        if scan:
            files, _ = scan_images(files, min_size=patch_size or 1, what=f"clean images under {roots}")
        if not files:
            raise ValueError(f"no usable images under {roots}")
        self.files = files
        self._specs = list(degradations)
        # with a registry (a pipeline's) the modules are built now; else through the environment's
        # registry on first use (the registry itself is not kept: datasets go to worker processes)
        self._modules: list[torch.nn.Module] | None = \
            None if registry is None else [resolve_degradation(s, registry) for s in self._specs]
        self.patch_size = patch_size
        self.length = length if length is not None else len(files) * len(self._specs)
        self.seed = seed
        self.balanced = balanced
        self.captions = captions
        self.flips = flips
        self.augment = {"rot90": rot90, "channels": channels, "scale": tuple(scale), "exposure": tuple(exposure)}
        self.cache: dict[int, torch.Tensor] | None = {} if cache else None
        self._bad: set[int] = set()
        self._classes: list[str] | None = None

    @property
    def degradations(self) -> list[torch.nn.Module]:
        """The degradation modules (names are resolved through the registry on first use)."""
        if self._modules is None:
            self._modules = [resolve_degradation(s) for s in self._specs]
        return self._modules

    @property
    def names(self) -> list[str]:
        """The word of each degradation, in order."""
        return [degradation_word(m) for m in self.degradations]

    @property
    def classes(self) -> list[str]:
        """The class words items are labelled with (``degradation`` indexes them); worked out once."""
        if self._classes is None:
            self._classes = vocabulary(self.degradations)
        return self._classes

    def __len__(self) -> int:
        return self.length

    def _load(self, j: int) -> torch.Tensor:
        if self.cache is not None and j in self.cache:
            return self.cache[j]
        img, _ = read_image(self.files[j])
        if self.patch_size is not None and min(img.shape[-2:]) < self.patch_size:
            raise ImageError(self.files[j], f"{img.shape[2]}x{img.shape[1]} is smaller than the patch size "
                                            f"{self.patch_size}")
        if self.cache is not None:
            self.cache[j] = img
        return img

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not 0 <= i < self.length:
            raise IndexError(f"index {i} out of range for {self.length} items")
        n, k = len(self.files), len(self._specs)
        g = item_generator(self.seed, self.epoch, i)
        d = i % k if self.balanced else int(torch.randint(0, k, (1,), generator=g))
        j = _perm(n, self.seed, self.epoch, i // n, 7)[i % n]
        for _ in range(n):
            if j not in self._bad:
                try:
                    img = self._load(j)
                    break
                except ImageError as e:
                    log.warning("skipping %s: %s", e.path, e.reason)
                    self._bad.add(j)
            j = (j + 1) % n
        else:
            raise RuntimeError(f"no readable image left among {n} files (see the vlir.data warnings)")
        (gt,) = crop_flip([img], self.patch_size, g, self.flips, **self.augment)
        module = self.degradations[d]
        lq, parts = degrade(module, gt, g)
        # the single label: the most severe part (the first of equals), else the degradation's word
        word = max(parts, key=parts.get) if parts else degradation_word(module)
        caption = _caption(self.captions, self.files[j])
        return {"lq": lq, "gt": gt, "degradation": self.classes.index(word), "degradation_name": word,
                "parts": format_parts(parts), "caption": caption, "lq_caption": lq_caption(caption, word),
                "path": str(self.files[j])}


def lq_caption(caption: str, degradation: str) -> str:
    """Caption of the degraded image in DA-CLIP's title form: ``"{clean caption}: {degradation}"``."""
    return f"{caption}: {degradation}"


# -- paired folders -----------------------------------------------------------------------------
def pair_item(ds: Any, lq: torch.Tensor, gt: torch.Tensor, a: Path, b: Path, index: int, word: str,
              g: torch.Generator) -> dict[str, Any]:
    """The item of a read pair (files ``a``, ``b``): aligned crop and flips as ``ds`` says
    (``patch_size``, ``flips``, ``augment``), its captions (``ds.captions``), class and parts
    (:func:`label_parts`, measured on the crop)."""
    lq, gt = crop_flip([lq, gt], ds.patch_size, g, ds.flips, **ds.augment)
    caption = _caption(ds.captions, a, b)
    return {"lq": lq, "gt": gt, "degradation": index, "degradation_name": word,
            "parts": label_parts(word, lq, gt), "caption": caption, "lq_caption": lq_caption(caption, word),
            "path": str(a), "gt_path": str(b)}


def _subdir(folder: Path, name: str) -> Path | None:
    for p in folder.iterdir() if folder.is_dir() else ():
        if p.is_dir() and p.name.lower() == name.lower():
            return p
    return None


def paired_names(root: PathLike) -> list[str]:
    """The degradation folders of a DA-CLIP root (sub-folders holding ``LQ`` and ``GT``), sorted:
    the classes of :class:`PairedFolders` by default."""
    root = Path(root)
    return sorted(p.name for p in root.iterdir() if p.is_dir() and _subdir(p, "LQ") is not None
                  and _subdir(p, "GT") is not None) if root.is_dir() else []


class PairedFolders(_Epoch, Dataset):
    """DA-CLIP's layout ``root/<degradation>/{LQ,GT}/`` with matching file names (by stem).

    ``names`` picks and orders the degradation folders (their index is the class index);
    by default every sub-folder holding ``LQ`` and ``GT``, sorted. Without ``patch_size`` items
    are whole images, in order, without flips (evaluation); with it, aligned random crops and
    flips (and quarter turns / channel orders with ``rot90`` / ``channels``). ``balanced`` makes item ``i`` come from degradation ``i % K`` (``length`` defaults to
    ``K * largest folder``; empty folders are left out with a warning); otherwise items enumerate all pairs. ``path`` is the LQ file,
    ``gt_path`` the GT file; captions are looked up by the LQ path (as in DA-CLIP's CSV), then the GT path.
    """

    def __init__(self, root: PathLike, names: Sequence[str] | None = None, patch_size: int | None = None,
                 balanced: bool = False, length: int | None = None, seed: int = 0, captions: Any = None,
                 flips: bool | None = None, scan: bool = True, rot90: bool = False, channels: bool = False):
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"paired dataset folder {root} does not exist")
        if names is None:
            names = paired_names(root)
            if not names:
                raise ValueError(f"{root}: no <degradation>/LQ and <degradation>/GT folders found")
        self.root = root
        self.names = list(names)
        self.pairs: list[list[tuple[Path, Path]]] = []
        for name in self.names:
            self.pairs.append(self._pairs(root / name, patch_size, scan))
        if not any(self.pairs):
            raise ValueError(f"{root}: no usable LQ/GT pairs")
        self.flat = [(k, m) for k, ps in enumerate(self.pairs) for m in range(len(ps))]
        self._active = [k for k, ps in enumerate(self.pairs) if ps]
        for k, ps in enumerate(self.pairs):
            if not ps:
                log.warning("%s: no usable pairs; degradation %r gets no items", root / self.names[k], self.names[k])
        self.patch_size = patch_size
        self.balanced = balanced
        self.flips = (patch_size is not None) if flips is None else flips
        self.augment = {"rot90": rot90, "channels": channels}
        self.seed = seed
        self.captions = captions
        if length is None:
            length = len(self._active) * max(len(p) for p in self.pairs) if balanced else len(self.flat)
        self.length = length
        self._bad: set[tuple[int, int]] = set()

    @staticmethod
    def _pairs(folder: Path, patch: int | None, scan: bool) -> list[tuple[Path, Path]]:
        lq_dir, gt_dir = _subdir(folder, "LQ"), _subdir(folder, "GT")
        if lq_dir is None or gt_dir is None:
            raise ValueError(f"{folder}: expected sub-folders LQ and GT")

        from .pairs import pair_files, usable_pairs  # one pairing rule for every paired layout

        pairs = pair_files(lq_dir, gt_dir)
        return usable_pairs(pairs, patch or 1, what=str(folder)) if scan else pairs

    def __len__(self) -> int:
        return self.length

    def _locate(self, i: int) -> tuple[int, int]:
        if self.balanced:
            k = self._active[i % len(self._active)]
            r = i // len(self._active)
            nk = len(self.pairs[k])
            return k, _perm(nk, self.seed, self.epoch, r // nk, k, 11)[r % nk]
        return self.flat[i % len(self.flat)]

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not 0 <= i < self.length:
            raise IndexError(f"index {i} out of range for {self.length} items")
        k, m = self._locate(i)
        nk = len(self.pairs[k])
        for _ in range(nk):
            if (k, m) not in self._bad:
                a, b = self.pairs[k][m]
                try:
                    lq, _ = read_image(a)
                    gt, _ = read_image(b)
                    if lq.shape != gt.shape:
                        raise ImageError(a, f"size {tuple(lq.shape[1:])} differs from GT {b} {tuple(gt.shape[1:])}")
                    if self.patch_size is not None and min(lq.shape[-2:]) < self.patch_size:
                        raise ImageError(a, f"smaller than the patch size {self.patch_size}")
                    break
                except ImageError as e:
                    log.warning("skipping %s: %s", e.path, e.reason)
                    self._bad.add((k, m))
            m = (m + 1) % nk
        else:
            raise RuntimeError(f"no readable pair left in {self.root / self.names[k]} (see the vlir.data warnings)")
        return pair_item(self, lq, gt, a, b, k, self.names[k], item_generator(self.seed, self.epoch, i))
