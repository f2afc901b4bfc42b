"""Typed ``data``, ``train`` and ``eval`` sections of a pipeline spec.

Plain pydantic models (no torch), read by the trainer (``vlir train``) and the evaluator
(``vlir eval``). Example::

    data:
      train: [data/train]            # folders of clean images (layout: synthetic)
      degradations: [{type: noise}, {type: jpeg}]
      patch_size: 128
      batch_size: 16                 # global batch, split over the processes of a torchrun
    train:
      iterations: 20000              # defaults for every stage
      lr: 2.0e-4
      ema: 0.999
      stages:
        - {name: perceiver, target: "perceiver:daclip", iterations: 2000, lr: 3.0e-5}
        - {name: restorer, target: restorer}

In a spec file, relative input paths (data and eval folders, captions, proxies) are read from the
file's folder (``vlir.core.spec.INPUT_PATHS``); ``train.out`` and ``--set`` values from the working
directory.
"""
from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


def _as_list(v: Any) -> Any:
    """Accept one path as a list of one (handy for ``--set data.train=folder``)."""
    return [v] if isinstance(v, str) else v


class DegradationSpec(Section):
    """A registered degradation (``vlir components --kind degradation``) and its params."""

    type: str
    params: dict[str, Any] = Field(default_factory=dict)


class Augment(Section):
    """Random augmentations of training crops (validation crops are never augmented)."""

    rot90: bool = Field(False, description="random quarter turns (with the flips: all 8 symmetries of the square)")
    channels: bool = Field(False, description="random order of the colour channels")
    scale: tuple[float, float] = Field(
        (1.0, 1.0), description="synthetic data: crops show a region patch/s wide shrunk to the patch, "
                                "s drawn from [lo, hi] (0 < lo <= hi <= 1); (1, 1): off")
    exposure: tuple[float, float] = Field(
        (1.0, 1.0), description="synthetic data: the clean crop is multiplied by e drawn from [lo, hi] "
                                "(0 < lo <= hi <= 1) before it is degraded, as a darker scene photographed "
                                "correctly; the target is the darkened crop too; (1, 1): off")

    @field_validator("scale", "exposure")
    @classmethod
    def _unit_range(cls, v: tuple[float, float], info: ValidationInfo) -> tuple[float, float]:
        lo, hi = v
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"{info.field_name} must be (lo, hi) with 0 < lo <= hi <= 1, got {list(v)}")
        return v


class PairSpec(Section):
    """Real LQ/GT pairs of one degradation (e.g. LOL's ``low``/``high``), mixed into training.

    Files pair by name (:func:`vlir.core.data.pairs.pair_files`: the same name, or the same once a
    leading word is dropped: ``rain-1`` / ``norain-1``); every file needs its partner.
    """

    lq: str = Field(description="folder of degraded images")
    gt: str = Field(description="folder of their clean references")
    label: str = Field(description="class word the pairs show, one of the data's class words (e.g. low-light)")
    weight: float = Field(gt=0, le=1, description="share of training samples drawn from these pairs")
    hold_out: int = Field(0, ge=0, description="the last N pairs (in name order) are not trained on: validation "
                                               "scores them (val/held/...), a split of the training pairs")


class DataSpec(Section):
    """Where training and validation images come from.

    ``layout: synthetic``: ``train``/``val`` are folders of clean images; each sample is a random
    crop degraded by one of ``degradations`` (chosen per sample). ``layout: paired``: they are
    DA-CLIP roots ``root/<degradation>/{LQ,GT}``. Validation images are degraded with a fixed seed.

    ``pairs`` mixes real pairs into training (not validation): each training sample comes from
    ``pairs[i]`` with probability ``pairs[i].weight`` and from the ``train`` folders with the rest,
    ``1 - sum(weights)`` (which must then be > 0); without ``train`` folders the pairs alone, in
    proportion to their weights. Their crops are ``patch_size`` with the flips, ``rot90`` and
    ``channels`` augmentations (``scale`` applies to synthetic crops only); their ``label`` must
    be one of the data's class words, and is the class of every pair. A stage that trains on some
    of ``degradations`` only (``train.stages[].degradations``) draws only the pairs of their classes.
    """

    train: list[str] = Field(default_factory=list, description="folders of clean images (synthetic) or paired roots")
    val: list[str] = Field(default_factory=list, description="validation folders (same layout); empty: no validation")
    layout: Literal["synthetic", "paired"] = Field(
        "synthetic", description="synthetic | paired (DA-CLIP root/<degradation>/{LQ,GT})")
    degradations: list[DegradationSpec] = Field(default_factory=list)
    pairs: list[PairSpec] = Field(default_factory=list, description="real LQ/GT pairs mixed into training: "
                                                                     "[{lq: DIR, gt: DIR, label: WORD, weight: 0.3}]")
    captions: str | None = Field(None, description="DA-CLIP caption CSV (filepath<TAB>caption: degradation)")
    patch_size: int = Field(64, ge=8, le=8192, description="square training crop")
    batch_size: int = Field(8, ge=1, le=65536, description="global batch (all processes together)")
    augment: Augment = Field(default_factory=Augment, description="augmentations of training crops (flips always)")
    num_workers: int = Field(0, ge=0, le=256, description="DataLoader worker processes per training process")
    seed: int = Field(0, description="seed of the data order, crops and degradations")
    val_size: int | None = Field(128, ge=8, le=8192, description="centre crop of validation images; null: whole images")
    val_limit: int | None = Field(16, ge=1, description="at most this many validation samples")

    _lists = field_validator("train", "val", mode="before")(_as_list)

    @field_validator("pairs")
    @classmethod
    def _weights(cls, v: list[PairSpec], info: Any) -> list[PairSpec]:
        total = sum(p.weight for p in v)
        if info.data.get("train") and total >= 1:
            raise ValueError(f"weights sum to {total:g}, leaving nothing for the train folders; keep the sum "
                             "below 1 (the train folders get 1 - sum), or drop data.train")
        return v


_TARGET = re.compile(r"^(restorer|perceiver(:[A-Za-z0-9_.\-]+)?)$")


class StageSpec(Section):
    """One training stage. Unset fields take the value of the ``train`` section.

    ``target``: ``restorer`` trains the backbone (and a process with parameters) through the
    spec's losses, the perceivers frozen except those named in ``unfreeze`` (trained jointly,
    e.g. a degradation encoder under a contrastive loss); ``perceiver:<role>`` trains that
    perceiver's trainable parameters through its own ``objective`` (``perceiver`` alone: the
    only or first perceiver).
    """

    name: str | None = Field(None, description="shown in logs; default: the target")
    target: str = Field("restorer", description="restorer | perceiver:<role>")
    unfreeze: list[str] = Field(default_factory=list,
                                description="restorer stages: perceiver roles trained together with the backbone")
    iterations: int | None = Field(None, ge=1)
    lr: float | None = Field(None, gt=0)
    lr_min: float | None = Field(None, ge=0)
    weight_decay: float | None = Field(None, ge=0)
    betas: tuple[float, float] | None = None
    warmup: int | None = Field(None, ge=0)
    grad_clip: float | None = Field(None, ge=0, description="unset: the train section's value; 0: off")
    ema: float | None = Field(None, ge=0, lt=1, description="unset: the train section's value; 0: off")
    batch_size: int | None = Field(None, ge=1, le=65536, description="global batch of this stage")
    patch_size: int | None = Field(None, ge=8, le=8192, description="training crop of this stage")
    augment: Augment | None = Field(None, description="augmentations of this stage's training crops")
    degradations: list[str] | None = Field(
        None, description="synthetic data: train on these of data.degradations only (by type), e.g. [noise]; "
                          "labels keep their class words, so routing and classification stay the same")
    pairs_weight: float | None = Field(
        None, gt=0, lt=1, description="the share of data.pairs in this stage's training samples (their weights "
                                      "scaled to sum to it; the train folders get the rest); unset: data.pairs' weights")

    @field_validator("target")
    @classmethod
    def _target(cls, v: str) -> str:
        if not _TARGET.match(v):
            raise ValueError(f"target must be 'restorer' or 'perceiver:<role>', got {v!r}")
        return v

    @model_validator(mode="after")
    def _unfreeze(self) -> "StageSpec":
        if self.unfreeze and self.target != "restorer":
            raise ValueError("unfreeze is for restorer stages (a perceiver stage trains its perceiver only)")
        return self

    @property
    def label(self) -> str:
        return self.name or self.target


class TrainSpec(Section):
    """How to train: optimiser (AdamW), cosine schedule, EMA, AMP, logging and checkpoints.

    The optimisation fields are the defaults of every stage in ``stages``; without stages there
    is one: ``{target: restorer}``. Steps are counted over all stages together.
    """

    iterations: int = Field(1000, ge=1, description="optimisation steps per stage")
    lr: float = Field(2e-4, gt=0, description="peak learning rate (AdamW)")
    lr_min: float = Field(1e-6, ge=0, description="learning rate at the end of the cosine decay")
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    warmup: int = Field(0, ge=0, description="linear warm-up steps")
    grad_clip: float | None = Field(1.0, gt=0, description="clip the global gradient norm; null: off")
    ema: float | None = Field(None, ge=0, lt=1, description="EMA decay of the trained weights, warmed up as "
                                                             "min(ema, (1 + n) / (10 + n)) after n steps; null: off")
    amp: bool | Literal["auto", "bf16", "fp16", "off"] = Field(
        "auto", description="autocast: auto (on CUDA: bf16 where supported, else fp16; off on a CPU) | bf16 "
                            "(also on a CPU with AVX512-BF16 or AMX) | fp16 (CUDA only) | off")
    channels_last: bool = Field(False, description="keep convolution weights in channels-last memory format "
                                                   "(faster convolutions on CPUs and tensor cores)")
    stages: list[StageSpec] = Field(default_factory=list)
    val_every: int = Field(500, ge=1, description="validate every N steps (and at the end)")
    save_every: int = Field(500, ge=1, description="write a checkpoint every N steps (and at the end)")
    log_every: int = Field(10, ge=1, description="log scalars every N steps")
    keep_checkpoints: int = Field(2, ge=1, description="keep the newest N checkpoints")
    images: int = Field(4, ge=0, description="validation images in the tensorboard before/after grid")
    out: str = Field("runs/vlir", description="run folder (checkpoints, logs, final pipeline)")
    seed: int = 0
    max_steps_this_run: int | None = Field(
        None, ge=1, description="stop (after a checkpoint) once this run made N steps; resume later")
    find_unused_parameters: bool | None = Field(
        None, description="DDP option; null: on when a trained module has parameters outside the loss graph")
    proxies: list[str] = Field(
        default_factory=list,
        description="saved pipeline folders whose restorations are medium-quality proxies (Perceive-IR); "
                    "the first also gives the 'medium' images of a quality perceiver stage")

    _lists = field_validator("proxies", mode="before")(_as_list)

    def resolved_stages(self) -> list[StageSpec]:
        """Every stage with every field filled from the section's defaults."""
        stages = self.stages or [StageSpec()]
        out = []
        for s in stages:
            values = s.model_dump()
            for key in ("iterations", "lr", "lr_min", "weight_decay", "betas", "warmup", "grad_clip", "ema"):
                if values[key] is None:
                    values[key] = getattr(self, key)
            out.append(StageSpec.model_validate(values))
        return out


class EvalSpec(Section):
    """How to evaluate (``vlir eval``; command-line options win)."""

    data: list[str] = Field(default_factory=list, description="clean folders (synthetic) or paired roots")
    degradations: list[DegradationSpec] = Field(
        default_factory=list, description="synthetic degradations; empty: those of the data section")
    seed: int = Field(0, description="seed of the synthetic degradations (fixed: same inputs every run)")
    crop_border: int = Field(0, ge=0)
    test_y_channel: bool = Field(False, description="headline metric on Y (both RGB and Y are always reported)")
    tile: int | None = Field(None, ge=16)
    steps: int | None = Field(None, ge=1, description="sampling steps of diffusion pipelines")
    limit: int | None = Field(None, ge=1, description="at most this many images per folder")
    crops: int = Field(4, ge=0, description="example crops per degradation in the HTML report")

    _lists = field_validator("data", mode="before")(_as_list)
