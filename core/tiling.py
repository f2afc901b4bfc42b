"""Tiled inference: run an image-to-image function on overlapping tiles and blend them.

Memory is bounded by ``batch_tiles`` tiles plus the output buffer, so large images can be
restored with a model that would not fit them whole. The result equals the whole-image
result where the model is local (its receptive field reaches less than ``overlap // 4`` pixels
past a tile edge); models with global operations (Restormer's channel attention, NAFNet's
channel pooling) see only one tile at a time, so their tiled output is an approximation whose
quality grows with the tile size.
"""
from __future__ import annotations

import math
from typing import Callable

import torch


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


def tiled_forward(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tile: int, overlap: int,
                  multiple_of: int = 1, batch_tiles: int = 1) -> torch.Tensor:
    """``fn(x)`` computed on overlapping ``tile`` x ``tile`` crops of ``x`` (B, C, H, W).

    - ``fn`` maps a (N, C, h, w) tensor to (N, C', h, w) (same spatial size).
    - Tiles overlap by at least ``overlap`` pixels; they are blended with separable
      windows (see :func:`ramp`), normalised by the total weight.
    - ``tile`` is rounded down to a multiple of ``multiple_of`` (the model's padding unit)
      where the image is larger than a tile; images no larger than a tile go through
      ``fn`` whole in one call.
    - ``batch_tiles`` tiles are stacked per call, tile-major: rows ``[k*B:(k+1)*B]`` are
      tile ``k`` of every image. A conditioned ``fn`` with per-image conditioning for a
      batch of B can expand it with ``cond.select(torch.arange(B).repeat(n))`` where
      ``n = tiles.shape[0] // B``.
    - Output dtype is ``fn``'s; accumulation is in float32 or wider.
    """
    if x.dim() != 4:
        raise ValueError(f"tiled_forward: expected x of shape (B, C, H, W), got {list(x.shape)}")
    if multiple_of < 1 or batch_tiles < 1:
        raise ValueError(f"tiled_forward: multiple_of ({multiple_of}) and batch_tiles ({batch_tiles}) must be >= 1")
    if tile >= multiple_of:
        tile = tile // multiple_of * multiple_of
    if tile < 1:
        raise ValueError(f"tiled_forward: tile must be >= 1, got {tile}")
    if not 0 <= overlap < tile:
        raise ValueError(f"tiled_forward: overlap must be in [0, tile={tile}), got {overlap}")
    b, _, h, w = x.shape
    if h <= tile and w <= tile:
        return fn(x)

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
    out = None
    for k in range(0, len(grid), batch_tiles):
        chunk = grid[k:k + batch_tiles]
        crops = [x[:, :, ys[iy]:ys[iy] + th, xs[ix]:xs[ix] + tw] for iy, ix in chunk]
        inp = crops[0] if len(crops) == 1 else torch.cat(crops, 0)
        res = fn(inp)
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
    # divide in place by the separable total weight: no full-size weight map is ever built
    out.div_(norm_y.to(device=out.device, dtype=out.dtype)[:, None])
    out.div_(norm_x.to(device=out.device, dtype=out.dtype)[None, :])
    return out.to(out_dtype)
