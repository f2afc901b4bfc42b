"""Any image-to-image architecture the ``spandrel`` library detects, as a direct vlir backbone.

``backbone: {type: spandrel, weights: FILE}`` (or ``type: auto``, which falls back to spandrel):
while the spec is read, spandrel detects the architecture from the file and vlir records it as
``params: {arch: <spandrel id>, hyperparameters: {...}}``, so a saved pipeline rebuilds the network
without the original file. The network runs through spandrel's own call for its architecture;
inputs are padded to its size requirements (``multiple_of``, ``minimum``, ``square``) and cropped
back, and tiling aligns tiles to ``multiple_of``. Only restoration models (scale 1, 3 colour
channels in and out) fit a vlir pipeline; super-resolution and inpainting models are refused.
Needs the optional extra: ``pip install 'vlir[spandrel]'``.
"""
from __future__ import annotations

import inspect
import typing
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field

from vlir.core.components import Backbone

try:
    import spandrel
except ImportError as e:  # reported by the registry when the component is used
    raise ImportError("backbone 'spandrel' needs the spandrel library: pip install 'vlir[spandrel]'") from e

_PLAIN = (int, float, str, bool, type(None))


def _model_class(support: "spandrel.ArchSupport") -> type:
    """The network class of a spandrel architecture (``class XArch(Architecture[X])``)."""
    for base in getattr(type(support.architecture), "__orig_bases__", ()):
        args = typing.get_args(base)
        if args and isinstance(args[0], type):
            return args[0]
    raise ValueError(f"spandrel architecture {support.id!r}: cannot find its network class")


def _plain(value: Any) -> Any:
    """JSON-able copy of a hyperparameter (tuples as lists), or raise TypeError."""
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _plain(v) for k, v in value.items()}
    raise TypeError(type(value).__name__)


def _shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


class Spandrel(Backbone):
    """A network built by spandrel; ``forward(lq, cond=None)`` ignores conditioning."""

    class Params(Backbone.Params):
        arch: str | None = Field(None, description="spandrel architecture id, e.g. SwinIR, SCUNet, Compact")
        hyperparameters: dict[str, Any] = Field(
            default_factory=dict, description="the network's constructor arguments, as detected by spandrel")

    def __init__(self, params=None, **overrides: Any):
        super().__init__(params, **overrides)
        p = self.params
        if p.arch is None:
            raise ValueError("backbone spandrel: give weights: FILE (spandrel detects the architecture from it) "
                             "or params.arch and params.hyperparameters")
        support = spandrel.MAIN_REGISTRY.get(p.arch)
        if support is None:
            known = ", ".join(sorted(a.id for a in spandrel.MAIN_REGISTRY.architectures()))
            raise ValueError(f"backbone spandrel: spandrel {spandrel.__version__} has no architecture {p.arch!r}; "
                             f"known: {known}")
        try:
            net = _model_class(support)(**p.hyperparameters)
        except TypeError as e:
            raise ValueError(f"backbone spandrel: {p.arch} does not take these hyperparameters: {e}") from e
        # spandrel's description of that network: its call, size requirements, scale and channels
        desc = support.architecture.load(net.state_dict())
        _check(desc)
        self.model = desc.model
        self._call = desc._call_fn  # spandrel's per-architecture call (some add inputs or unpack outputs)
        self.size = desc.size_requirements
        self.multiple_of = self.size.multiple_of
        self.bf16_safe = bool(desc.supports_bfloat16)

    @classmethod
    def detect_params(cls, sd: dict[str, Any]) -> dict[str, Any] | None:
        """``{arch, hyperparameters}`` of a state dict spandrel recognises, or None."""
        try:
            desc = spandrel.MAIN_REGISTRY.load(spandrel.canonicalize_state_dict(dict(sd)))
        except spandrel.UnsupportedModelError:
            return None
        _check(desc)
        model = desc.model
        arch = desc.architecture.id
        signature = inspect.signature(type(model).__init__).parameters
        hyper: dict[str, Any] = {}
        for k, v in getattr(model, "hyperparameters", {}).items():
            try:
                hyper[k] = _plain(v)
            except TypeError:
                default = signature[k].default if k in signature else inspect.Parameter.empty
                if v is not default and v != default:
                    raise ValueError(f"spandrel architecture {arch}: hyperparameter {k}={v!r} is not a plain value "
                                     "and not the default, so a spec cannot record it") from None
        rebuilt = cls(arch=arch, hyperparameters=hyper)
        if _shapes(rebuilt.model) != _shapes(model):
            raise ValueError(f"spandrel architecture {arch}: the detected hyperparameters do not rebuild the network")
        return {"arch": arch, "hyperparameters": hyper}

    def convert_checkpoint(self, obj: Any) -> dict[str, torch.Tensor]:
        """A file spandrel reads (its architecture's own layout), or a vlir-saved one (``model.*``)."""
        from vlir.core.io import CheckpointError, unwrap_state_dict

        sd = unwrap_state_dict(obj)
        if sd and all(k.startswith("model.") for k in sd):
            return sd
        try:
            desc = spandrel.MAIN_REGISTRY.load(spandrel.canonicalize_state_dict(sd))
        except spandrel.UnsupportedModelError as e:
            raise CheckpointError(f"spandrel does not recognise this state dict (expected {self.params.arch})") from e
        if desc.architecture.id != self.params.arch:
            raise CheckpointError(f"checkpoint holds a spandrel {desc.architecture.id}, the spec says {self.params.arch}")
        return {f"model.{k}": v for k, v in desc.model.state_dict().items()}

    def forward(self, lq: torch.Tensor, cond: Any = None, **kw: Any) -> torch.Tensor:
        if lq.dim() != 4 or lq.shape[1] != 3:
            raise ValueError(f"spandrel {self.params.arch}: expected lq of shape [B, 3, H, W], got {list(lq.shape)}")
        h, w = lq.shape[-2:]
        pad_w, pad_h = self.size.get_padding(w, h)
        x = lq
        if pad_w or pad_h:  # as spandrel pads: reflect as far as it can, then replicate
            rw, rh = min(pad_w, w - 1), min(pad_h, h - 1)
            x = F.pad(F.pad(x, (0, rw, 0, rh), mode="reflect"), (0, pad_w - rw, 0, pad_h - rh), mode="replicate")
        weight = next(self.model.parameters(), None)
        out = self._call(self.model, x if weight is None else x.to(weight.dtype))
        return out[..., :h, :w]


def _check(desc: Any) -> None:
    """Refuse what a vlir restoration backbone cannot be: other scales, channels or inputs."""
    name = desc.architecture.id
    if not isinstance(desc, spandrel.ImageModelDescriptor):
        raise ValueError(f"spandrel architecture {name}: a {desc.purpose} model with extra inputs (e.g. a mask) "
                         "is not an image-to-image backbone")
    if desc.scale != 1:
        raise ValueError(f"spandrel architecture {name}: a x{desc.scale} super-resolution model; vlir backbones "
                         "restore at the input size (scale 1)")
    if desc.input_channels != 3 or desc.output_channels != 3:
        raise ValueError(f"spandrel architecture {name}: {desc.input_channels} input / {desc.output_channels} "
                         "output channels; vlir backbones take and give RGB (3)")
