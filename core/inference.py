"""Running a pipeline on whole images: tiling, the self-ensemble and their rules.

``restore(pipeline, lq, ...)`` is what ``Pipeline.restore``, ``vlir restore``, ``vlir eval``,
``vlir demo`` and the benchmarks call; ``run_backbone(pipeline, lq, cond, ...)`` is the same
without the perceivers (training validation passes its own conditioning). The pipeline itself
only models (perceive, condition, run the backbone); where the image is cut into tiles, how much
they overlap and which flips and turns the self-ensemble averages is decided here, once.
"""
from __future__ import annotations

import weakref
from typing import TYPE_CHECKING

import torch

from .components import BLOCK_GRID, SYMMETRIES
from .errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    from .conditioning import Conditioning, Perception
    from .pipeline import Pipeline
    from .precision import Precision
    from .registry import Registry

MAX_OVERLAP = 32  # the default tile overlap in pixels, for tiles of at least 4 x 32
MIN_TILE = 8


class TilingError(UserError, ValueError):
    """A tile size or overlap that cannot work (the message names the option)."""


def default_overlap(tile: int, unit: int = 1) -> int:
    """The overlap rule: tiles of ``tile`` pixels overlap by a quarter tile, at most 32 pixels,
    in whole ``unit`` s (the model's padding grid, where tiles must start on it) and less than
    the tile (0 when a tile is a single unit)."""
    overlap = -(-min(MAX_OVERLAP, tile // 4) // unit) * unit
    return overlap if overlap < tile else (tile - 1) // unit * unit


def tiling(tile: int | None, overlap: int | None = None) -> tuple[int | None, int | None]:
    """The checked ``--tile`` / ``--overlap`` of a run (overlap None: :func:`default_overlap`)."""
    if tile is None:
        return None, overlap
    if tile < MIN_TILE:
        raise TilingError(f"--tile must be at least {MIN_TILE} pixels, got {tile}")
    if overlap is not None and not 0 <= overlap < tile:
        raise TilingError(f"--overlap must be in [0, tile) = [0, {tile}), got {overlap}")
    return tile, overlap


def tile_plan(pipeline: "Pipeline", tile: int | None, overlap: int | None = None) -> tuple[int | None, int | None]:
    """The (tile, overlap) this pipeline's backbone runs with: :func:`tiling`'s checks, then the
    default overlap fitted to the backbone's tiling grid, or a given one checked against it."""
    from .tiling import aligned

    tile, overlap = tiling(tile, overlap)
    if tile is None:
        return None, overlap
    b = pipeline.backbone  # a Backbone (the registry checks): its tiling unit and passes
    unit = b.multiple_of if b.tile_passes else 1  # multi-pass tiles start on the padding grid
    cut, _ = aligned(tile, 0, b.multiple_of, b.tile_passes)
    if overlap is None:
        return tile, default_overlap(cut, unit)
    if aligned(tile, overlap, b.multiple_of, b.tile_passes)[1] >= cut:
        raise TilingError(f"--overlap {overlap} does not fit --tile {tile} for this model: its tiles are cut in "
                          f"whole {b.multiple_of}-pixel units ({cut} pixels, overlap rounded up to a multiple of "
                          f"{unit}); use --overlap {default_overlap(cut, unit)} or a larger --tile")
    return tile, overlap


def run_backbone(pipeline: "Pipeline", lq: torch.Tensor, cond: "Conditioning | None", *, tile: int | None = None,
                 overlap: int | None = None, steps: int | None = None,
                 generator: torch.Generator | None = None, precision: "Precision | None" = None) -> torch.Tensor:
    """The backbone (or its process) on ``lq`` with conditioning ``cond``, on tiles when ``tile`` is
    set (overlap: :func:`tile_plan`), in ``precision`` (:class:`vlir.core.precision.Precision`; None:
    fp32); what training validation calls with its batch's conditioning."""
    from .tiling import tiled_forward

    tile, overlap = tile_plan(pipeline, tile, overlap)

    def fwd(t: torch.Tensor) -> torch.Tensor:
        if precision is None or precision.dtype is None and not precision.channels_last:
            return pipeline.run_backbone(t, cond, steps, generator)
        with precision.autocast():
            out = pipeline.run_backbone(precision.input(t), cond, steps, generator)
        return out.float().contiguous()

    if tile is None or (lq.shape[-2] <= tile and lq.shape[-1] <= tile):
        return fwd(lq)
    b = pipeline.backbone  # a Backbone (the registry checks): its tiling unit, passes and padding
    return tiled_forward(fwd, lq, tile=tile, overlap=overlap, multiple_of=b.multiple_of, passes=b.tile_passes,
                         pad_mode=b.pad_mode)


def perceive(pipeline: "Pipeline", lq: torch.Tensor, precision: "Precision | None" = None
             ) -> dict[str, "Perception"]:
    """Every perceiver on ``lq`` in ``precision`` (None: fp32); perceptions come back in float32."""
    if precision is None or precision.dtype is None and not precision.channels_last:
        return pipeline.perceive(lq)
    from .precision import full

    with precision.autocast():
        return full(pipeline.perceive(precision.input(lq)))


@torch.no_grad()
def restore(pipeline: "Pipeline", lq: torch.Tensor, *, tile: int | None = None, overlap: int | None = None,
            steps: int | None = None, generator: torch.Generator | None = None, ensemble: bool = False,
            precision: "str | torch.dtype | None" = None, perceptions: "dict[str, Perception] | None" = None
            ) -> tuple[torch.Tensor, dict[str, "Perception"]]:
    """Restore a batch ``lq`` (B, 3, H, W in [0, 1]); perceivers see whole images, the backbone runs
    on ``tile`` x ``tile`` tiles when ``tile`` is set (overlap: :func:`default_overlap`).
    ``perceptions`` given (e.g. steered, :func:`vlir.core.chain.steer`) condition the backbone instead.

    ``ensemble``: self-ensemble (EDSR's "+"): the backbone restores flips and quarter turns of
    the image and the outputs, turned back, are averaged; the perceivers see the image once and
    condition every pass. It uses the symmetries of :func:`ensemble_symmetries` (all eight
    unless the degradation has a direction, as rain and haze have) and pads the image
    (edge replicated, as a JPEG encoder does) to a multiple of ``BLOCK_GRID`` pixels, so that
    every flip and turn keeps JPEG's 8x8 blocks and 16x16 chroma units on their grid: flipping
    a 481-pixel-wide JPEG unpadded would shift its blocks by one pixel.
    ``precision``: ``auto``, ``fp32`` (None), ``bf16``, ``fp16`` or a torch dtype, by the rule of
    :mod:`vlir.core.precision` (perceivers and backbone each in theirs; outputs in float32 then).
    Returns the restored images (clamped to [0, 1]) and the perceptions.
    """
    from .precision import resolve

    tile, overlap = tiling(tile, overlap)
    plan = resolve(precision, lq.device, pipeline)
    if perceptions is None:
        perceptions = perceive(pipeline, lq, plan.perceivers)
    cond = pipeline.condition(perceptions)

    def run(x: torch.Tensor) -> torch.Tensor:
        return run_backbone(pipeline, x, cond, tile=tile, overlap=overlap, steps=steps, generator=generator,
                            precision=plan.backbone)

    if not ensemble:
        return run(lq).clamp(0, 1), perceptions
    h, w = lq.shape[-2:]
    g = BLOCK_GRID
    padded = torch.nn.functional.pad(lq, (0, -w % g, 0, -h % g), mode="replicate")
    symmetries = ensemble_symmetries(pipeline, perceptions)
    total = None  # float32 running sum: memory for two images, not eight
    for k in symmetries:  # k % 4 quarter turns, after a horizontal flip for k >= 4
        x = padded.flip(-1) if k >= 4 else padded
        y = torch.rot90(run(torch.rot90(x, k % 4, (-2, -1)).contiguous()), -(k % 4), (-2, -1))
        y = y.flip(-1) if k >= 4 else y
        total = y.float() if total is None else total.add_(y.float())
    return (total[..., :h, :w] / len(symmetries)).to(y.dtype).clamp(0, 1), perceptions


def ensemble_symmetries(pipeline: "Pipeline", perceptions: dict[str, "Perception"]) -> tuple[int, ...]:
    """The flips and quarter turns (indices of ``vlir.core.components.SYMMETRIES``) that the
    self-ensemble averages: those under which the degradation looks the same (its
    ``Degradation.symmetry``). The degradation is the perceived class of each image in the
    batch when a perceiver classifies into registered degradation labels, else every
    degradation of the spec's ``data.degradations``; all eight when neither is known.
    """
    by_label = symmetries_by_label(pipeline.registry)
    predicted = {name for p in perceptions.values() for name, _ in p.top()}
    if predicted and predicted <= by_label.keys():
        groups = [by_label[n] for n in predicted]
    elif pipeline.spec.data is not None and pipeline.spec.data.degradations:
        groups = [SYMMETRIES[pipeline.registry.load("degradation", d.type).symmetry]
                  for d in pipeline.spec.data.degradations]
    else:
        groups = [SYMMETRIES["dihedral"]]
    return tuple(k for k in range(8) if all(k in g for g in groups))


_BY_LABEL: "weakref.WeakKeyDictionary[Registry, dict[str, tuple[int, ...]]]" = weakref.WeakKeyDictionary()


def symmetries_by_label(registry: "Registry") -> dict[str, tuple[int, ...]]:
    """Class word (``Degradation.label``) -> symmetries of every registered degradation (imported once
    per registry)."""
    if registry not in _BY_LABEL:
        classes = [registry.load("degradation", e.name) for e in registry.list("degradation")]
        _BY_LABEL[registry] = {cls.label or cls.name: SYMMETRIES[cls.symmetry] for cls in classes}
    return _BY_LABEL[registry]
