"""The training objective of a pipeline: teacher routing, loss inputs, the weighted loss.

A :class:`~vlir.core.pipeline.Pipeline` is the model; what training asks of it lives here:

- :func:`teacher_vector`: with ``condition.teacher`` the routing vector is the one-hot of the
  batch's degradation labels, not the perceiver's guess;
- :func:`batch_condition`: the conditioning of a labelled batch as training (and validation) sees it;
- :func:`loss_inputs`: the names a loss may ask for (``Loss.inputs``): the batch's keys,
  ``restored``, ``perception``, ``pipeline`` and ``batch``;
- :func:`training_losses`: the weighted total and its logged parts;
- :class:`Objective`: one stage's loss as a module (DDP wraps it).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..conditioning import Conditioning, Perception

if TYPE_CHECKING:  # pragma: no cover
    from ..pipeline import Pipeline


def teacher_vector(pipe: "Pipeline", batch: dict[str, Any]) -> torch.Tensor | None:
    """One-hot routing vector from the batch's degradation labels (``condition.teacher``), or None."""
    c = pipe.spec.condition
    if c is None or not c.teacher or c.vector_source != "probs" or pipe.feed is None:
        return None
    if batch.get("degradation_name") is None:
        return None
    perceiver = pipe.perceivers[pipe.feed]
    names = perceiver.class_names
    missing = sorted({n for n in batch["degradation_name"] if n not in names})
    if missing:
        raise KeyError(f"condition.teacher: degradation labels {missing} are not classes of perceiver "
                       f"{pipe.feed!r} ({', '.join(names)})")
    idx = perceiver.class_labels(batch, batch["lq"].device)
    return torch.nn.functional.one_hot(idx, len(names)).to(batch["lq"].dtype)


def batch_condition(pipe: "Pipeline", batch: dict[str, Any], need_perceptions: bool = False
                    ) -> tuple[Conditioning | None, dict[str, Perception]]:
    """Conditioning of a labelled batch as training sees it: with ``condition.teacher`` the routing
    vector comes from the labels (the perceiver runs only when its tokens or ``need_perceptions``
    ask for it); otherwise from the perceivers."""
    teacher = teacher_vector(pipe, batch)
    skip = teacher is not None and not pipe.spec.condition.tokens and not need_perceptions
    perceptions = {} if skip else pipe.perceive(batch["lq"])
    cond = pipe.condition(perceptions)
    if teacher is not None:
        cond = Conditioning(tokens=None if cond is None else cond.tokens, vector=teacher)
    return cond, perceptions


def loss_inputs(pipe: "Pipeline", batch: dict[str, Any], restored: torch.Tensor | None,
                perceptions: dict[str, Perception]) -> dict[str, Any]:
    """Everything a loss may name in its ``inputs``."""
    return {**batch, "restored": restored, "perception": perceptions, "pipeline": pipe, "batch": batch}


def training_losses(pipe: "Pipeline", batch: dict[str, Any], generator: torch.Generator | None = None
                    ) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted total loss and its logged parts for one batch (``lq``, ``gt``, ...).

    Direct backbones: the restored image feeds every loss. Diffusion backbones: the process's
    training loss, plus losses that do not need a restored image.
    """
    lq = batch["lq"]
    need = any(k in loss.inputs for loss in pipe.losses.values() for k in ("perception", "pipeline", "batch"))
    cond, perceptions = batch_condition(pipe, batch, need_perceptions=need)
    logs: dict[str, float] = {}
    total = lq.new_zeros(())
    restored = None
    if pipe.process is not None:
        part = pipe.process.training_loss(pipe.backbone, lq, batch["gt"], cond, generator=generator)
        logs["process"] = float(part.detach())
        total = total + part
    else:
        restored = pipe.backbone(lq, cond)
    available = loss_inputs(pipe, batch, restored, perceptions)
    for role, loss in pipe.losses.items():
        optional = getattr(loss, "optional_inputs", ())
        missing = [k for k in loss.inputs if available.get(k) is None and k not in optional]
        if missing:
            if pipe.process is not None and missing == ["restored"]:
                continue
            raise KeyError(f"loss {role!r} needs inputs {missing} that this batch does not provide "
                           f"(batch has: {sorted(k for k, v in batch.items() if v is not None)})")
        value = loss(**{k: available.get(k) for k in loss.inputs})
        logs[role] = float(value.detach())
        total = total + pipe.loss_weights[role] * value
    logs["loss"] = float(total.detach())
    return total, logs


def validation_restore(pipe: "Pipeline", batch: dict[str, Any], steps: int | None = None,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """The restored batch as training sees it (teacher routing from the labels), clamped to [0, 1]."""
    from ..inference import run_backbone

    cond, _ = batch_condition(pipe, batch)
    return run_backbone(pipe, batch["lq"], cond, steps=steps, generator=generator).float().clamp(0, 1)


class Objective(nn.Module):
    """One stage's loss as a module (so that DDP can wrap it): ``forward(batch, generator) -> (loss, logs)``.

    ``target`` is ``restorer`` (:func:`training_losses`) or a perceiver role (its ``objective``).
    """

    def __init__(self, pipeline: "Pipeline", target: str):
        super().__init__()
        self.pipeline = pipeline
        self.target = target

    def forward(self, batch: dict[str, Any], generator: torch.Generator | None = None):
        if self.target == "restorer":
            return training_losses(self.pipeline, batch, generator)
        out = self.pipeline.perceivers[self.target].objective(batch)
        if "loss" not in out:
            raise KeyError(f"perceiver {self.target!r}: objective() returned no 'loss' entry ({sorted(out)})")
        logs = {k: float(v.detach()) for k, v in out.items()
                if isinstance(v, torch.Tensor) and v.numel() == 1}
        return out["loss"], logs
