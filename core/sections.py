"""Typed ``data``, ``train`` and ``eval`` sections of a pipeline spec.

They are plain pydantic models (no torch), owned by the trainer and evaluator.
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class DegradationSpec(Section):
    type: str
    params: dict[str, Any] = Field(default_factory=dict)


class DataSpec(Section):
    """Where training images come from."""

    train: list[str] = Field(default_factory=list, description="folders of clean images (synthetic) or paired roots")
    val: list[str] = Field(default_factory=list)
    layout: str = Field("synthetic", description="synthetic | paired (DA-CLIP root/<degradation>/{LQ,GT})")
    degradations: list[DegradationSpec] = Field(default_factory=list)
    captions: str | None = Field(None, description="DA-CLIP caption CSV (filepath<TAB>caption: degradation)")
    patch_size: int = 64
    batch_size: int = 8
    num_workers: int = 0
    seed: int = 0


class TrainSpec(Section):
    """How to train (filled in by the trainer)."""

    iterations: int = 1000
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup: int = 0
    grad_clip: float | None = 1.0
    ema: float | None = None
    amp: bool = True
    val_every: int = 500
    save_every: int = 500
    log_every: int = 10
    out: str = "runs/vlir"
    seed: int = 0


class EvalSpec(Section):
    """How to evaluate."""

    crop_border: int = 0
    test_y_channel: bool = False
    tile: int | None = None
    steps: int | None = None
