"""``vlir export onnx PIPELINE -o DIR``: a pipeline's backbone as ONNX, for onnxruntime.

DIR gets the saved pipeline (``spec.yaml`` and its safetensors, so DIR is also a pipeline
folder), ``backbone.onnx`` with dynamic batch, height and width, and ``onnx.json``, which
describes every graph's inputs and outputs, the size multiple and padding of the backbone and
how each component runs. ``vlir restore --engine onnx --pipeline DIR`` runs it
(:mod:`vlir.core.onnx_engine`).

Backbones whose reductions over the image are shared across tiles (``tile_passes``: Restormer's
channel attention, NAFNet's channel pooling) get two more graphs, so that tiled onnxruntime runs
equal tiled torch runs: ``backbone.first.onnx`` maps a tile and its core (``y0, y1, x0, x1``)
to the core's sums of every reduction (the tile's own statistics drive it), and
``backbone.shared.onnx`` maps a tile and the image-wide sums to the restored tile and the
core's sums again. ``experts`` exports each expert network alone (``backbone.nets.K.onnx``);
its routing by class probabilities, a choice between graphs, stays in torch. A perceiver exports
its image towers (``encode_crops``, ``perceiver.ROLE.onnx``); its preprocessing (resize and
crops, chosen from the image size in Python), text prompts and heads stay in torch. Refused with
a message: diffusion processes (a sampling loop) and TLC's local pooling (its window is chosen
from the image size in Python, which a traced graph freezes).

Every graph is checked against torch at two sizes after export; a mismatch fails the export.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .pipeline import Pipeline

META_FILE = "onnx.json"
FORMAT = "vlir-onnx"
OPSET = 17
CHECK_ATOL = 1e-4  # fp32 graphs must match torch this closely (max abs, images in [0, 1])


class ExportError(UserError):
    """A pipeline, component or option that cannot be exported (the message names it)."""


# -- what can be exported ---------------------------------------------------------------------
def refusal(pipe: "Pipeline") -> str | None:
    """Why the pipeline's backbone cannot be exported, or None."""
    b = pipe.backbone
    name = pipe.spec.backbone.type
    if pipe.process is not None:
        return (f"process {pipe.spec.process.type!r}: diffusion sampling is a loop over steps with random "
                "noise, not one graph; only pipelines with a direct backbone export")
    if name == "experts":
        inner = [_refuse_net(n, b.params.expert) for n in b.nets]
        return next((f"experts: {w}" for w in inner if w), None)
    return _refuse_net(b, name)


# -- graphs -----------------------------------------------------------------------------------
class _TracePass:
    """Stands in for tiling's pass while a tile graph is traced: the core's sums of every
    reduction become graph outputs; the reductions use the tile's own statistics (``given``
    None: the first graph) or image-wide sums that are graph inputs (the shared graph)."""

    def __init__(self, tile_size: Any, core: "torch.Tensor", given: list | None = None):
        self.tile_size, self.core, self.given = tile_size, core, given
        self.parts: list = []
        self.sizes: list[tuple[int, int]] = []

    def reduce(self, window, size):
        th, tw = self.tile_size
        h, w = size
        sy, sx = th // h, tw // w
        y0, y1, x0, x1 = self.core[0], self.core[1], self.core[2], self.core[3]
        self.parts.append(window(slice(y0 // sy, y1 // sy), slice(x0 // sx, x1 // sx)))
        self.sizes.append((h, w))
        if self.given is None:
            return window(slice(None), slice(None))
        return self.given[len(self.parts) - 1]


def _flat(parts: list) -> list:
    return [t for p in parts for t in (p if isinstance(p, tuple) else (p,))]


def _nest(flat: list, layout: list[int]) -> list:
    """Flat tensors back into the reductions' sums (``layout``: 0 for a tensor, n for an n-tuple)."""
    out, i = [], 0
    for n in layout:
        out.append(flat[i] if n == 0 else tuple(flat[i:i + n]))
        i += max(n, 1)
    return out


def _cond_inputs(backbone) -> dict[str, "torch.Tensor"]:
    """Example conditioning tensors the backbone reads (graph inputs ``vector`` / ``tokens``)."""
    cond = backbone.example_inputs(size=(8, 8), batch=1).get("cond")
    out = {}
    for name in ("vector", "tokens"):
        t = getattr(cond, name, None) if cond is not None else None
        if t is not None:
            out[name] = t
    return out


def _cond_axes(names: list[str]) -> dict[str, dict[int, str]]:
    """Dynamic axes of the conditioning inputs: the batch, and the number of content tokens."""
    return {k: {0: "batch", 1: "tokens"} if k == "tokens" else {0: "batch"} for k in names}


def _wrappers(backbone, cond_names: list[str], layout: list[int] | None = None):
    import torch

    from .conditioning import Conditioning
    from .tiling import _active

    def conditioning(tensors):
        kw = dict(zip(cond_names, tensors))
        return Conditioning(**kw) if kw else None

    class Whole(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = backbone

        def forward(self, lq, *cond):
            return self.backbone(lq, conditioning(cond))

    class First(Whole):
        def forward(self, lq, core, *cond):
            run = _TracePass(lq.shape[-2:], core)
            with _active(run):
                self.backbone(lq, conditioning(cond))
            return tuple(_flat(run.parts))

    class Shared(Whole):
        def forward(self, lq, core, *rest):
            cond, given = rest[:len(cond_names)], list(rest[len(cond_names):])
            run = _TracePass(lq.shape[-2:], core, _nest(given, layout))
            with _active(run):
                out = self.backbone(lq, conditioning(cond))
            return (out, *_flat(run.parts))

    return Whole(), First(), Shared()


def _export(module, args: tuple, path: Path, inputs: list[str], outputs: list[str],
            dynamic: dict[str, dict[int, str]]) -> None:
    import torch

    from .io import atomic_path

    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # its fused attention op has no ONNX form
    try:
        # the TorchScript exporter (dynamo=False): it needs no onnxscript, and it traces shapes as
        # tensors, so padding and cropping stay dynamic in height and width
        with atomic_path(path) as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its deprecation and tracer notes
            torch.onnx.export(module, args, str(tmp), dynamo=False, opset_version=OPSET, input_names=inputs,
                              output_names=outputs, dynamic_axes=dynamic, do_constant_folding=True)
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)


def _io(names: list[str], tensors: list, dynamic: dict[str, dict[int, str]]) -> list[dict[str, Any]]:
    return [{"name": n, "dtype": str(t.dtype).removeprefix("torch."),
             "shape": [dynamic.get(n, {}).get(i, s) for i, s in enumerate(t.shape)]} for n, t in zip(names, tensors)]


def _refuse_net(b, name: str) -> str | None:
    if getattr(b, "diffusion", False):
        return f"backbone {name!r} is a diffusion backbone (it predicts noise for a process); not exportable"
    if getattr(getattr(b, "params", None), "tlc", False):
        return (f"backbone {name!r} with tlc: true: TLC's local pooling chooses its window from the image "
                "size in Python, which a traced graph freezes; export with tlc: false")
    return None


def export_net(b, name: str, out: Path, stem: str = "backbone", *, check: bool = True) -> dict[str, Any]:
    """Write the graphs of one direct backbone ``b`` (``stem``.onnx and, with ``tile_passes``,
    ``stem``.first.onnx and ``stem``.shared.onnx) into ``out``; returns their description."""
    import torch

    from .tiling import _active, pad_to_multiple

    why = _refuse_net(b, name)
    if why:
        raise ExportError(why)
    m = max(1, int(b.multiple_of))
    channels = int(b.example_inputs(size=(m, m), batch=1)["lq"].shape[1])
    cond = _cond_inputs(b)
    cond_names = list(cond)
    b = b.float().eval()
    dev = next(iter(b.parameters()), torch.empty(0)).device
    cond = {k: v.to(dev) for k, v in cond.items()}
    # traced at a size that is not a multiple, so that the graph keeps the backbone's own padding
    # (any height and width work); onnxruntime is then fed padded inputs, where it is a no-op
    lq = torch.rand(1, channels, 2 * m + 3, 3 * m + 5, device=dev)
    batch_hw = {0: "batch", 2: "height", 3: "width"}
    dyn = {"lq": batch_hw, "restored": batch_hw, **_cond_axes(cond_names)}
    whole, _, _ = _wrappers(b, cond_names)
    info: dict[str, Any] = {
        "component": name, "file": f"{stem}.onnx", "multiple_of": m, "pad_mode": b.pad_mode,
        "tile_passes": int(b.tile_passes), "conditioning": cond_names,
    }
    try:
        with torch.no_grad():
            _export(whole, (lq, *cond.values()), out / info["file"], ["lq", *cond_names], ["restored"], dyn)
    except Exception as e:  # noqa: BLE001 - the exporter's own reason, named after the component
        raise ExportError(f"backbone {name!r}: the ONNX exporter failed: {_first_line(e)}") from e
    info["inputs"] = _io(["lq", *cond_names], [lq, *cond.values()], dyn)
    with torch.no_grad():
        info["outputs"] = _io(["restored"], [whole(lq, *cond.values())], dyn)

    if b.tile_passes:
        # the layout of every reduction's sums, from an eager run of one tile
        tile = pad_to_multiple(lq, m, b.pad_mode)
        core = torch.tensor([0, tile.shape[-2], 0, tile.shape[-1]], device=dev)
        probe = _TracePass(tile.shape[-2:], core)
        with torch.no_grad(), _active(probe):
            b(tile, _cond(cond_names, cond))
        layout = [len(p) if isinstance(p, tuple) else 0 for p in probe.parts]
        sums = _flat(probe.parts)
        sum_names = [f"sum{i}" for i in range(len(sums))]
        part_names = [f"part{i}" for i in range(len(sums))]
        tile_dyn = {"lq": batch_hw, "restored": batch_hw, **_cond_axes(cond_names),
                    **{n: {0: "batch"} for n, t in zip(sum_names, sums) if t.dim()},
                    **{n: {0: "batch"} for n, t in zip(part_names, sums) if t.dim()}}
        _, first, shared = _wrappers(b, cond_names, layout)
        tiling = {"first": f"{stem}.first.onnx", "shared": f"{stem}.shared.onnx"}
        try:
            with torch.no_grad():
                _export(first, (tile, core, *cond.values()), out / tiling["first"],
                        ["lq", "core", *cond_names], part_names, tile_dyn)
                _export(shared, (tile, core, *cond.values(), *sums), out / tiling["shared"],
                        ["lq", "core", *cond_names, *sum_names], ["restored", *part_names], tile_dyn)
        except Exception as e:  # noqa: BLE001
            raise ExportError(f"backbone {name!r}: the ONNX exporter failed on the tile graphs: {_first_line(e)}") from e
        info["tiling"] = {
            **tiling, "layout": layout,
            "strides": [[int(tile.shape[-2]) // h, int(tile.shape[-1]) // w] for h, w in probe.sizes],
            "core": "int64 [y0, y1, x0, x1]: the tile's core rows and columns (multiples of the strides)",
            "sums": _io(sum_names, sums, tile_dyn),
        }
    if check:
        info["max_abs_diff"] = check_backbone(b, out, info)
    return info


def export_backbone(pipe: "Pipeline", out: Path, *, check: bool = True) -> dict[str, Any]:
    """Write the pipeline backbone's graphs into ``out``; returns their description for ``onnx.json``.

    ``experts``: each expert network is exported alone (``backbone.nets.K``) and the routing by
    class probabilities stays in torch, as it is a choice between graphs.
    """
    why = refusal(pipe)
    if why:
        raise ExportError(why)
    b, name = pipe.backbone, pipe.spec.backbone.type
    if name != "experts":
        return export_net(b, name, out, check=check)
    import torch

    nets = {}
    expert = b.params.expert
    for k, net in enumerate(b.nets):
        if not isinstance(net, torch.nn.Identity):
            nets[str(k)] = export_net(net, expert, out, f"backbone.nets.{k}", check=check)
    return {"component": name, "engine": "torch", "why": "routing between the experts' graphs", "nets": nets}


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def _cond(names: list[str], tensors: dict):
    from .conditioning import Conditioning

    return Conditioning(**{k: tensors[k] for k in names}) if names else None


def check_backbone(backbone, out: Path, info: dict[str, Any]) -> float:
    """Max |onnxruntime - torch| of the exported backbone: whole images at two sizes and, with
    tile graphs, one tiled run with shared reductions; ExportError above ``CHECK_ATOL``."""
    import torch

    from .onnx_engine import OnnxBackbone
    from .tiling import tiled_forward

    m = info["multiple_of"]
    onnx_b = OnnxBackbone(out, info, threads=torch.get_num_threads())
    dev = next(iter(backbone.parameters()), torch.empty(0)).device
    cond = _cond(info["conditioning"], {k: v.to(dev) for k, v in _cond_inputs(backbone).items()})
    gen = torch.Generator().manual_seed(0)
    worst = 0.0
    runs = [((2 * m + 1, 3 * m + 2), None), ((3 * m, 2 * m + 7), None)]
    if "tiling" in info:
        runs.append(((4 * m + 3, 5 * m + 1), 2 * m))
    for (h, w), tile in runs:
        lq = torch.rand(1, onnx_b.channels, h, w, generator=gen).to(dev)
        with torch.no_grad():
            if tile is None:
                ref, got = backbone(lq, cond), onnx_b(lq, cond)
            else:
                ref, got = (tiled_forward(lambda t, f=f: f(t, cond), lq, tile=tile, overlap=m, multiple_of=m,
                                          passes=info["tile_passes"], pad_mode=info["pad_mode"])
                            for f in (backbone, onnx_b))
        worst = max(worst, float((ref.float().cpu() - got.float().cpu()).abs().max()))
    if not worst <= CHECK_ATOL:
        raise ExportError(f"backbone {info['component']!r}: the exported graphs differ from torch by {worst:.3g} "
                          f"(more than {CHECK_ATOL}): the exporter froze something that depends on the input")
    return worst


# -- perceivers -------------------------------------------------------------------------------
def export_perceiver(role: str, perceiver, out: Path, *, check: bool = True) -> dict[str, Any]:
    """The image towers of a perceiver (its ``encode_crops``: preprocessed crops ``[N, 3, S, S]``
    -> embeddings) as ``perceiver.ROLE.onnx`` with a dynamic number of crops; the preprocessing
    (resize, crops: Python control flow on the image size), the text prompts and the heads stay
    in torch. A perceiver without ``encode_crops`` runs in torch."""
    import torch

    name = getattr(perceiver, "name", type(perceiver).__name__)
    if not callable(getattr(perceiver, "encode_crops", None)):
        return {"component": name, "engine": "torch",
                "why": "no encode_crops (image towers on preprocessed crops) to export"}
    crops = _example_crops(perceiver)
    with torch.no_grad():
        ref = perceiver.encode_crops(crops)
    single = isinstance(ref, torch.Tensor)
    outs = [ref] if single else list(ref)
    names = [f"embedding{i}" for i in range(len(outs))]
    dyn = {"crops": {0: "crops"}, **{n: {0: "crops"} for n in names}}

    class Towers(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.perceiver = perceiver

        def forward(self, x):
            return self.perceiver.encode_crops(x)

    info: dict[str, Any] = {"component": name, "engine": "onnxruntime", "file": f"perceiver.{role}.onnx",
                            "tuple": not single}
    try:
        with torch.no_grad():
            _export(Towers().eval(), (crops,), out / info["file"], ["crops"], names, dyn)
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"perceiver {role!r} ({name}): the ONNX exporter failed: {_first_line(e)}") from e
    info["inputs"] = _io(["crops"], [crops], dyn)
    info["outputs"] = _io(names, outs, dyn)
    if check:
        from .onnx_engine import OnnxTowers

        towers = OnnxTowers(out, info, threads=torch.get_num_threads())
        x = torch.rand(crops.shape[0] + 2, *crops.shape[1:], generator=torch.Generator().manual_seed(0))
        x = x.to(crops.device) * 2 - 1  # about the range of normalised crops
        with torch.no_grad():
            ref, got = perceiver.encode_crops(x), towers(x)
        pairs = zip([ref], [got]) if single else zip(ref, got)
        worst = max(float((a.float().cpu() - b.float().cpu()).abs().max()) for a, b in pairs)
        if not worst <= CHECK_ATOL:
            raise ExportError(f"perceiver {role!r} ({name}): the exported towers differ from torch by {worst:.3g} "
                              f"(more than {CHECK_ATOL})")
        info["max_abs_diff"] = worst
    return info


def _example_crops(perceiver) -> "torch.Tensor":
    """The crops the perceiver's own preprocessing makes of two small images (their size S)."""
    import torch

    seen = []
    towers = perceiver.encode_crops
    perceiver.encode_crops = lambda x: (seen.append(x), towers(x))[1]
    try:
        dev = next(iter(perceiver.parameters()), torch.empty(0)).device
        with torch.no_grad():
            perceiver(torch.rand(2, 3, 96, 128, device=dev))
    finally:
        del perceiver.encode_crops  # the class's method again
    if not seen:
        raise ExportError(f"perceiver {type(perceiver).__name__}: its forward never called encode_crops")
    return seen[0].float()


# -- the folder -------------------------------------------------------------------------------
def export_onnx(pipe: "Pipeline", out: str | os.PathLike, *, check: bool = True) -> Path:
    """Export ``pipe`` into the folder ``out`` (see the module docs); ``onnx.json`` is written last."""
    import torch

    from . import __version__
    from .io import atomic_write_text

    why = refusal(pipe)
    if why:
        raise ExportError(why)
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise ExportError(f"output {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    (out / META_FILE).unlink(missing_ok=True)  # a folder with onnx.json is a complete export
    pipe = pipe.float().eval()
    backbone = export_backbone(pipe, out, check=check)
    perceivers = {role: export_perceiver(role, p, out, check=check) for role, p in pipe.perceivers.items()}
    pipe.save(out)  # the spec and the torch weights: perceivers run from them, DIR stays a pipeline folder
    meta = {
        "format": FORMAT, "version": 1, "pipeline": "spec.yaml", "opset": OPSET,
        "exported_with": {"vlir": __version__, "torch": torch.__version__.split("+")[0]},
        "backbone": backbone,
        "perceivers": perceivers,
    }
    atomic_write_text(out / META_FILE, json.dumps(meta, indent=2) + "\n")
    return out


# -- command ----------------------------------------------------------------------------------
def add_export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("format", choices=["onnx"], help="what to write (onnx: graphs for onnxruntime)")
    p.add_argument("pipeline", metavar="PIPELINE",
                   help="saved pipeline folder, spec file, or 'default' (the built-in default model)")
    p.add_argument("-o", "--out", required=True, metavar="DIR", help="output folder (created if needed)")
    p.add_argument("--no-check", action="store_true",
                   help="skip checking the graphs against torch (whole images at two sizes, one tiled run)")


def run_export(args: argparse.Namespace) -> int:
    try:
        import onnx  # noqa: F401  (torch's exporter needs it)
    except ImportError:
        print("vlir export: error: ONNX export needs the onnx extra: pip install 'vlir[onnx]'", file=sys.stderr)
        return 2
    from .default import open_pipeline

    src = args.pipeline
    if src == "default":
        pipe = open_pipeline(device="cpu")
    else:
        path = Path(src).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"pipeline {src}: no such folder or spec file")
        folder = path.is_dir()
        pipe = open_pipeline(str(path) if folder else None, None if folder else str(path), "cpu")
    try:
        out = export_onnx(pipe, args.out, check=not args.no_check)
    except UserError as e:  # ExportError, or onnxruntime missing for the check
        print(f"vlir export: error: {src}: {e}", file=sys.stderr)
        return 2
    meta = json.loads((out / META_FILE).read_text(encoding="utf-8"))
    towers = [r for r, p in meta["perceivers"].items() if p["engine"] == "onnxruntime"]
    print(f"wrote {out}: backbone {pipe.spec.backbone.type!r}"
          + (f" and the image towers of perceiver(s) {', '.join(towers)}" if towers else "")
          + f" as ONNX (described in {META_FILE}); run it with: vlir restore --engine onnx --pipeline {out} ...")
    return 0
