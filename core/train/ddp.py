"""Process groups for ``torchrun``: one process per device, gloo on CPU, nccl on CUDA.

A single process (no ``WORLD_SIZE`` in the environment) needs no process group; the helpers
below then do nothing.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass
class Dist:
    """Where this process stands: ``rank`` of ``world`` processes, its ``device``."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # this module created the process group (and destroys it)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def pick_device(name: str | None, local_rank: int = 0) -> torch.device:
    """``--device`` resolved (:func:`vlir.core.cli.resolve_device`), made torch's current CUDA device."""
    from ..cli import resolve_device

    device = resolve_device(name, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def setup(device: str | None = None) -> Dist:
    """Join the ``torchrun`` process group described by RANK / WORLD_SIZE / LOCAL_RANK, if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    if world <= 1:
        return Dist(0, 1, 0, dev)
    owns = False
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kw: dict[str, Any] = {"backend": backend}
        if dev.type == "cuda":
            kw["device_id"] = dev
        try:
            dist.init_process_group(**kw)
        except TypeError:  # older torch without device_id
            kw.pop("device_id", None)
            dist.init_process_group(**kw)
        owns = True
    return Dist(dist.get_rank(), dist.get_world_size(), local_rank, dev, owns)


def teardown(d: Dist) -> None:
    if d.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(d: Dist) -> None:
    if d.distributed:
        if d.device.type == "cuda":
            dist.barrier(device_ids=[d.device.index])
        else:
            dist.barrier()


def mean_dict(d: Dist, values: dict[str, float]) -> dict[str, float]:
    """Average scalar logs over the processes (every process must call it with the same keys)."""
    if not d.distributed or not values:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=d.device)
    dist.all_reduce(t)
    t /= d.world
    return {k: float(v) for k, v in zip(keys, t.tolist())}


def any_true(d: Dist, flag: bool) -> bool:
    """True if ``flag`` is true on any process."""
    if not d.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=d.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def broadcast_float(d: Dist, value: float | None) -> float | None:
    """Rank 0's value on every process (None stays None everywhere if rank 0 has None)."""
    if not d.distributed:
        return value
    t = torch.tensor([float("nan") if value is None else float(value), 0.0 if value is None else 1.0],
                     dtype=torch.float64, device=d.device)
    dist.broadcast(t, src=0)
    return float(t[0]) if t[1] > 0 else None
