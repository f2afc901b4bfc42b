"""Seeds and random states: one mixing rule for every seeded stream in vlir.

``mix(seed, step, rank)`` turns integer keys into a 63-bit seed (numpy's ``SeedSequence``, so
nearby keys give unrelated streams); ``generator(*keys)`` is a torch generator seeded that way.
``rng_state``/``set_rng_state`` save and restore the global generators (torch CPU and CUDA,
numpy, Python ``random``) as tensors and plain lists, so that they fit a ``weights_only``
checkpoint.
"""
from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def mix(*keys: int) -> int:
    """A 63-bit seed from integer keys (seed, step, rank, index, ...); keys are taken modulo 2**64."""
    state = np.random.SeedSequence([int(k) % (1 << 64) for k in keys]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


def generator(*keys: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A torch generator on ``device`` seeded with :func:`mix` of ``keys``."""
    return torch.Generator(device=device).manual_seed(mix(*keys))


def seed_everything(seed: int) -> None:
    """Seed the global generators: Python ``random``, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """torch (CPU and CUDA), numpy and Python ``random`` states as tensors and lists."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": int(version), "internal": list(internal),
                   "gauss_next": None if gauss_next is None else float(gauss_next)},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"].cpu().to(torch.uint8))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), int(n["pos"]), int(n["has_gauss"]),
                         float(n["cached"])))
    p = state["python"]
    random.setstate((int(p["version"]), tuple(int(x) for x in p["internal"]), p["gauss_next"]))
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available():
        for i, s in enumerate(cuda[:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s.cpu().to(torch.uint8), i)
