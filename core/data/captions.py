"""Caption sources that need no network: DA-CLIP caption CSVs.

A caption source answers ``caption(path) -> str | None``: the clean-content caption of an image
(``None`` when it has none). DA-CLIP's CSV is tab-separated with a header ``filepath<TAB>title``
and titles ``"{caption of the clean image}: {degradation}"``.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol, runtime_checkable

__all__ = ["CaptionSource", "CaptionEntry", "CSVCaptions", "CaptionError", "split_title"]


class CaptionError(ValueError):
    """A caption file that cannot be read, or a path it cannot answer unambiguously."""


@runtime_checkable
class CaptionSource(Protocol):
    """Anything with ``caption(path) -> str | None``."""

    def caption(self, path: str | os.PathLike) -> str | None: ...


@dataclass(frozen=True)
class CaptionEntry:
    filepath: str
    caption: str
    degradation: str | None


def split_title(title: str) -> tuple[str, str | None]:
    """Split a DA-CLIP title on its last ``": "`` into (caption, degradation)."""
    head, sep, tail = title.rpartition(": ")
    if not sep:
        return title.strip(), None
    return head.strip(), tail.strip() or None


def _parts(path: str | os.PathLike) -> tuple[str, ...]:
    return Path(os.path.normpath(str(path).replace("\\", "/"))).parts


class CSVCaptions:
    """Captions from a DA-CLIP CSV (``filepath<TAB>title``, title ``"caption: degradation"``).

    Paths are matched exactly, then after resolving relative entries against the CSV's folder
    and the working directory, then by their longest unique trailing components (so a CSV
    written on another machine still answers). ``require_degradation=False`` also accepts
    plain-caption titles without ``": degradation"``.
    """

    def __init__(self, path: str | os.PathLike, img_key: str = "filepath", caption_key: str = "title",
                 sep: str = "\t", require_degradation: bool = True):
        self.path = Path(path)
        self.entries: list[CaptionEntry] = []
        if not self.path.is_file():
            raise CaptionError(f"caption CSV {self.path}: no such file")
        with open(self.path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f, delimiter=sep)
            header = next(reader, None)
            if header is None:
                raise CaptionError(f"caption CSV {self.path}: empty file (expected header "
                                   f"'{img_key}{sep!s}{caption_key}')")
            header = [h.strip() for h in header]
            missing = [k for k in (img_key, caption_key) if k not in header]
            if missing:
                raise CaptionError(f"caption CSV {self.path}, line 1: header {header} lacks column(s) "
                                   f"{missing} (expected '{img_key}' and '{caption_key}', separated by {sep!r})")
            i_img, i_cap = header.index(img_key), header.index(caption_key)
            for row in reader:
                line = reader.line_num
                if not row or all(not c.strip() for c in row):
                    continue
                if len(row) != len(header):
                    raise CaptionError(f"caption CSV {self.path}, line {line}: {len(row)} field(s), expected "
                                       f"{len(header)} ({', '.join(header)}) separated by {sep!r}: {row!r}")
                filepath, title = row[i_img].strip(), row[i_cap].strip()
                if not filepath:
                    raise CaptionError(f"caption CSV {self.path}, line {line}: empty {img_key}")
                caption, degradation = split_title(title)
                if require_degradation and degradation is None:
                    raise CaptionError(f"caption CSV {self.path}, line {line}: title {title!r} is not "
                                       "'caption: degradation' (no ': ' separator)")
                if not caption:
                    raise CaptionError(f"caption CSV {self.path}, line {line}: empty caption in title {title!r}")
                self.entries.append(CaptionEntry(filepath, caption, degradation))
        self._exact: dict[str, CaptionEntry] = {}
        self._suffix: dict[tuple[str, ...], list[CaptionEntry]] = {}
        for e in self.entries:
            keys = {os.path.normpath(e.filepath)}
            p = Path(e.filepath)
            if not p.is_absolute():
                keys.add(os.path.normpath(self.path.parent.resolve() / p))
                keys.add(os.path.normpath(Path.cwd() / p))
            for k in keys:
                self._exact.setdefault(k, e)
            parts = _parts(e.filepath)
            for n in range(1, len(parts) + 1):
                self._suffix.setdefault(parts[-n:], []).append(e)

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[CaptionEntry]:
        return iter(self.entries)

    def entry(self, path: str | os.PathLike) -> CaptionEntry | None:
        """The CSV entry of ``path`` (``None`` if absent); ambiguous matches are errors."""
        key = os.path.normpath(str(path))
        if key in self._exact:
            return self._exact[key]
        p = Path(path)
        if not p.is_absolute():
            absolute = os.path.normpath(Path.cwd() / p)
            if absolute in self._exact:
                return self._exact[absolute]
        parts = _parts(path)
        for n in range(len(parts), 0, -1):
            found = self._suffix.get(parts[-n:])
            if not found:
                continue
            distinct = {(e.caption, e.degradation) for e in found}
            if len(distinct) == 1:
                return found[0]
            raise CaptionError(
                f"caption CSV {self.path}: {str(path)!r} matches {len(found)} entries by its last "
                f"{n} path component(s) ({', '.join(e.filepath for e in found[:3])}...); use full paths"
            )
        return None

    def caption(self, path: str | os.PathLike) -> str | None:
        e = self.entry(path)
        return None if e is None else e.caption

    def degradation(self, path: str | os.PathLike) -> str | None:
        e = self.entry(path)
        return None if e is None else e.degradation
