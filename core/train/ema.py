"""Exponential moving average of trained weights."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch


class EMA:
    """``shadow = d * shadow + (1 - d) * param`` after every optimiser step.

    ``params`` are ``(name, parameter)`` pairs; the shadow starts as a copy of them. With
    ``warmup`` (the default) the decay after ``n`` updates is ``d = min(decay, (1 + n) / (10 + n))``
    (as TensorFlow's ExponentialMovingAverage with num_updates), so a run from scratch does not
    keep a share of its random initial weights: with a plain 0.999, 8% of them would still be in
    the average after 2500 steps.
    ``swapped()`` puts the averaged weights into the model for a while (validation, saving);
    ``copy_to()`` puts them there for good (end of a stage).
    """

    def __init__(self, params: list[tuple[str, torch.nn.Parameter]], decay: float, warmup: bool = True):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.warmup = warmup
        self.names = [n for n, _ in params]
        self.params = [p for _, p in params]
        self.shadow = [p.detach().clone() for p in self.params]
        self.updates = 0

    def current_decay(self) -> float:
        """The decay of the next update."""
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        weight = 1.0 - self.current_decay()
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
