"""Inference and training precision: which autocast dtype and memory format a component runs in.

One rule for both the trainer (``train.amp``, ``train.channels_last``) and inference
(``--precision auto|fp32|bf16|fp16``, ``Pipeline.restore(..., dtype=)``):

- ``fp32`` (or ``off``/False): full precision, contiguous memory.
- ``bf16`` / ``fp16``: autocast to that dtype, with channels-last weights and inputs; fp16 needs
  CUDA (a CPU has no fast fp16 convolutions and autocast there would silently lose range).
- ``auto``: on CUDA bf16 where supported, else fp16; on a CPU bf16 only where it is fast
  (AVX512-BF16 or AMX) at inference; the trainer keeps ``auto`` at fp32 on a CPU.
  At inference ``auto`` applies only to components that declare ``bf16_safe = True``
  (Restormer, NAFNet, experts of them); others (the diffusion UNet: 37.7 dB against its fp32
  output) stay fp32. An explicit ``bf16``/``fp16`` applies to every component.

Outputs are returned as float32 by the callers (``Pipeline.restore``).
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from .errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    import argparse

    import torch

    from torch import nn

    from .conditioning import Perception

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# torch is imported by the functions (the CLI's parser reads PRECISIONS without it)


def __getattr__(name: str) -> Any:
    if name == "DTYPES":  # precision name -> autocast dtype
        import torch

        return {"bf16": torch.bfloat16, "fp16": torch.float16}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class PrecisionError(UserError, ValueError):
    """A precision that this device cannot run; the message names the option."""

    def __init__(self, option: str, reason: str):
        super().__init__(f"{option}: {reason}")
        self.option, self.reason = option, reason


@lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """Whether this CPU has bf16 matrix instructions (AVX512-BF16 or AMX), where bf16 autocast pays."""
    import torch

    checks = [getattr(torch.cpu, n, None) for n in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if all(c is not None for c in checks):
        return any(c() for c in checks)
    try:  # older torch: the kernel's CPU flags
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast_dtype(setting: Any, device: "torch.device | str", *, option: str = "--precision",
                   cpu_auto: bool = True) -> "torch.dtype | None":
    """The autocast dtype of a precision setting on ``device`` (None: full precision).

    ``setting``: ``auto``/True, ``fp32``/``off``/False, ``bf16``, ``fp16`` or a torch dtype.
    ``cpu_auto``: whether ``auto`` picks bf16 on a CPU with fast bf16 (inference) or stays fp32
    (the trainer's ``train.amp``). ``option`` names the setting in errors.
    """
    import torch

    device = torch.device(device)
    if isinstance(setting, torch.dtype):
        setting = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(setting, setting)
    if setting in (False, None, "off", "fp32"):
        return None
    if setting not in (True, "auto", "bf16", "fp16"):
        raise PrecisionError(option, f"unknown precision {setting!r}; expected one of {', '.join(PRECISIONS)}")
    if device.type == "cuda":
        if setting in (True, "auto"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if setting == "bf16" else torch.float16
    if setting == "fp16":
        raise PrecisionError(option, f"fp16 autocast needs a CUDA device, not {device.type}; use bf16 (or fp32) on a CPU")
    if device.type != "cpu":
        return None
    if setting == "bf16":
        return torch.bfloat16
    return torch.bfloat16 if cpu_auto and cpu_has_fast_bf16() else None


def add_argument(parser: "argparse.ArgumentParser") -> None:
    """``--precision`` of ``vlir restore``, ``classify``, ``eval`` and ``demo``."""
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="inference precision (default fp32, bit-exact): auto = bf16 + channels-last where "
                             "the CPU has bf16 instructions (AVX512-BF16/AMX) or on CUDA, for components declared "
                             "bf16-safe (the diffusion UNet stays fp32); bf16/fp16 for every component "
                             "(fp16 on CUDA only)")


def is_bf16_safe(module: "nn.Module") -> bool:
    """Whether a component declares that reduced precision keeps its outputs (``bf16_safe``)."""
    return bool(getattr(module, "bf16_safe", False))


@dataclass(frozen=True)
class Precision:
    """How one component runs: autocast ``dtype`` (None: fp32) and channels-last memory."""

    device_type: str = "cpu"
    dtype: "torch.dtype | None" = None
    channels_last: bool = False

    @property
    def name(self) -> str:
        import torch

        base = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]
        return base + ("+cl" if self.channels_last else "")

    def autocast(self):
        if self.dtype is None:
            return nullcontext()
        import torch

        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def prepare(self, module: "nn.Module") -> "nn.Module":
        """Put ``module``'s 4-D weights in channels-last memory when asked, else back in contiguous
        memory (a pipeline run in bf16 and then in fp32 gives the fp32 result bit for bit);
        idempotent, in place."""
        import torch

        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        if any(p.dim() == 4 and not p.is_contiguous(memory_format=fmt) for p in module.parameters()):
            module.to(memory_format=fmt)
        return module

    def input(self, x: "torch.Tensor") -> "torch.Tensor":
        if not (self.channels_last and x.dim() == 4):
            return x
        import torch

        return x.contiguous(memory_format=torch.channels_last)


FP32 = Precision()


def for_module(setting: Any, device: "torch.device | str", module: "nn.Module", *,
               option: str = "--precision") -> Precision:
    """The precision a component runs in under ``setting`` (``auto`` only for ``bf16_safe`` ones)."""
    import torch

    device = torch.device(device)
    dtype = autocast_dtype(setting, device, option=option)
    if dtype is not None and setting in (True, "auto") and not is_bf16_safe(module):
        dtype = None
    return Precision(device.type, dtype, channels_last=dtype is not None)


@dataclass(frozen=True)
class Plan:
    """The precision of each part of a pipeline: its perceivers and its backbone."""

    perceivers: Precision = FP32
    backbone: Precision = FP32

    @property
    def name(self) -> str:
        return f"backbone {self.backbone.name}, perceivers {self.perceivers.name}"


def resolve(setting: Any, device: "torch.device | str", pipeline: Any) -> Plan:
    """The :class:`Plan` of ``pipeline`` (a :class:`vlir.core.Pipeline`) under ``setting``; puts the
    weights of each component in the memory format its precision uses. ``setting`` None means fp32."""
    if setting is None:
        setting = "fp32"
    perceivers = list(pipeline.perceivers.values())
    per = [for_module(setting, device, p) for p in perceivers]
    # one setting for all perceivers: reduced only when every one of them is, and never for a pipeline
    # routed by their class probabilities (condition.vector: probs): they decide which expert runs, a
    # route flipped by rounding costs far more than a small perceiver saves (the mixed CBSD68 row of
    # benchmarks/default_model.py --precision bf16 lost 0.47 dB that way)
    from .chain import why_not_steerable  # steerable: the backbone reads the class probabilities

    routes = bool(per) and why_not_steerable(pipeline) is None
    p_prec = per[0] if per and not routes and all(p == per[0] for p in per) else FP32
    plan = Plan(perceivers=p_prec, backbone=for_module(setting, device, pipeline.backbone))
    for p in perceivers:
        plan.perceivers.prepare(p)
    plan.backbone.prepare(pipeline.backbone)
    return plan


def full(perceptions: "dict[str, Perception]") -> "dict[str, Perception]":
    """Perceptions with every floating tensor in float32 (after a reduced-precision perceiver)."""
    from dataclasses import fields, replace

    import torch

    def f32(v: Any) -> Any:
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            return v.float()
        if isinstance(v, dict):
            return {k: f32(t) for k, t in v.items()}
        return v
    return {role: replace(p, **{f.name: f32(getattr(p, f.name)) for f in fields(p)})
            for role, p in perceptions.items()}


__all__ = ["PRECISIONS", "Plan", "Precision", "PrecisionError", "add_argument", "autocast_dtype",
           "cpu_has_fast_bf16", "for_module", "full", "resolve"]
