"""Exponential moving average of trained weights."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch


class EMA:
    """``shadow = decay * shadow + (1 - decay) * param`` after every optimiser step.

    ``params`` are ``(name, parameter)`` pairs; the shadow starts as a copy of them.
    ``swapped()`` puts the averaged weights into the model for a while (validation, saving);
    ``copy_to()`` puts them there for good (end of a stage).
    """

    def __init__(self, params: list[tuple[str, torch.nn.Parameter]], decay: float):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.names = [n for n, _ in params]
        self.params = [p for _, p in params]
        self.shadow = [p.detach().clone() for p in self.params]
        self.updates = 0

    @torch.no_grad()
    def update(self) -> None:
        weight = 1.0 - self.decay
        live = [p.detach() for p in self.params]
        if hasattr(torch, "_foreach_lerp_"):
            torch._foreach_lerp_(self.shadow, live, weight)
        else:  # pragma: no cover
            for s, p in zip(self.shadow, live):
                s.lerp_(p, weight)
        self.updates += 1

    @torch.no_grad()
    def copy_to(self) -> None:
        for s, p in zip(self.shadow, self.params):
            p.copy_(s)

    @contextlib.contextmanager
    def swapped(self) -> Iterator[None]:
        """The averaged weights in the model inside the ``with`` block, the live ones after."""
        with torch.no_grad():
            live = [p.detach().clone() for p in self.params]
            for s, p in zip(self.shadow, self.params):
                p.copy_(s)
        try:
            yield
        finally:
            with torch.no_grad():
                for v, p in zip(live, self.params):
                    p.copy_(v)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates,
                "shadow": {n: s.detach().cpu().clone() for n, s in zip(self.names, self.shadow)}}

    def load_state_dict(self, state: dict) -> None:
        shadow = state["shadow"]
        missing = [n for n in self.names if n not in shadow]
        if missing:
            raise KeyError(f"EMA state lacks {len(missing)} weights, e.g. {missing[:3]}")
        with torch.no_grad():
            for n, s in zip(self.names, self.shadow):
                if tuple(shadow[n].shape) != tuple(s.shape):
                    raise ValueError(f"EMA weight {n}: shape {tuple(shadow[n].shape)} vs {tuple(s.shape)}")
                s.copy_(shadow[n])
        self.updates = int(state.get("updates", 0))
