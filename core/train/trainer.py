"""The spec-driven trainer: stages, AdamW + cosine schedule, AMP, EMA, DDP, checkpoints, resume.

A run folder holds ``run.yaml`` (the resolved spec), ``checkpoints/step_*.pt``, ``log.jsonl``,
``tb/`` (tensorboard) and, at the end, ``pipeline/`` (``Pipeline.load`` and the CLI read it).

Resuming restores weights, optimiser, schedule, EMA and the data position; every step seeds its
own random streams from (``train.seed``, step, rank) and the data stream is a function of its
position, so a run that was stopped and resumed ends with the same weights as one that was not,
whatever ran in between. Resuming refuses a changed spec (unless asked to continue with it) and
weights that do not fit; see :mod:`vlir.core.train.resume`. Several processes (``torchrun``)
split each global batch; only rank 0 writes files.
"""
from __future__ import annotations

import gc
import inspect
import json
import logging
import math
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from ..io import CheckpointError, atomic_write_text, remove_stale_temp
from ..pipeline import Pipeline
from ..sections import DataSpec, StageSpec, TrainSpec
from ..seed import generator, mix, seed_everything
from ..spec import PipelineSpec, SpecError
from . import checkpoint as ckpt
from . import ddp
from .console import Console
from .data import StepBatches, build_dataset, check_folders, data_words, held_pairs, loader, to_device
from .ema import EMA
from .objective import Objective, validation_restore
from .resume import spec_changes, truncate_log, weight_mismatches
from .stop import StopSignals

log = logging.getLogger("vlir.train")
RUN_SPEC = "run.yaml"  # the resolved spec of a run (not named spec.yaml: a run folder is no pipeline folder)
LOG = "log.jsonl"
_GLOBAL = 0x6C0B  # key of the global generators' seed of a step (the step's own generator has none)


def lr_factor(step: int, iterations: int, warmup: int, floor: float) -> float:
    """Linear warm-up to 1, then cosine decay to ``floor`` (a fraction of the peak) at ``iterations``."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    span = max(1, iterations - warmup)
    t = min(1.0, (step - warmup) / span)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t))


def amp_dtype(setting: Any, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a ``train.amp`` setting (None: full precision); the rule is
    :func:`vlir.core.precision.autocast_dtype` (``auto`` stays fp32 on a CPU when training)."""
    from ..precision import PrecisionError, autocast_dtype

    try:
        return autocast_dtype(setting, device, option="train.amp", cpu_auto=False)
    except PrecisionError as e:
        raise SpecError([(e.option, e.reason)]) from None


@dataclass
class StageRun:
    """What one stage trains with: built by ``_start_stage``, stepped by ``_train``."""

    stage: StageSpec
    params: list[tuple[str, nn.Parameter]]
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    scaler: Any  # torch.amp.GradScaler with fp16 autocast, else None
    ema: EMA | None
    objective: Objective
    model: nn.Module  # the objective, DDP-wrapped when distributed
    batches: Iterator[dict[str, Any]]
    batch_size: int
    epoch_len: int
    first: dict[str, Any] | None = None  # a batch drawn before the first step (DDP's unused-parameter probe)
    sums: dict[str, float] = field(default_factory=dict)  # logs since the last log row
    count: int = 0
    t0: float = field(default_factory=time.perf_counter)
    epoch_sums: dict[str, float] = field(default_factory=dict)
    epoch_steps: int = 0

    @property
    def iterations(self) -> int:
        return self.stage.iterations


class Trainer:
    """Train the pipeline of a resolved spec (see :mod:`vlir.core.sections` for the options).

    ``resume``: a run folder or checkpoint file to continue from; ``allow_spec_change``: continue
    although ``spec`` differs from the checkpoint's. ``progress``: ``auto`` (a bar on a terminal,
    plain lines otherwise), ``bar``, ``lines``, or ``off``/False.
    """

    def __init__(self, spec: PipelineSpec, out: str | Path, *, device: str | None = None,
                 resume: str | Path | None = None, registry: Any = None, progress: bool | str = True,
                 allow_spec_change: bool = False):
        if spec.data is None or not spec.data.train:
            raise SpecError([("data.train", "training needs data: folders of clean images (layout: synthetic) "
                                            "or DA-CLIP roots (layout: paired)")])
        self.spec = spec
        self.data: DataSpec = spec.data
        self.cfg: TrainSpec = spec.train or TrainSpec()
        self.stages: list[StageSpec] = self.cfg.resolved_stages()
        self.out = Path(out)
        check_folders(self.data.train, "data.train")
        check_folders(self.data.val, "data.val")
        self.dist = ddp.setup(device)
        self.device = self.dist.device
        self.console = Console(progress if self.dist.main else "off")
        try:
            self.amp = amp_dtype(self.cfg.amp, self.device)
            seed_everything(self.cfg.seed)
            self.pipeline = Pipeline(spec, registry).to(self.device)
            if self.cfg.channels_last:  # 4-D weights only; saved files are written contiguous (io.save_safetensors)
                self.pipeline.to(memory_format=torch.channels_last)
            self.registry = self.pipeline.registry
            self._check_stages()
            self.trainable = {n: p.requires_grad for n, p in self.pipeline.named_parameters()}
            self.proxies = [self._load_proxy(p) for p in self.cfg.proxies]
            self.step = 0  # optimisation steps done, all stages together
            self.stage_index = 0
            self.stage_step = 0
            self.steps_this_run = 0
            self.resumed_from: Path | None = None
            self.spec_changes: list[tuple[str, str, str]] = []  # accepted with allow_spec_change
            self._resume: dict[str, Any] | None = None
            if resume is not None:
                self._load(resume, allow_spec_change)
            self.val_data = None
            if self.data.val:
                self.val_data = build_dataset(self.data, "val", self.data.val_size, self.data.val_limit,
                                              registry=self.registry)
            # training pairs held out (data.pairs[].hold_out): scored as val/held/..., never fitted on
            self.held_data = held_pairs(self.data, data_words(self.data, self.val_data, self.registry),
                                        self.data.val_size) if any(p.hold_out for p in self.data.pairs) else None
            self.writer = None
            self.stage: StageSpec | None = None  # the stage being trained
            self.ema: EMA | None = None  # its EMA, if on
            self.last_val: dict[str, float] = {}  # the latest validation values (rank 0)
            self.signals = StopSignals()
        except BaseException:
            ddp.teardown(self.dist)
            raise

    @property
    def stop_signal(self) -> str | None:
        """``SIGINT`` or ``SIGTERM`` when one stopped the run."""
        return self.signals.received

    # -- set-up ------------------------------------------------------------------------------
    def _target_module(self, target: str) -> str:
        """``restorer`` or the perceiver role of a stage target."""
        if target == "restorer":
            return "restorer"
        roles = list(self.pipeline.perceivers)
        role = target.partition(":")[2]
        if not role:
            if not roles:
                raise KeyError("no perceivers")
            return roles[0]
        if role not in roles:
            raise KeyError(role)
        return role

    def _check_stages(self) -> None:
        """The spec's wiring (:func:`vlir.core.validate.check_wiring`: stage targets, unfreeze roles,
        stage degradations, ...), then what only the built pipeline shows."""
        from ..validate import check_wiring

        errors = check_wiring(self.spec, self.registry)
        for i, s in enumerate(self.stages):
            path = f"train.stages[{i}].target" if self.cfg.stages else "train"
            try:
                t = self._target_module(s.target)
            except KeyError:
                continue  # named by check_wiring
            if t == "restorer" and self.pipeline.process is None and not self.pipeline.losses:
                errors.append(("losses", "a restorer stage needs at least one loss, e.g. losses: [{type: l1}]"))
            if t != "restorer" and not any(p.requires_grad for p in self.pipeline.perceivers[t].parameters()):
                errors.append((path, f"perceiver {t!r} has no trainable parameters"))
        if errors:
            raise SpecError(list(dict.fromkeys(errors)))

    def _stage_data(self, stage: StageSpec) -> DataSpec:
        """The data section as a stage sees it (``degradations``: a subset of the synthetic ones; ``augment``;
        ``pairs_weight``: the pairs' weights scaled to sum to it)."""
        update: dict[str, Any] = {}
        if stage.degradations is not None:
            update["degradations"] = [d for d in self.data.degradations if d.type in stage.degradations]
        if stage.augment is not None:
            update["augment"] = stage.augment
        if stage.pairs_weight is not None and self.data.pairs:
            total = sum(p.weight for p in self.data.pairs)
            update["pairs"] = [p.model_copy(update={"weight": p.weight * stage.pairs_weight / total})
                               for p in self.data.pairs]
        return self.data.model_copy(update=update) if update else self.data

    def _load_proxy(self, path: str) -> Pipeline:
        p = Pipeline.load(Path(path).expanduser(), self.registry).to(self.device).eval()
        return p.requires_grad_(False)

    def _components(self) -> dict[str, nn.Module]:
        return dict(self.pipeline.named_components())

    def _stage_components(self, stage: StageSpec) -> list[str]:
        t = self._target_module(stage.target)
        if t == "restorer":
            return (["backbone"] + (["process"] if self.pipeline.process is not None else [])
                    + [f"perceiver.{r}" for r in stage.unfreeze])
        return [f"perceiver.{t}"]

    def _trained_components(self) -> set[str]:
        """Components trained by the stages up to the current one (their weights go in checkpoints)."""
        out: set[str] = set()
        for s in self.stages[:self.stage_index + 1]:
            out.update(self._stage_components(s))
        return out

    def _prepare(self, stage: StageSpec) -> list[tuple[str, nn.Parameter]]:
        """Freeze all but the stage's target; set train/eval modes; return the trained parameters."""
        names = self._stage_components(stage)
        comps = self._components()
        self.pipeline.eval()
        for p in self.pipeline.parameters():
            p.requires_grad_(False)
        params: list[tuple[str, nn.Parameter]] = []
        for name in names:
            module = comps[name]
            module.train()
            for n, p in module.named_parameters():
                full = f"{self._prefix(name)}.{n}"
                if self.trainable.get(full, False):
                    p.requires_grad_(True)
                    params.append((f"{name}.{n}", p))
        if not params:
            raise SpecError([("train.stages", f"stage {stage.label!r} has nothing to train")])
        return params

    @staticmethod
    def _prefix(component: str) -> str:
        """Attribute path of a component inside the pipeline module."""
        if component.startswith("perceiver."):
            return "perceivers." + component.split(".", 1)[1]
        if component.startswith("loss."):
            return "losses." + component.split(".", 1)[1]
        return component

    # -- checkpoints -------------------------------------------------------------------------
    def _saved_parameters(self) -> dict[str, set[str]]:
        """Per component, the parameter keys checkpoints hold now (trainable ones of trained components)."""
        trained = self._trained_components()
        out: dict[str, set[str]] = {}
        for name, module in self.pipeline.named_components():
            prefix = self._prefix(name)
            out[name] = {k for k, _ in module.named_parameters()
                         if name in trained and self.trainable.get(f"{prefix}.{k}", False)}
        return out

    def _component_state(self) -> dict[str, dict[str, torch.Tensor]]:
        """Trained parameters of the trained components and every component's buffers."""
        saved = self._saved_parameters()
        out: dict[str, dict[str, torch.Tensor]] = {}
        for name, module in self.pipeline.named_components():
            params = dict(module.named_parameters())
            keep = {k: v for k, v in module.state_dict().items() if k not in params or k in saved[name]}
            if keep:
                out[name] = keep
        return out

    def _load(self, resume: str | Path, allow_spec_change: bool) -> None:
        """Read the checkpoint to resume from and put its weights and counters in place; the stage's
        optimiser, schedule and EMA states wait in ``_resume`` for :meth:`_start_stage`."""
        path, state = ckpt.load_newest(resume)
        changes = spec_changes(state["spec"], self.spec.to_yaml()) if state.get("spec") else []
        if changes and not allow_spec_change:
            raise SpecError([(p, f"{old} in the checkpoint's spec, {new} now") for p, old, new in changes],
                            source=f"resume from {path}: the spec differs from the checkpoint's (undo the "
                                   "changes, or pass --allow-spec-change to continue with the new values)")
        n = len(self.stages)
        if int(state["stage"]) > n:
            raise SpecError([("train.stages", f"checkpoint {path} is at stage {state['stage']} but the spec "
                                              f"has {n} stage(s)")])
        self.step = int(state["step"])
        self.stage_index = int(state["stage"])
        self.stage_step = int(state["stage_step"])
        comps = self._components()
        wrong = weight_mismatches(state["components"], {k: m.state_dict() for k, m in comps.items()},
                                  self._saved_parameters())
        if wrong:
            more = [f"... and {len(wrong) - 10} more"] if len(wrong) > 10 else []
            raise CheckpointError(f"{path}: {len(wrong)} tensor(s) do not fit the modules this spec builds "
                                  "(a changed architecture?):\n  " + "\n  ".join(wrong[:10] + more))
        for name, sd in state["components"].items():
            comps[name].load_state_dict(sd, strict=False)  # keys and shapes checked above
        self.resumed_from = path
        self.spec_changes = changes
        self._resume = state
        if self.dist.main:
            log.info("resuming from %s (step %d, stage %d, stage step %d)", path, self.step,
                     self.stage_index + 1, self.stage_step)
            for p, old, new in changes:
                log.warning("resuming with a changed spec: %s: %s -> %s", p, old, new)

    def _save(self, run: StageRun, mid_stage: bool) -> Path | None:
        if not self.dist.main:
            ddp.barrier(self.dist)
            return None
        state = {
            "step": self.step, "stage": self.stage_index, "stage_step": self.stage_step,
            "stage_name": run.stage.label,
            "world": self.dist.world,
            "components": self._component_state(),
            "optimizer": run.opt.state_dict() if mid_stage else None,
            "scheduler": run.sched.state_dict() if mid_stage else None,
            "scaler": run.scaler.state_dict() if (mid_stage and run.scaler is not None) else None,
            "ema": run.ema.state_dict() if (mid_stage and run.ema is not None) else None,
            "data": {"stage": self.stage_index, "position": self.stage_step * run.batch_size,
                     "batch": run.batch_size, "seed": self.data.seed},
            "spec": self.spec.to_yaml(),
        }
        path = ckpt.save(state, self.out / "checkpoints", self.step, keep=self.cfg.keep_checkpoints)
        ddp.barrier(self.dist)
        return path

    # -- logging -----------------------------------------------------------------------------
    def _open_logs(self) -> None:
        """Clean the run folder for this start and open the logs: temporary files of interrupted
        writes go, ``log.jsonl`` loses the rows after the step the run starts from, tensorboard
        purges its events after it, and ``run.yaml`` is the spec the run goes on with."""
        if not self.dist.main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        for folder in (self.out, self.out / "checkpoints", self.out / "pipeline"):
            for p in remove_stale_temp(folder, owner=True):
                log.info("removed %s, left by an interrupted write", p)
        truncate_log(self.out / LOG, self.step)
        atomic_write_text(self.out / RUN_SPEC, self.spec.to_yaml())
        if self.spec_changes:
            self._log("spec_change", {}, extra={"from": str(self.resumed_from), "changes": [
                {"path": p, "was": old, "now": new} for p, old, new in self.spec_changes]})
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.out / "tb"), purge_step=self.step + 1 if self.step else None)
        except Exception as e:  # noqa: BLE001 - logs are optional; training goes on
            log.warning("tensorboard logging is off (%s: %s)", type(e).__name__, e)
            self.writer = None

    def _log(self, kind: str, values: dict[str, float], images: torch.Tensor | None = None,
             extra: dict[str, Any] | None = None) -> None:
        if not self.dist.main:
            return
        row = {"kind": kind, "step": self.step, "stage": self.stage.label if self.stage else None,
               "time": round(time.time(), 3), **{k: round(float(v), 6) for k, v in values.items()}, **(extra or {})}
        with open(self.out / LOG, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        if self.writer is not None:
            for k, v in values.items():
                if math.isfinite(float(v)):
                    self.writer.add_scalar(f"{kind}/{k}", float(v), self.step)
            if images is not None:
                self.writer.add_image(f"{kind}/lq_restored_gt", images, self.step)
            self.writer.flush()

    # -- one stage: start, (resume), steps, end ----------------------------------------------
    def _batch(self, stage: StageSpec) -> int:
        return stage.batch_size or self.data.batch_size

    def _add_proxies(self, batch: dict[str, Any]) -> dict[str, Any]:
        lq = batch["lq"]
        if self.proxies:
            with torch.no_grad():
                outs = [p.restore(lq)[0] for p in self.proxies]
            batch["proxies"] = outs
            batch["proxy_masks"] = lq.new_ones(lq.shape[0], len(outs))
            batch.setdefault("medium", outs[0])
        else:
            batch["proxies"] = []
            batch["proxy_masks"] = lq.new_zeros(lq.shape[0], 0)
        return batch

    def _next_batch(self, run: StageRun) -> dict[str, Any]:
        return self._add_proxies(to_device(next(run.batches), self.device))

    def _autocast(self):
        if self.amp is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp)

    def _seed_step(self) -> torch.Generator:
        """The random streams of the next step, functions of (``train.seed``, step, rank) alone: the
        global generators (dropout, plugins) are seeded, and the step's own generator returned."""
        seed_everything(mix(self.cfg.seed, self.step, self.dist.rank, _GLOBAL))
        return generator(self.cfg.seed, self.step, self.dist.rank, device=self.device)

    def _start_stage(self) -> StageRun:
        """Optimiser, schedule, scaler, EMA, data stream and objective of the current stage; with
        a checkpoint of this stage, their states and the data position are the checkpoint's."""
        stage = self.stage = self.stages[self.stage_index]
        params = self._prepare(stage)
        opt = torch.optim.AdamW([p for _, p in params], lr=stage.lr, betas=tuple(stage.betas),
                                weight_decay=stage.weight_decay)
        n_iter, warmup, floor = stage.iterations, stage.warmup, stage.lr_min / stage.lr

        def schedule(s: int) -> float:
            return lr_factor(s, n_iter, warmup, floor)

        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        scaler = torch.amp.GradScaler("cuda") if self.amp == torch.float16 else None
        ema = self.ema = EMA(params, stage.ema) if stage.ema else None
        self._restore_states(stage, opt, sched, scaler, ema)
        batch_size = self._batch(stage)
        dataset = build_dataset(self._stage_data(stage), "train", stage.patch_size or self.data.patch_size,
                                registry=self.registry)
        sampler = StepBatches(self.stage_step, n_iter, batch_size, self.dist.rank, self.dist.world)
        batches = iter(loader(dataset, sampler, self.data.num_workers, self.device.type == "cuda",
                              seed=mix(self.data.seed, self.stage_index)))
        objective = Objective(self.pipeline, self._target_module(stage.target))
        run = StageRun(stage, params, opt, sched, scaler, ema, objective, objective, batches, batch_size, len(dataset))
        if self.dist.distributed:
            run.model = self._wrap_ddp(run)
        return run

    def _restore_states(self, stage: StageSpec, opt, sched, scaler, ema: EMA | None) -> None:
        """Optimiser, schedule, scaler and EMA states from the checkpoint being resumed, when it is one
        written inside this stage (one written at a stage's end starts the next stage afresh)."""
        state, self._resume = self._resume, None
        if state is None or int(state["stage"]) != self.stage_index or self.stage_step == 0:
            return
        if state["optimizer"] is None:
            raise SpecError([("", f"checkpoint {self.resumed_from} has no optimiser state for stage "
                                  f"{stage.label!r}")])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        if ema is not None:
            if state.get("ema") is None:
                raise SpecError([("train.ema", f"checkpoint {self.resumed_from} has no EMA state; the run "
                                               "was started without EMA")])
            ema.load_state_dict(state["ema"])

    def _wrap_ddp(self, run: StageRun) -> nn.Module:
        from torch.nn.parallel import DistributedDataParallel as DDP

        unused = self.cfg.find_unused_parameters
        if unused is None and self.stage_step < run.iterations:
            run.first = self._next_batch(run)
            unused = ddp.any_true(self.dist, self._unused_parameters(run.objective, run.params, run.first))
        kw: dict[str, Any] = {"device_ids": [self.device.index] if self.device.type == "cuda" else None,
                              "find_unused_parameters": bool(unused)}
        if "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters:
            kw["forward_sync_buffers"] = False  # buffers are equal everywhere; no sync per step
        else:
            kw["broadcast_buffers"] = False
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            model = DDP(run.objective, **kw)
        # DDP notes that depthwise-convolution gradients have other strides than its buckets: harmless
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        return model

    def _unused_parameters(self, objective: Objective, params, batch) -> bool:
        """Whether some trained parameter gets no gradient (one trial step; buffers and gradients put back)."""
        buffers = [(b, b.detach().clone()) for b in objective.buffers()]
        with self._autocast():
            loss, _ = objective(batch, generator(self.cfg.seed, 0xD1CE, device=self.device))
        loss.float().backward()
        unused = [n for n, p in params if p.grad is None]
        for _, p in params:
            p.grad = None
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
        if unused and self.dist.main:
            log.info("DDP: %d trained parameters get no gradient (e.g. %s): find_unused_parameters on",
                     len(unused), unused[0])
        return bool(unused)

    def _step(self, run: StageRun) -> dict[str, float]:
        """One optimisation step; the counters move last. Returns the step's logs."""
        gen = self._seed_step()
        batch, run.first = (run.first if run.first is not None else self._next_batch(run)), None
        with self._autocast():
            loss, logs = run.model(batch, gen)
        if not torch.isfinite(loss.detach()):
            raise FloatingPointError(f"loss is {float(loss)} at step {self.step + 1} "
                                     f"(stage {run.stage.label!r}); logs: {logs}")
        run.opt.zero_grad(set_to_none=True)
        if run.scaler is not None:
            run.scaler.scale(loss).backward()
            run.scaler.unscale_(run.opt)
        else:
            loss.backward()
        if run.stage.grad_clip:
            logs["grad_norm"] = float(torch.nn.utils.clip_grad_norm_([p for _, p in run.params], run.stage.grad_clip))
        if run.scaler is not None:
            run.scaler.step(run.opt)
            run.scaler.update()
        else:
            run.opt.step()
        logs["lr"] = run.opt.param_groups[0]["lr"]
        run.sched.step()
        if run.ema is not None:
            run.ema.update()
        self.step += 1
        self.stage_step += 1
        self.steps_this_run += 1
        return logs

    def _after_step(self, run: StageRun, logs: dict[str, float]) -> None:
        """Hooks, log rows, epoch ends and validation of the step just made."""
        self.console.step(logs)
        self.registry.pm.hook.vlir_train_step_end(trainer=self, step=self.step, logs=logs)
        run.count += 1
        run.epoch_steps += 1
        for k, v in logs.items():
            run.sums[k] = run.sums.get(k, 0.0) + float(v)
            run.epoch_sums[k] = run.epoch_sums.get(k, 0.0) + float(v)
        done = self.stage_step >= run.iterations
        if self.step % self.cfg.log_every == 0 or done:
            mean = ddp.mean_dict(self.dist, {k: v / run.count for k, v in run.sums.items()})
            elapsed = time.perf_counter() - run.t0
            mean["steps_per_s"] = run.count / elapsed if elapsed > 0 else float("nan")
            self._log("train", mean)
            self.console.train(self.step, self.stage_step, run.iterations, mean)
            run.sums, run.count, run.t0 = {}, 0, time.perf_counter()
        before, after = (self.stage_step - 1) * run.batch_size, self.stage_step * run.batch_size
        for e in range(before // run.epoch_len, after // run.epoch_len):
            mean = {k: v / max(1, run.epoch_steps) for k, v in run.epoch_sums.items()}
            self.registry.pm.hook.vlir_train_epoch_end(trainer=self, epoch=e, logs=mean)
            run.epoch_sums, run.epoch_steps = {}, 0
        if self.step % self.cfg.val_every == 0 or done:
            self._validate(run.stage, run.ema)

    def _must_stop(self) -> bool:
        """``max_steps_this_run`` reached, or a stop signal on any process (all processes call this)."""
        budget = self.cfg.max_steps_this_run is not None and self.steps_this_run >= self.cfg.max_steps_this_run
        return ddp.any_true(self.dist, self.signals.received is not None) or budget

    def _train(self, run: StageRun) -> bool:
        """Steps to the stage's end (True), or until the run must stop (False; a checkpoint is written)."""
        while self.stage_step < run.iterations:
            logs = self._step(run)
            self._after_step(run, logs)
            if self.stage_step >= run.iterations:
                break
            if self._must_stop():
                self._save(run, mid_stage=True)
                return False
            if self.step % self.cfg.save_every == 0:
                self._save(run, mid_stage=True)
        return True

    def _end_stage(self, run: StageRun) -> None:
        """The averaged weights become the weights; a checkpoint marks the next stage's start."""
        if run.ema is not None:
            run.ema.copy_to()
        self._calibrate(run.stage)
        self.stage_index += 1
        self.stage_step = 0
        self._save(run, mid_stage=False)
        self.ema = None

    @torch.no_grad()
    def _calibrate(self, stage: StageSpec) -> None:
        """End of a ``perceiver:<role>`` stage: a multi-label perceiver's presence calibration is fitted
        on the validation data (``data.val``: held-out, never a test set) and saved with its weights.
        Every process fits the same values from the same data."""
        role = self._target_module(stage.target)
        if role == "restorer" or self.val_data is None or not self.pipeline.perceivers[role].multilabel:
            return
        fitted = self.pipeline.perceivers[role].calibrate(to_device(b, self.device) for b in self._val_loader())
        names = self.pipeline.perceivers[role].class_names
        if self.dist.main:
            log.info("calibrated the presence of perceiver %r on data.val: %s", role, ", ".join(
                f"{n} T={t:.3g} b={b:+.3g}" for n, t, b in zip(names, fitted["temperature"], fitted["offset"])))
        self._log("calibration", {f"{key}/{n}": v for key in ("temperature", "offset")
                                  for n, v in zip(names, fitted[key])}, extra={"perceiver": role})

    def _run_stage(self) -> bool:
        """Train the current stage from ``stage_step``; True when the run must stop here."""
        run = self._start_stage()
        n = len(self.stages)
        self.console.start_stage(f"stage {self.stage_index + 1}/{n} {run.stage.label}", run.iterations,
                                 self.stage_step)
        try:
            finished = self._train(run)
        finally:
            self.console.end_stage()
        if finished:
            self._end_stage(run)
        del run
        gc.collect()
        return not finished or self._must_stop()

    # -- validation --------------------------------------------------------------------------
    @torch.no_grad()
    def _validate(self, stage: StageSpec, ema: EMA | None) -> dict[str, float]:
        values: dict[str, float] = {}
        images = None
        if self.dist.main and (self.val_data is not None or self.held_data is not None):
            with ema.swapped() if ema is not None else nullcontext():
                modes = {m: m.training for m in self.pipeline.modules()}
                self.pipeline.eval()
                try:
                    if self.val_data is not None:
                        values, images = self._val_pass(stage, self.val_data)
                    if self.held_data is not None:
                        held, more = self._val_pass(stage, self.held_data)
                        values.update({f"held/{k}": v for k, v in held.items()})
                        images = more if images is None else images
                finally:
                    for m, mode in modes.items():
                        m.training = mode
            self._log("val", values, images)
            self.console.validation(self.step, values)
        psnr = ddp.broadcast_float(self.dist, values.get("psnr") if self.dist.main else None)
        if psnr is not None and stage.target == "restorer":
            for loss in self.pipeline.losses.values():
                if hasattr(loss, "update_probe"):
                    loss.update_probe(psnr)
        self.last_val = values
        return values

    def _val_loader(self, dataset: Any = None) -> Any:
        """Validation data (default ``data.val``'s) in batches (up to 8 images of equal size; one
        image otherwise)."""
        from torch.utils.data import DataLoader

        from .data import collate

        dataset = self.val_data if dataset is None else dataset
        assert dataset is not None
        bs = min(8, self.data.batch_size) if self.data.val_size else 1
        return DataLoader(dataset, batch_size=bs, shuffle=False, num_workers=0, collate_fn=collate)

    def _val_pass(self, stage: StageSpec, dataset: Any) -> tuple[dict[str, float], torch.Tensor | None]:
        from ..metrics import validation_values

        dl = self._val_loader(dataset)
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}  # samples behind each value (per-degradation values: that degradation's)
        shown: list[torch.Tensor] = []
        steps = self.spec.eval.steps if self.spec.eval is not None else None
        for i, raw in enumerate(dl):
            batch = self._add_proxies(to_device(raw, self.device))
            b = batch["lq"].shape[0]
            with self._autocast():
                if stage.target == "restorer":
                    # as in training: teacher-forced routing (condition.teacher) comes from the labels
                    restored = validation_restore(self.pipeline, batch, steps,
                                                  generator(self.cfg.seed, 0x7A1, i, device=self.device))
                    # the metrics table's batched rows (psnr, psnr_y, ...) of the restored and the input
                    parts = validation_values(restored.float(), batch["gt"].float(), batch["lq"].float())
                    for name in set(batch.get("degradation_name") or []):  # per degradation: psnr/noisy, ...
                        mask = torch.tensor([d == name for d in batch["degradation_name"]], device=restored.device)
                        parts[f"psnr/{name}"] = parts["psnr"][mask]
                    if len(shown) < self.cfg.images:
                        for k in range(min(b, self.cfg.images - len(shown))):
                            shown.append(torch.cat([batch["lq"][k].float(), restored[k], batch["gt"][k].float()], -1))
                else:
                    out = self.pipeline.perceivers[self._target_module(stage.target)].objective(batch)
                    parts = {k: v.detach().float().expand(b) for k, v in out.items()
                             if isinstance(v, torch.Tensor) and v.numel() == 1}
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v.float().sum())
                counts[k] = counts.get(k, 0) + v.numel()
        values = {k: v / max(1, counts[k]) for k, v in sums.items()}
        grid = None
        if shown:
            h = max(x.shape[-2] for x in shown)
            w = max(x.shape[-1] for x in shown)
            rows = [torch.nn.functional.pad(x, (0, w - x.shape[-1], 0, h - x.shape[-2])) for x in shown]
            grid = torch.cat(rows, -2).cpu()
        return values, grid

    # -- the run -----------------------------------------------------------------------------
    def fit(self) -> Path | None:
        """Run the remaining stages; the final pipeline's folder, or None if stopped early
        (``max_steps_this_run``, or Ctrl-C / SIGTERM: :attr:`stop_signal`)."""
        try:
            with self.signals:
                self._open_logs()
                if self.stage_index >= len(self.stages) and self._resume is not None and self.dist.main:
                    log.info("all stages were already done; saving the pipeline")
                while self.stage_index < len(self.stages):
                    if self._run_stage() and self.stage_index < len(self.stages):
                        return None
                return self._finish()
        finally:
            if self.writer is not None:
                self.writer.close()
                self.writer = None
            ddp.teardown(self.dist)

    def _finish(self) -> Path:
        path = self.out / "pipeline"
        if self.dist.main:
            self.pipeline.eval()
            self.pipeline.save(path)
        ddp.barrier(self.dist)
        return path


def train(spec: Any, out: str | Path | None = None, **kw: Any) -> Path | None:
    """Train a spec (file, dict or PipelineSpec); returns the final pipeline folder (None if stopped early)."""
    from ..validate import validate

    resolved = validate(spec)  # everything training would fail on, before any work
    out = out or (resolved.train.out if resolved.train else TrainSpec().out)
    return Trainer(resolved, out, **kw).fit()
