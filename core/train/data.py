"""Training data as a deterministic stream.

The stream of a stage is the dataset repeated epoch after epoch: position ``p`` is item
``p % len`` of epoch ``p // len`` (items are deterministic given the data seed, the epoch and
the index). Step ``s`` takes positions ``[s*B, (s+1)*B)`` of the global batch ``B``; process
``r`` of ``W`` takes its contiguous ``B / W`` of them. So a resumed run, or a run on another
number of processes, sees exactly the same samples at the same step.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from ..sections import Augment, DataSpec
from ..spec import SpecError


def check_folders(paths: list[str], field: str) -> list[Path]:
    """The folders of a data field; missing ones are spec errors naming the field."""
    out = []
    errors = []
    for i, p in enumerate(paths):
        path = Path(os.path.expanduser(p))
        if not path.exists():
            errors.append((f"{field}[{i}]", f"no such folder: {p} (relative paths are read from {Path.cwd()})"))
        out.append(path)
    if errors:
        raise SpecError(errors)
    return out


def caption_source(data: DataSpec) -> Any:
    if data.captions is None:
        return None
    from ..data.captions import CaptionError, CSVCaptions

    try:
        return CSVCaptions(os.path.expanduser(data.captions))
    except CaptionError as e:
        raise SpecError([("data.captions", str(e))]) from e


def degradation_specs(data: DataSpec) -> list[dict[str, Any]]:
    return [{"name": d.type, "params": dict(d.params)} for d in data.degradations]


class Concat(Dataset):
    """Datasets one after another, passing ``set_epoch`` on to each."""

    def __init__(self, parts: list[Dataset]):
        self.parts = parts
        self.sizes = [len(p) for p in parts]

    def __len__(self) -> int:
        return sum(self.sizes)

    def set_epoch(self, epoch: int) -> None:
        for p in self.parts:
            if hasattr(p, "set_epoch"):
                p.set_epoch(epoch)

    def __getitem__(self, i: int) -> dict[str, Any]:
        for p, n in zip(self.parts, self.sizes):
            if i < n:
                return p[i]
            i -= n
        raise IndexError(i)


def build_dataset(data: DataSpec, split: str, patch_size: int | None, limit: int | None = None,
                  registry: Any = None) -> Dataset:
    """The training (``split='train'``) or validation (``'val'``) dataset of a data section.

    Both are balanced over the degradations (item ``i`` has class ``i % K``); validation items
    have a fixed seed and no flips, and there are at most ``limit`` of them. Training mixes in
    ``data.pairs`` by weight (:class:`vlir.core.data.pairs.Weighted`; the train folders get
    ``1 - sum`` of the pairs' weights); the pairs' items are labelled in the train folders' classes.
    """
    try:
        return _build_dataset(data, split, patch_size, limit, registry)
    except SpecError:
        raise
    except (ValueError, FileNotFoundError) as e:  # unusable folders: name the field
        raise SpecError([(f"data.{split}", str(e))]) from e


def _build_dataset(data: DataSpec, split: str, patch_size: int | None, limit: int | None,
                   registry: Any) -> Dataset:
    train = split == "train"
    paths = data.train if train else data.val
    pairs = data.pairs if train else []
    if not paths and not pairs:
        raise SpecError([(f"data.{split}", "no folders given")])
    captions = caption_source(data)
    aug = data.augment if train else Augment()
    ds = _folders(data, split, paths, patch_size, captions, aug, registry) if paths else None
    if pairs:
        ds = _with_pairs(data, ds, patch_size, captions, aug, registry)
    if limit is not None and len(ds) > limit:
        ds = Subset(ds, limit)
    return ds


def _folders(data: DataSpec, split: str, paths: list[str], patch_size: int | None, captions: Any,
             aug: Augment, registry: Any) -> Dataset:
    """The dataset of the train or val folders."""
    from ..data.datasets import PairedFolders, SyntheticDegradations

    roots = check_folders(paths, f"data.{split}")
    train = split == "train"
    if data.layout == "synthetic":
        if not data.degradations:
            raise SpecError([("data.degradations", "synthetic data needs at least one degradation, "
                                                   "e.g. [{type: noise}, {type: jpeg}]")])
        return SyntheticDegradations(roots, degradation_specs(data), patch_size=patch_size,
                                     seed=data.seed + (0 if train else 1), balanced=True,
                                     captions=captions, flips=train, rot90=aug.rot90,
                                     channels=aug.channels, scale=aug.scale, exposure=aug.exposure,
                                     registry=registry)
    for name, why in (("scale", "resample the LQ image's degradation"), ("exposure", "darken a real pair's degraded image too")):
        if getattr(aug, name) != (1.0, 1.0):
            raise SpecError([(f"data.augment.{name}", f"{name} augmentation is for synthetic data (it would {why}); "
                                                      "use rot90 and channels")])
    parts = []
    names = None
    for root in roots:
        p = PairedFolders(root, names=names, patch_size=patch_size, balanced=True, seed=data.seed,
                          captions=captions, flips=train, rot90=aug.rot90, channels=aug.channels)
        names = p.names
        parts.append(p)
    return parts[0] if len(parts) == 1 else Concat(parts)


def _with_pairs(data: DataSpec, base: Dataset | None, patch_size: int | None, captions: Any,
                aug: Augment, registry: Any) -> Dataset:
    """``base`` (the train folders' dataset, or None) and ``data.pairs`` drawn by weight.

    Class words: those of ``base``, else of ``data.degradations``, else the pairs' labels (items'
    ``degradation`` indexes them). Pairs whose label is not among them are left out with a
    warning: a stage that trains on some of ``data.degradations`` only (``stages[].degradations``)
    trains on the pairs of those classes only. (A label that is none of the spec's class words is
    an error of :func:`vlir.core.validate.validate`, which ``vlir train`` runs first.)"""
    from ..data.datasets import log
    from ..data.pairs import FolderPairs, Weighted, check_pairs

    errors = check_pairs(data.pairs, None)
    if errors:
        raise SpecError(errors)
    words = data_words(data, base, registry)
    sets = [] if base is None else [base]
    weights = [] if base is None else [1.0 - sum(p.weight for p in data.pairs)]
    for i, p in enumerate(data.pairs):
        if p.label not in words:
            log.warning("data.pairs[%d] (%s, label %r) left out: not a class of this data (%s)",
                        i, p.lq, p.label, ", ".join(words))
            continue
        try:
            sets.append(FolderPairs(os.path.expanduser(p.lq), os.path.expanduser(p.gt), p.label,
                                    patch_size=patch_size, seed=data.seed, index=words.index(p.label),
                                    captions=captions, flips=True, rot90=aug.rot90, channels=aug.channels,
                                    hold_out=p.hold_out))
        except (ValueError, FileNotFoundError) as e:
            raise SpecError([(f"data.pairs[{i}]", str(e))]) from e
        weights.append(p.weight)
    if not sets:
        raise SpecError([("data.pairs", f"no pairs of the classes {', '.join(words)} and no train folders")])
    if len(sets) == 1 and base is not None:  # every pair left out
        return base
    # an epoch: as many items as the sets hold together (each item drawn by weight)
    return Weighted(sets, weights, length=sum(len(d) for d in sets), seed=data.seed, classes=words)


def data_words(data: DataSpec, base: Dataset | None = None, registry: Any = None) -> list[str]:
    """The class words items are labelled in: those of ``base`` (the folders' dataset), else of
    ``data.degradations``, else the pairs' labels."""
    from ..data.datasets import resolve_degradation, vocabulary

    names = class_names(base) if base is not None else []
    if names:
        return names
    if data.layout == "synthetic" and data.degradations:
        return vocabulary(resolve_degradation(s, registry) for s in degradation_specs(data))
    return list(dict.fromkeys(p.label for p in data.pairs))


def held_pairs(data: DataSpec, words: list[str], patch_size: int | None) -> Dataset | None:
    """The pairs ``data.pairs[].hold_out`` keeps out of training, for validation (seeded crops of
    ``patch_size``, no flips; items labelled in ``words``, the class words of the run), or None."""
    from ..data.pairs import FolderPairs, check_pairs

    errors = check_pairs(data.pairs, None)
    if errors:
        raise SpecError(errors)
    sets = []
    for i, p in enumerate(data.pairs):
        if not p.hold_out or p.label not in words:
            continue
        try:
            sets.append(FolderPairs(os.path.expanduser(p.lq), os.path.expanduser(p.gt), p.label,
                                    patch_size=patch_size, seed=data.seed + 1, index=words.index(p.label),
                                    flips=False, hold_out=p.hold_out, held=True))
        except (ValueError, FileNotFoundError) as e:
            raise SpecError([(f"data.pairs[{i}]", str(e))]) from e
    return None if not sets else sets[0] if len(sets) == 1 else Concat(sets)


class Subset(Dataset):
    """The first ``n`` items of a dataset."""

    def __init__(self, dataset: Dataset, n: int):
        self.dataset, self.n = dataset, n

    def __len__(self) -> int:
        return self.n

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not 0 <= i < self.n:
            raise IndexError(i)
        return self.dataset[i]


def class_names(ds: Dataset) -> list[str]:
    """Degradation words of a dataset, in class-index order (the ``degradation`` of its items)."""
    while isinstance(ds, (Concat, Subset)):
        ds = ds.parts[0] if isinstance(ds, Concat) else ds.dataset
    names = getattr(ds, "classes", None)
    if names is None:
        names = getattr(ds, "names", None)
    return list(names) if names is not None else []


class Stream(Dataset):
    """Position ``p`` -> item ``p % len`` of epoch ``p // len``."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset
        self.size = len(dataset)
        if self.size == 0:
            raise ValueError("training dataset is empty")

    def __len__(self) -> int:  # positions are unbounded; the sampler decides
        return 2 ** 62

    def __getitem__(self, p: int) -> dict[str, Any]:
        epoch, i = divmod(int(p), self.size)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        item = self.dataset[i]
        item.pop("gt_path", None)
        return item


class StepBatches(Sampler[list[int]]):
    """The positions of this process's share of the global batch, step by step."""

    def __init__(self, start: int, stop: int, batch: int, rank: int = 0, world: int = 1):
        if batch % world:
            raise SpecError([("data.batch_size", f"global batch {batch} must be divisible by the number of "
                                                 f"processes ({world})")])
        self.start, self.stop, self.batch, self.rank, self.world = start, stop, batch, rank, world
        self.local = batch // world

    def positions(self, step: int) -> list[int]:
        first = step * self.batch + self.rank * self.local
        return list(range(first, first + self.local))

    def __iter__(self) -> Iterator[list[int]]:
        for s in range(self.start, self.stop):
            yield self.positions(s)

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    return default_collate(items)


def loader(dataset: Dataset, sampler: Sampler, num_workers: int, pin: bool, seed: int = 0) -> DataLoader:
    """A DataLoader over the stream; it has its own generator, so it never draws from torch's global one."""
    return DataLoader(Stream(dataset), batch_sampler=sampler, num_workers=num_workers, collate_fn=collate,
                      pin_memory=pin, persistent_workers=False, generator=torch.Generator().manual_seed(seed))


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
