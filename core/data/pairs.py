"""Real LQ/GT pairs from two folders, and weighted mixtures of datasets.

``FolderPairs(lq_dir, gt_dir, label)`` reads pairs such as ``LOL/train/{low,high}`` or
``Rain100H/test/{rainy,norain}`` with a declared degradation word. Files pair by name
(:func:`pair_files`): the same relative path without suffix, or, where that leaves files unpaired,
the same name once a leading word and separator are dropped (``rain-12.png`` with
``norain-12.png``, ``low_5.png`` with ``high_5.png``).

``Weighted(datasets, weights)`` draws each item from one dataset with the given probabilities, so
real pairs and synthetic degradations mix in one stage. Items are the dicts of
:mod:`vlir.core.data.datasets` and deterministic given the seed, the epoch and the index.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

import torch
from torch.utils.data import Dataset

from .datasets import PathLike, _Epoch, item_generator, list_images, log, pair_item, scan_images
from .images import ImageError, read_image

_PREFIX = re.compile(r"^[A-Za-z]+[-_]")


def _keys(folder: Path, strip: bool) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for p in list_images(folder):
        rel = p.relative_to(folder).with_suffix("")
        key = str(rel.with_name(_PREFIX.sub("", rel.name))) if strip else str(rel)
        if key in out:
            raise ValueError(f"{folder}: two files pair as {key!r}: {out[key].name} and {p.name}")
        out[key] = p
    return out


def _show(xs: list[str]) -> str:
    return ", ".join(xs[:5]) + (f" ... ({len(xs)} in all)" if len(xs) > 5 else "") if xs else "none"


def pair_files(lq_dir: PathLike, gt_dir: PathLike) -> list[tuple[Path, Path]]:
    """The (LQ, GT) file pairs of two folders, sorted; every file must have its partner.

    Pairs by relative path without suffix; if that leaves files unpaired, by the name without a
    leading word and separator (``rain-1`` / ``norain-1``). Unpaired files are an error naming them.
    """
    lq_dir, gt_dir = Path(lq_dir), Path(gt_dir)
    for d, what in ((lq_dir, "LQ"), (gt_dir, "GT")):
        if not d.is_dir():
            raise FileNotFoundError(f"{what} folder {d} does not exist")
    for strip in (False, True):
        lq, gt = _keys(lq_dir, strip), _keys(gt_dir, strip)
        if lq.keys() == gt.keys():
            return [(lq[k], gt[k]) for k in sorted(lq, key=_natural)]
    lq, gt = _keys(lq_dir, False), _keys(gt_dir, False)
    raise ValueError(f"{lq_dir} and {gt_dir} do not pair by file name (nor with a leading word such as "
                     f"'rain-' dropped); only in LQ: {_show(sorted(lq.keys() - gt.keys()))}; "
                     f"only in GT: {_show(sorted(gt.keys() - lq.keys()))}")


def split_pairs(pairs: list[tuple[Path, Path]], hold_out: int, what: str = "pairs"
                ) -> tuple[list[tuple[Path, Path]], list[tuple[Path, Path]]]:
    """(trained, held out): the last ``hold_out`` pairs (in name order) held out of training, for
    validation; at least one pair must stay on each side when ``hold_out`` > 0."""
    if hold_out < 0 or (hold_out and hold_out >= len(pairs)):
        raise ValueError(f"{what}: cannot hold out {hold_out} of {len(pairs)} pairs (at least one must stay "
                         "for training)")
    return (pairs[:len(pairs) - hold_out], pairs[len(pairs) - hold_out:]) if hold_out else (pairs, [])


def usable_pairs(pairs: list[tuple[Path, Path]], min_size: int = 1, what: str = "pairs"
                 ) -> list[tuple[Path, Path]]:
    """The pairs whose two files are readable, at least ``min_size`` on each side and of one size;
    the others are skipped with a warning naming them."""
    good_lq, sizes_lq = scan_images([a for a, _ in pairs], min_size, what=f"{what} LQ")
    good_gt, sizes_gt = scan_images([b for _, b in pairs], min_size, what=f"{what} GT")
    ok_lq, ok_gt = set(good_lq), set(good_gt)
    kept = []
    for a, b in pairs:
        if a not in ok_lq or b not in ok_gt:
            log.warning("skipping pair %s / %s: %s unusable", a, b, "LQ" if a not in ok_lq else "GT")
        elif sizes_lq[a] != sizes_gt[b]:
            log.warning("skipping pair %s / %s: sizes differ (%s vs %s)", a, b, sizes_lq[a], sizes_gt[b])
        else:
            kept.append((a, b))
    return kept


def _natural(key: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]


def check_pairs(pairs: Sequence[Any], words: Sequence[str] | None, field: str = "data.pairs"
                ) -> list[tuple[str, str]]:
    """(YAML path, reason) of each unusable pair source of a spec (items with ``lq``, ``gt``,
    ``label``: :class:`vlir.core.sections.PairSpec`): a missing folder, files that do not pair by
    name or no pairs at all, a label that is not one of the class ``words`` (None: not checked)."""
    errors = []
    for i, p in enumerate(pairs):
        where = f"{field}[{i}]"
        missing = [(k, v) for k, v in (("lq", p.lq), ("gt", p.gt)) if not Path(v).expanduser().is_dir()]
        errors += [(f"{where}.{k}", f"no such folder: {v}") for k, v in missing]
        if not missing:
            try:
                found = pair_files(Path(p.lq).expanduser(), Path(p.gt).expanduser())
            except ValueError as e:
                errors.append((where, str(e)))
            else:
                if not found:
                    errors.append((where, f"{p.lq} and {p.gt} hold no images to pair"))
                elif getattr(p, "hold_out", 0) >= len(found):
                    errors.append((f"{where}.hold_out", f"cannot hold out {p.hold_out} of the {len(found)} "
                                                        f"pairs of {p.lq} (at least one must stay for training)"))
        if words is not None and p.label not in words:
            errors.append((f"{where}.label", f"{p.label!r} is not a class word of the data "
                                             f"({', '.join(words) or 'none'})"))
    return errors


class FolderPairs(_Epoch, Dataset):
    """Pairs of ``lq_dir`` and ``gt_dir`` (:func:`pair_files`) of one degradation word ``label``.

    Without ``patch_size`` items are whole images in order (evaluation); with it, aligned random
    crops and flips. Unreadable pairs and pairs whose sizes differ are skipped with a warning.
    ``degradation`` is ``index`` (the label's class index in the stage; set by the caller).
    ``hold_out``: the last N pairs (:func:`split_pairs`) are left out, or with ``held`` are the only ones.
    """

    def __init__(self, lq_dir: PathLike, gt_dir: PathLike, label: str, patch_size: int | None = None,
                 seed: int = 0, index: int = 0, captions: Any = None, flips: bool | None = None,
                 scan: bool = True, rot90: bool = False, channels: bool = False, hold_out: int = 0,
                 held: bool = False):
        if not label:
            raise ValueError(f"pairs {lq_dir}: a degradation word (label) is needed")
        kept, left = split_pairs(pair_files(lq_dir, gt_dir), hold_out, what=f"{lq_dir}")
        pairs = left if held else kept
        if scan:
            pairs = usable_pairs(pairs, patch_size or 1, what=str(lq_dir))
        if not pairs:
            raise ValueError(f"{lq_dir} / {gt_dir}: no usable pairs")
        self.pairs = pairs
        self.label = label
        self.index = index
        self.patch_size = patch_size
        self.seed = seed
        self.captions = captions
        self.flips = (patch_size is not None) if flips is None else flips
        self.augment = {"rot90": rot90, "channels": channels}

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not 0 <= i < len(self.pairs):
            raise IndexError(f"index {i} out of range for {len(self.pairs)} pairs")
        a, b = self.pairs[i]
        lq, _ = read_image(a)
        gt, _ = read_image(b)
        if lq.shape != gt.shape:
            raise ImageError(a, f"size {tuple(lq.shape[1:])} differs from GT {b} {tuple(gt.shape[1:])}")
        return pair_item(self, lq, gt, a, b, self.index, self.label, item_generator(self.seed, self.epoch, i, 23))


class Weighted(_Epoch, Dataset):
    """``length`` items, each drawn from one of ``datasets`` with probability ``weights`` (normalised),
    and within it at a random index; deterministic given ``seed``, the epoch and the index.
    ``classes``: the class words the items' ``degradation`` indexes (shared by the datasets)."""

    def __init__(self, datasets: Sequence[Dataset], weights: Sequence[float], length: int, seed: int = 0,
                 classes: Sequence[str] | None = None):
        if len(datasets) != len(weights) or not datasets:
            raise ValueError(f"weighted mixture: {len(datasets)} datasets but {len(weights)} weights")
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"weighted mixture: weights must be >= 0 with a positive sum, got {list(weights)}")
        if any(len(d) == 0 for d in datasets):
            raise ValueError("weighted mixture: a dataset is empty")
        self.datasets = list(datasets)
        self.weights = torch.tensor([float(w) for w in weights], dtype=torch.float64)
        self.length = int(length)
        self.seed = seed
        self.classes = None if classes is None else list(classes)

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        for d in self.datasets:
            if hasattr(d, "set_epoch"):
                d.set_epoch(epoch)

    def __len__(self) -> int:
        return self.length

    def locate(self, i: int) -> tuple[int, int]:
        """(dataset, index within it) of item ``i``."""
        g = item_generator(self.seed, self.epoch, i, 29)
        k = int(torch.multinomial(self.weights, 1, generator=g))
        return k, int(torch.randint(len(self.datasets[k]), (1,), generator=g))

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not 0 <= i < self.length:
            raise IndexError(f"index {i} out of range for {self.length} items")
        k, j = self.locate(i)
        return self.datasets[k][j]
