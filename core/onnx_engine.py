"""onnxruntime engine: a pipeline whose backbone runs the graphs of ``vlir export onnx``.

:func:`load_onnx_pipeline` opens an export folder as a :class:`~vlir.core.pipeline.Pipeline`
whose backbone is an :class:`OnnxBackbone` and whose perceivers' image towers are
:class:`OnnxTowers`; everything else is the torch code path, so tiling, the self-ensemble and
the perceivers' conditioning work as with the torch engine.
``OnnxBackbone`` pads its input to the size multiple (as the backbone pads itself) and, inside a
tiled run that shares reductions across tiles (:func:`vlir.core.tiling.global_sum`), runs the
tile graphs: the first pass gathers each tile core's sums, the next passes feed the image-wide
sums back. onnxruntime is imported only here (extra ``vlir[onnx]``).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .errors import UserError


class OnnxEngineError(UserError):
    """An export folder that cannot be run (the message names the folder or file)."""


def _runtime():
    try:
        import onnxruntime
    except ImportError:
        raise OnnxEngineError("--engine onnx needs onnxruntime: pip install 'vlir[onnx]'") from None
    return onnxruntime


def read_meta(folder: str | Path) -> dict[str, Any]:
    """``onnx.json`` of an export folder, checked."""
    from .export import FORMAT, META_FILE

    path = Path(folder).expanduser() / META_FILE
    if not path.is_file():
        raise OnnxEngineError(f"{folder}: not an ONNX export folder (no {META_FILE}); "
                              "write one with: vlir export onnx PIPELINE -o DIR")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise OnnxEngineError(f"{path}: unreadable: {e}") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("backbone"), dict):
        raise OnnxEngineError(f"{path}: not a {FORMAT} description (expected 'format: {FORMAT}' and 'backbone')")
    return meta


def _numpy(t: torch.Tensor):
    return t.detach().float().cpu().contiguous().numpy()


class OnnxBackbone(torch.nn.Module):
    """The exported backbone of ``folder`` (its ``onnx.json`` entry ``info``), called as a backbone."""

    diffusion = False

    def __init__(self, folder: str | Path, info: dict[str, Any], threads: int | None = None,
                 providers: list[str] | None = None):
        super().__init__()
        ort = _runtime()
        folder = Path(folder)
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        self._providers = providers or ["CPUExecutionProvider"]

        def session(name: str):
            path = folder / name
            if not path.is_file():
                raise OnnxEngineError(f"{folder}: missing {name} (named in onnx.json)")
            return ort.InferenceSession(str(path), opts, providers=self._providers)

        self.info = info
        self.name = info.get("component", "backbone")
        self.multiple_of = int(info["multiple_of"])
        self.tile_passes = int(info.get("tile_passes", 0))
        self._pad_mode = info.get("pad_mode", "reflect")
        self.cond_names = list(info.get("conditioning", []))
        self.channels = int(info["inputs"][0]["shape"][1])
        self.whole = session(info["file"])
        tiling = info.get("tiling")
        if self.tile_passes and not tiling:
            raise OnnxEngineError(f"{folder}: onnx.json has no tile graphs for a backbone with tile_passes")
        if tiling:
            self.first, self.shared = session(tiling["first"]), session(tiling["shared"])
            self.layout, self.strides = tiling["layout"], tiling["strides"]

    @property
    def pad_mode(self) -> str:
        return self._pad_mode

    def extra_repr(self) -> str:
        return f"{self.name}, onnxruntime {self._providers[0]}"

    def _cond(self, cond: Any) -> dict[str, Any]:
        feeds = {}
        for name in self.cond_names:
            t = getattr(cond, name, None) if cond is not None else None
            if t is None:
                raise OnnxEngineError(f"backbone {self.name!r} was exported with conditioning input {name!r}, "
                                      "but the pipeline gave none")
            feeds[name] = _numpy(t)
        return feeds

    def forward(self, lq: torch.Tensor, cond: Any = None, **kw: Any) -> torch.Tensor:
        from .tiling import _PASS, pad_to_multiple

        if lq.dim() != 4 or lq.shape[1] != self.channels:
            raise ValueError(f"{self.name} (onnx): expected lq of shape [B, {self.channels}, H, W], got {list(lq.shape)}")
        h, w = lq.shape[-2:]
        x = pad_to_multiple(lq.float(), self.multiple_of, self._pad_mode)
        feeds = {"lq": _numpy(x), **self._cond(cond)}
        run = _PASS.get() if self.tile_passes else None  # a backbone without reductions ignores the passes
        if run is None:  # a whole image, or a tile whose reductions stay its own
            out = self.whole.run(["restored"], feeds)[0]
            return torch.from_numpy(out).to(lq.device, lq.dtype)[:, :, :h, :w]
        # a pass of a tiled run that shares the reductions: core in, the core's sums out
        feeds["core"] = torch.tensor(run.core, dtype=torch.int64).numpy()
        if run.given is None:
            outs, restored = self.first.run(None, feeds), None
        else:
            for i, t in enumerate(t for s in run.given for t in (s if isinstance(s, tuple) else (s,))):
                feeds[f"sum{i}"] = _numpy(t)
            outs = self.shared.run(None, feeds)
            restored, outs = outs[0], outs[1:]
        th, tw = run.tile
        parts = _nest([torch.from_numpy(o) for o in outs], self.layout)
        for part, (sy, sx) in zip(parts, self.strides):
            run.reduce(lambda rows, cols, p=part: p, (th // sy, tw // sx))
        if restored is None:  # the first pass only gathers sums; tiling does not blend it
            return lq
        return torch.from_numpy(restored).to(lq.device, lq.dtype)[:, :, :h, :w]


class OnnxTowers:
    """A perceiver's exported image towers, called as its ``encode_crops`` (crops in, embeddings out)."""

    def __init__(self, folder: str | Path, info: dict[str, Any], threads: int | None = None,
                 providers: list[str] | None = None):
        ort = _runtime()
        path = Path(folder) / info["file"]
        if not path.is_file():
            raise OnnxEngineError(f"{folder}: missing {info['file']} (named in onnx.json)")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), opts, providers=providers or ["CPUExecutionProvider"])
        self.tuple = bool(info.get("tuple"))

    def __call__(self, crops: torch.Tensor):
        outs = [torch.from_numpy(o).to(crops.device) for o in self.session.run(None, {"crops": _numpy(crops)})]
        return tuple(outs) if self.tuple else outs[0]


def _nest(flat: list, layout: list[int]) -> list:
    from .export import _nest as nest

    return nest(flat, layout)


def load_onnx_pipeline(folder: str | Path, device: str = "cpu", threads: int | None = None) -> "Any":
    """The pipeline of an export folder with its backbone (or the experts' networks) and the
    perceivers' image towers on onnxruntime; the experts' routing, the perceivers' preprocessing,
    prompts and heads stay in torch."""
    from .pipeline import Pipeline

    folder = Path(folder).expanduser()
    meta = read_meta(folder)
    pipe = Pipeline.load(folder, map_location=device)
    providers = ["CPUExecutionProvider"]
    if str(device).startswith("cuda") and "CUDAExecutionProvider" in _runtime().get_available_providers():
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    threads = threads or torch.get_num_threads()
    info = meta["backbone"]
    if "nets" in info:  # experts: each expert on onnxruntime, the routing in torch
        for k, net in info["nets"].items():
            pipe.backbone.nets[int(k)] = OnnxBackbone(folder, net, threads=threads, providers=providers)
    else:
        pipe.backbone = OnnxBackbone(folder, info, threads=threads, providers=providers)
    for role, p in (meta.get("perceivers") or {}).items():
        if p.get("engine") == "onnxruntime":
            if role not in pipe.perceivers:
                raise OnnxEngineError(f"{folder}: onnx.json names perceiver {role!r}, which spec.yaml does not have")
            # the perceiver's own code runs around it: preprocessing before, prompts and heads after
            pipe.perceivers[role].encode_crops = OnnxTowers(folder, p, threads=threads, providers=providers)
    return pipe.eval()
