"""Tiled inference: run an image-to-image function on overlapping tiles and blend them.

Memory is bounded by ``batch_tiles`` tiles plus the output buffer, so large images can be
restored with a model that would not fit them whole. The result equals the whole-image
result where the model is local (its receptive field reaches less than ``overlap // 4`` pixels
past a tile edge).

Models with global operations (Restormer's channel attention, NAFNet's channel pooling) reduce
over the whole image. They compute those reductions with :func:`global_sum`; with
``passes > 0`` the image is tiled several times: each pass adds up every reduction over the
tiles' disjoint core regions (so each pixel counts once), and the next pass uses those
image-wide sums instead of the tile's own. The image-wide result is the fixed point of this
iteration; a pass or two reach it to well past 50 dB (tests/test_tiling.py), with memory still
bounded by the tile. With ``passes=0`` each tile only sees its own statistics.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F

Sums = Any  # a tensor or a tuple of tensors: what a global_sum window function returns


def pad_to_multiple(x: torch.Tensor, multiple: int, mode: str = "reflect") -> torch.Tensor:
    """Pad the bottom and right of ``x`` so both sides are multiples of ``multiple``.

    ``mode``: ``reflect``, ``replicate`` or ``zeros``. Reflect needs the pad to be smaller
    than the side; where it is not (tiny images), that side is padded by replication.
    """
    if mode not in ("reflect", "replicate", "zeros"):
        raise ValueError(f"pad mode must be 'reflect', 'replicate' or 'zeros', got {mode!r}")
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x
    if mode == "zeros":
        return F.pad(x, (0, pw, 0, ph))
    if mode == "reflect" and ph < h and pw < w:
        return F.pad(x, (0, pw, 0, ph), mode="reflect")
    if mode == "reflect":  # per side: reflect where possible, replicate elsewhere
        x = F.pad(x, (0, 0, 0, ph), mode="reflect" if ph < h else "replicate") if ph else x
        return F.pad(x, (0, pw, 0, 0), mode="reflect" if pw < w else "replicate") if pw else x
    return F.pad(x, (0, pw, 0, ph), mode="replicate")


class _Pass:
    """One pass over the tiles: the image-wide sums of the last pass in, this pass's out."""

    def __init__(self, given: list[Sums] | None):
        self.given = given
        self.sums: list[Sums] = []
        self.slot = 0
        self.tile = (1, 1)
        self.core = (0, 1, 0, 1)

    def start_tile(self, tile: tuple[int, int], core: tuple[int, int, int, int]) -> None:
        self.tile, self.core, self.slot = tile, core, 0

    def reduce(self, window: Callable[[slice, slice], Sums], size: tuple[int, int]) -> Sums:
        (th, tw), (y0, y1, x0, x1) = self.tile, self.core
        h, w = size
        if th % h or tw % w:
            raise ValueError(f"global_sum: a feature map of {h}x{w} does not divide the tile {th}x{tw}")
        sy, sx = th // h, tw // w
        if (y0 % sy or y1 % sy or x0 % sx or x1 % sx):
            raise ValueError(f"global_sum: the tile core {self.core} is not aligned to the feature stride "
                             f"{sy}x{sx}; pass multiple_of (the model's padding unit) to tiled_forward")
        part = window(slice(y0 // sy, y1 // sy), slice(x0 // sx, x1 // sx))
        k, self.slot = self.slot, self.slot + 1
        if k == len(self.sums):
            self.sums.append(part)
        else:
            self.sums[k] = _add(self.sums[k], part)
        if self.given is None:  # first pass: the tile's own statistics
            return window(slice(None), slice(None))
        if k >= len(self.given):
            raise RuntimeError("global_sum: the model made more reductions than in the previous pass")
        return self.given[k]


def _add(a: Sums, b: Sums) -> Sums:
    return tuple(u + v for u, v in zip(a, b)) if isinstance(a, tuple) else a + b


_PASS: ContextVar[_Pass | None] = ContextVar("vlir_tiling_pass", default=None)


def global_sum(window: Callable[[slice, slice], Sums], size: tuple[int, int]) -> Sums:
    """Sums over the whole image of per-pixel quantities of a feature map of ``size`` (h, w).

    ``window(rows, cols)`` returns the sums (a tensor or a tuple of tensors) over that window of
    the feature map. Outside tiled inference this is ``window(:, :)``; inside a multi-pass
    tiled run (:func:`tiled_forward` with ``passes``) it is the sum over the whole image, taken
    from the previous pass. Backbones call it for every reduction over H and W.
    """
    p = _PASS.get()
    if p is None:
        return window(slice(None), slice(None))
    return p.reduce(window, size)


def sharing_sums() -> bool:
    """True inside a multi-pass tiled run, where :func:`global_sum` shares sums across tiles."""
    return _PASS.get() is not None


@contextmanager
def _active(p: _Pass) -> Iterator[None]:
    token = _PASS.set(p)
    try:
        yield
    finally:
        _PASS.reset(token)


def ramp(overlap: int, eps: float = 1e-4) -> torch.Tensor:
    """Weights for the ``overlap`` pixels next to an inner tile edge (edge first).

    The first quarter is ``eps`` (pixels whose context the tile cut off), the middle half a
    raised cosine, the last quarter 1. Strictly positive, so every pixel has weight.
    """
    m = overlap // 4
    fade = overlap - 2 * m
    i = torch.arange(fade, dtype=torch.float64)
    mid = 0.5 - 0.5 * torch.cos(math.pi * (i + 1) / (fade + 1))
    return torch.cat([torch.full((m,), eps, dtype=torch.float64), mid.clamp_min(eps),
                      torch.ones(overlap - m - fade, dtype=torch.float64)])


def _starts(size: int, tile: int, stride: int) -> list[int]:
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, stride))
    return starts + [size - tile]


def _window(size: int, tile: int, start: int, overlap: int, r: torch.Tensor) -> torch.Tensor:
    """1-D weight of one tile: ramps at inner edges, 1 at image borders."""
    w = torch.ones(tile, dtype=torch.float64)
    if overlap == 0 or tile >= size:
        return w
    n = min(overlap, tile)
    if start > 0:
        w[:n] = torch.minimum(w[:n], r[:n])
    if start + tile < size:
        w[tile - n:] = torch.minimum(w[tile - n:], r[:n].flip(0))
    return w


def aligned(tile: int, overlap: int, multiple_of: int = 1, passes: int = 0) -> tuple[int, int]:
    """The tile and overlap :func:`tiled_forward` cuts with: ``tile`` rounded down to a multiple of
    ``multiple_of`` (when it is at least one), and with ``passes`` the overlap rounded up to one, so
    that every tile starts on the model's padding grid."""
    if tile >= multiple_of:
        tile = tile // multiple_of * multiple_of
    if passes:
        overlap = -(-overlap // multiple_of) * multiple_of
    return tile, overlap


def tiled_forward(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tile: int, overlap: int,
                  multiple_of: int = 1, batch_tiles: int = 1, passes: int = 0,
                  pad_mode: str = "reflect") -> torch.Tensor:
    """``fn(x)`` computed on overlapping ``tile`` x ``tile`` crops of ``x`` (B, C, H, W).

    - ``fn`` maps a (N, C, h, w) tensor to (N, C', h, w) (same spatial size).
    - Tiles overlap by at least ``overlap`` pixels; they are blended with separable
      windows (see :func:`ramp`), normalised by the total weight.
    - ``tile`` is rounded down to a multiple of ``multiple_of`` (the model's padding unit)
      where the image is larger than a tile; images no larger than a tile go through
      ``fn`` whole in one call.
    - ``batch_tiles`` tiles are stacked per call, tile-major: rows ``[k*B:(k+1)*B]`` are
      tile ``k`` of every image. A conditioned ``fn`` with per-image conditioning for a
      batch of B can index its tensors with ``torch.arange(B).repeat(n)`` where
      ``n = tiles.shape[0] // B``.
    - Output dtype is ``fn``'s; accumulation is in float32 or wider.
    - ``passes`` > 0 shares the model's global reductions (:func:`global_sum`) across the tiles:
      the image is padded to a multiple of ``multiple_of`` (with ``pad_mode``, as the model pads
      a whole image), tiles and overlap are aligned to that unit, and the tiles are run
      ``passes + 1`` times, one tile per call; only the last pass is blended.
    """
    if x.dim() != 4:
        raise ValueError(f"tiled_forward: expected x of shape (B, C, H, W), got {list(x.shape)}")
    if multiple_of < 1 or batch_tiles < 1:
        raise ValueError(f"tiled_forward: multiple_of ({multiple_of}) and batch_tiles ({batch_tiles}) must be >= 1")
    if tile < 1:
        raise ValueError(f"tiled_forward: tile must be >= 1, got {tile}")
    if passes < 0:
        raise ValueError(f"tiled_forward: passes must be >= 0, got {passes}")
    asked = overlap
    tile, overlap = aligned(tile, overlap, multiple_of, passes)
    if not 0 <= overlap < tile:
        rounded = f" (rounded up to a multiple of {multiple_of}: {overlap})" if overlap != asked else ""
        raise ValueError(f"tiled_forward: overlap must be in [0, tile={tile}), got {asked}{rounded}")
    b, _, h, w = x.shape
    if h <= tile and w <= tile:
        return fn(x)
    if passes:
        xp = pad_to_multiple(x, multiple_of, pad_mode)
        given = None
        for i in range(passes + 1):
            run = _Pass(given)
            out = _tiles(fn, xp, tile, overlap, 1, run, blend=i == passes)
            given = run.sums
        return out[:, :, :h, :w]
    return _tiles(fn, x, tile, overlap, batch_tiles, None, blend=True)


def _cores(starts: list[int], tile: int, size: int, unit: int) -> list[tuple[int, int]]:
    """Disjoint core intervals (in tile coordinates) covering the image once: tiles meet
    half-way through each overlap, rounded to ``unit``."""
    bounds = [0]
    for a, b in zip(starts, starts[1:]):
        bounds.append((a + tile + b) // 2 // unit * unit)
    bounds.append(size)
    return [(lo - s, hi - s) for s, lo, hi in zip(starts, bounds, bounds[1:])]


def _tiles(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tile: int, overlap: int,
           batch_tiles: int, run: _Pass | None, blend: bool) -> torch.Tensor | None:
    b, _, h, w = x.shape

    th, tw = min(tile, h), min(tile, w)
    stride = tile - overlap
    ys, xs = _starts(h, th, stride), _starts(w, tw, stride)
    r = ramp(overlap) if overlap else torch.ones(0, dtype=torch.float64)
    wy = [_window(h, th, y, overlap, r) for y in ys]
    wx = [_window(w, tw, s, overlap, r) for s in xs]
    # the tiles form a grid, so the total weight is separable: norm = sum(wy) x sum(wx)
    norm_y = torch.zeros(h, dtype=torch.float64)
    norm_x = torch.zeros(w, dtype=torch.float64)
    for y, v in zip(ys, wy):
        norm_y[y:y + th] += v
    for s, v in zip(xs, wx):
        norm_x[s:s + tw] += v

    grid = [(iy, ix) for iy in range(len(ys)) for ix in range(len(xs))]
    if run is not None:  # each pixel's reductions count in one tile: its core
        unit = math.gcd(th, tw, *ys, *xs)
        cy, cx = _cores(ys, th, h, unit), _cores(xs, tw, w, unit)
    out = None
    for k in range(0, len(grid), batch_tiles):
        chunk = grid[k:k + batch_tiles]
        crops = [x[:, :, ys[iy]:ys[iy] + th, xs[ix]:xs[ix] + tw] for iy, ix in chunk]
        inp = crops[0] if len(crops) == 1 else torch.cat(crops, 0)
        if run is None:
            res = fn(inp)
        else:
            (iy, ix), = chunk
            run.start_tile((th, tw), (*cy[iy], *cx[ix]))
            with _active(run):
                res = fn(inp)
            if not blend:
                continue
        if res.dim() != 4 or res.shape[0] != inp.shape[0] or res.shape[-2:] != inp.shape[-2:]:
            raise ValueError(f"tiled_forward: fn must keep batch and spatial size, got {list(res.shape)} "
                             f"for a tile batch of {list(inp.shape)}")
        if out is None:
            acc = torch.promote_types(res.dtype, torch.float32)
            out = torch.zeros(b, res.shape[1], h, w, dtype=acc, device=res.device)
            out_dtype = res.dtype
        for j, (iy, ix) in enumerate(chunk):
            wgt = (wy[iy][:, None] * wx[ix][None, :]).to(device=res.device, dtype=acc)
            y0, x0 = ys[iy], xs[ix]
            out[:, :, y0:y0 + th, x0:x0 + tw] += res[j * b:(j + 1) * b].to(acc) * wgt
    if out is None:  # a pass that only gathers statistics
        return None
    # divide in place by the separable total weight: no full-size weight map is ever built
    out.div_(norm_y.to(device=out.device, dtype=out.dtype)[:, None])
    out.div_(norm_x.to(device=out.device, dtype=out.dtype)[None, :])
    return out.to(out_dtype)
