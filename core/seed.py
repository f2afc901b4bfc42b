"""Seeds: one mixing rule for every seeded stream in vlir.

``mix(seed, step, rank)`` turns integer keys into a 63-bit seed (numpy's ``SeedSequence``, so
nearby keys give unrelated streams); ``generator(*keys)`` is a torch generator seeded that way;
``seed_everything`` seeds the global generators (the trainer does so before every step, so that
a step's randomness depends on its keys alone and resuming needs no saved random state).
"""
from __future__ import annotations

import random

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
