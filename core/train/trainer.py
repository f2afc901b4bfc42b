"""The spec-driven trainer: stages, AdamW + cosine schedule, AMP, EMA, DDP, checkpoints, resume.

A run folder holds ``run.yaml`` (the resolved spec), ``checkpoints/step_*.pt``, ``log.jsonl``,
``tb/`` (tensorboard) and, at the end, ``pipeline/`` (``Pipeline.load`` and the CLI read it).

Resuming restores weights, optimiser, schedule, EMA, random states and the data position, so
a run that was stopped and resumed ends with the same weights as one that was not. Several
processes (``torchrun``) split each global batch; only rank 0 writes files.
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
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..io import atomic_write_text
from ..pipeline import Pipeline
from ..sections import DataSpec, StageSpec, TrainSpec
from ..spec import PipelineSpec, SpecError
from . import checkpoint as ckpt
from . import ddp
from .data import StepBatches, build_dataset, check_folders, loader, to_device
from .ema import EMA

log = logging.getLogger("vlir.train")
RUN_SPEC = "run.yaml"  # the resolved spec of a run (not named spec.yaml: a run folder is no pipeline folder)


def mix_seed(*keys: int) -> int:
    """A 63-bit seed from integer keys (seed, step, rank, ...)."""
    state = np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in keys]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31 | int(state[1]) >> 1) & (2 ** 63 - 1)


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


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


class Objective(nn.Module):
    """One stage's loss as a module (so that DDP can wrap it): ``forward(batch, generator) -> (loss, logs)``."""

    def __init__(self, pipeline: Pipeline, target: str):
        super().__init__()
        self.pipeline = pipeline
        self.target = target

    def forward(self, batch: dict[str, Any], generator: torch.Generator | None = None):
        if self.target == "restorer":
            return self.pipeline.training_losses(batch, generator)
        out = self.pipeline.perceivers[self.target].objective(batch)
        if "loss" not in out:
            raise KeyError(f"perceiver {self.target!r}: objective() returned no 'loss' entry ({sorted(out)})")
        logs = {k: float(v.detach()) for k, v in out.items()
                if isinstance(v, torch.Tensor) and v.numel() == 1}
        return out["loss"], logs


class Trainer:
    """Train the pipeline of a resolved spec (see :mod:`vlir.core.sections` for the options)."""

    def __init__(self, spec: PipelineSpec, out: str | Path, *, device: str | None = None,
                 resume: str | Path | None = None, registry: Any = None, progress: bool = True):
        if spec.data is None or not spec.data.train:
            raise SpecError([("data.train", "training needs data: folders of clean images (layout: synthetic) "
                                            "or DA-CLIP roots (layout: paired)")])
        self.spec = spec
        self.data: DataSpec = spec.data
        self.cfg: TrainSpec = spec.train or TrainSpec()
        self.stages: list[StageSpec] = self.cfg.resolved_stages()
        self.out = Path(out)
        self.progress = progress
        check_folders(self.data.train, "data.train")
        check_folders(self.data.val, "data.val")
        self.dist = ddp.setup(device)
        self.device = self.dist.device
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
            self._resume: dict[str, Any] | None = None
            if resume is not None:
                self._load(ckpt.resolve(resume))
            self.val_data = None
            if self.data.val:
                self.val_data = build_dataset(self.data, "val", self.data.val_size, self.data.val_limit)
            self.writer = None
            self.stage: StageSpec | None = None  # the stage being trained
            self.ema: EMA | None = None  # its EMA, if on
            self.last_val: dict[str, float] = {}  # the latest validation values (rank 0)
        except BaseException:
            ddp.teardown(self.dist)
            raise

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
        errors = []
        roles = list(self.pipeline.perceivers)
        for i, s in enumerate(self.stages):
            path = f"train.stages[{i}].target" if self.cfg.stages else "train"
            try:
                t = self._target_module(s.target)
            except KeyError:
                errors.append((path, f"no perceiver for {s.target!r}; perceivers: {', '.join(roles) or 'none'}"))
                continue
            if t == "restorer":
                if self.pipeline.process is None and not self.pipeline.losses:
                    errors.append(("losses", "a restorer stage needs at least one loss, e.g. losses: [{type: l1}]"))
                for r in s.unfreeze:
                    if r not in roles:
                        errors.append((f"train.stages[{i}].unfreeze", f"no perceiver with role {r!r}; "
                                                                       f"perceivers: {', '.join(roles) or 'none'}"))
            if s.degradations is not None:
                types = [d.type for d in self.data.degradations]
                wrong = [d for d in s.degradations if d not in types]
                if self.data.layout != "synthetic" or wrong or not s.degradations:
                    errors.append((f"train.stages[{i}].degradations",
                                   f"expected types of data.degradations ({', '.join(types) or 'none'}) with "
                                   f"layout: synthetic; got {s.degradations}"))
            if t != "restorer" and not any(p.requires_grad for p in self.pipeline.perceivers[t].parameters()):
                errors.append((path, f"perceiver {t!r} has no trainable parameters"))
        if errors:
            raise SpecError(errors)

    def _stage_data(self, stage: StageSpec) -> DataSpec:
        """The data section as a stage sees it (``degradations``: a subset of the synthetic ones; ``augment``)."""
        update: dict[str, Any] = {}
        if stage.degradations is not None:
            update["degradations"] = [d for d in self.data.degradations if d.type in stage.degradations]
        if stage.augment is not None:
            update["augment"] = stage.augment
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
    def _component_state(self) -> dict[str, dict[str, torch.Tensor]]:
        """Trained parameters of the trained components and every component's buffers."""
        trained = self._trained_components()
        out: dict[str, dict[str, torch.Tensor]] = {}
        for name, module in self.pipeline.named_components():
            params = dict(module.named_parameters())
            prefix = self._prefix(name)
            keep = {}
            for k, v in module.state_dict().items():
                if k in params:
                    if name in trained and self.trainable.get(f"{prefix}.{k}", False):
                        keep[k] = v
                else:
                    keep[k] = v
            if keep:
                out[name] = keep
        return out

    def _load(self, path: Path) -> None:
        state = ckpt.load(path)
        comps = self._components()
        for name, sd in state["components"].items():
            if name not in comps:
                raise SpecError([("", f"checkpoint {path} has weights of component {name!r} that this spec "
                                      f"does not build (components: {', '.join(comps)})")])
            result = comps[name].load_state_dict(sd, strict=False)
            if result.unexpected_keys:
                raise SpecError([("", f"checkpoint {path}: component {name!r} does not fit the spec; unexpected "
                                      f"keys {result.unexpected_keys[:5]}")])
        n = len(self.stages)
        if int(state["stage"]) > n:
            raise SpecError([("train.stages", f"checkpoint {path} is at stage {state['stage']} but the spec "
                                              f"has {n} stage(s)")])
        self.step = int(state["step"])
        self.stage_index = int(state["stage"])
        self.stage_step = int(state["stage_step"])
        self.resumed_from = path
        self._resume = state
        if self.dist.main:
            log.info("resuming from %s (step %d, stage %d, stage step %d)", path, self.step,
                     self.stage_index + 1, self.stage_step)

    def _save(self, opt, sched, scaler, ema: EMA | None, mid_stage: bool) -> Path | None:
        rng = ddp.gather_objects(self.dist, ckpt.rng_state())
        if not self.dist.main:
            ddp.barrier(self.dist)
            return None
        batch = self._batch(self.stage) if self.stage is not None else None
        state = {
            "step": self.step, "stage": self.stage_index, "stage_step": self.stage_step,
            "stage_name": self.stage.label if self.stage is not None else None,
            "world": self.dist.world,
            "components": self._component_state(),
            "optimizer": opt.state_dict() if mid_stage else None,
            "scheduler": sched.state_dict() if mid_stage else None,
            "scaler": scaler.state_dict() if (mid_stage and scaler is not None) else None,
            "ema": ema.state_dict() if (mid_stage and ema is not None) else None,
            "rng": rng,
            "data": {"stage": self.stage_index, "position": self.stage_step * batch if batch else 0,
                     "batch": batch, "seed": self.data.seed},
            "spec": self.spec.to_yaml(),
        }
        path = ckpt.save(state, self.out / "checkpoints", self.step, keep=self.cfg.keep_checkpoints)
        ddp.barrier(self.dist)
        return path

    # -- logging -----------------------------------------------------------------------------
    def _open_logs(self) -> None:
        if not self.dist.main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.out / RUN_SPEC, self.spec.to_yaml())
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.out / "tb"))
        except Exception as e:  # noqa: BLE001 - logs are optional; training goes on
            log.warning("tensorboard logging is off (%s: %s)", type(e).__name__, e)
            self.writer = None

    def _log(self, kind: str, values: dict[str, float], images: torch.Tensor | None = None) -> None:
        if not self.dist.main:
            return
        row = {"kind": kind, "step": self.step, "stage": self.stage.label if self.stage else None,
               "time": round(time.time(), 3), **{k: round(float(v), 6) for k, v in values.items()}}
        with open(self.out / "log.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        if self.writer is not None:
            for k, v in values.items():
                if math.isfinite(float(v)):
                    self.writer.add_scalar(f"{kind}/{k}", float(v), self.step)
            if images is not None:
                self.writer.add_image(f"{kind}/lq_restored_gt", images, self.step)
            self.writer.flush()

    # -- one stage ---------------------------------------------------------------------------
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

    def _autocast(self):
        if self.amp is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp)

    def _unused_parameters(self, objective: Objective, params, batch) -> bool:
        """Whether some trained parameter gets no gradient (one trial step, state put back)."""
        cpu_rng = torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None
        gen = torch.Generator(device=self.device).manual_seed(mix_seed(self.cfg.seed, 0xD1CE))
        with self._autocast():
            loss, _ = objective(batch, gen)
        loss.float().backward()
        unused = [n for n, p in params if p.grad is None]
        for _, p in params:
            p.grad = None
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
        if unused and self.dist.main:
            log.info("DDP: %d trained parameters get no gradient (e.g. %s): find_unused_parameters on",
                     len(unused), unused[0])
        return bool(unused)

    def _run_stage(self) -> bool:
        """Train the current stage from ``stage_step``; True when stopped by ``max_steps_this_run``."""
        from tqdm.auto import tqdm

        stage = self.stage = self.stages[self.stage_index]
        params = self._prepare(stage)
        tensors = [p for _, p in params]
        opt = torch.optim.AdamW(tensors, lr=stage.lr, betas=tuple(stage.betas), weight_decay=stage.weight_decay)
        n_iter, warmup, floor = stage.iterations, stage.warmup, stage.lr_min / stage.lr

        def schedule(s: int) -> float:
            return lr_factor(s, n_iter, warmup, floor)

        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        scaler = torch.amp.GradScaler("cuda") if self.amp == torch.float16 else None
        ema = self.ema = EMA(params, stage.ema) if stage.ema else None
        state = self._resume
        if state is not None and int(state["stage"]) == self.stage_index and self.stage_step > 0:
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
        batch_size = self._batch(stage)
        patch = stage.patch_size or self.data.patch_size
        dataset = build_dataset(self._stage_data(stage), "train", patch)
        epoch_len = len(dataset)
        sampler = StepBatches(self.stage_step, n_iter, batch_size, self.dist.rank, self.dist.world)
        batches = iter(loader(dataset, sampler, self.data.num_workers, self.device.type == "cuda",
                              seed=mix_seed(self.data.seed, self.stage_index)))

        objective = Objective(self.pipeline, "restorer" if stage.target == "restorer"
                              else self._target_module(stage.target))
        model: nn.Module = objective
        first = None
        if self.dist.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            unused = self.cfg.find_unused_parameters
            if unused is None and self.stage_step < n_iter:
                first = self._add_proxies(to_device(next(batches), self.device))
                unused = ddp.any_true(self.dist, self._unused_parameters(objective, params, first))
            kw: dict[str, Any] = {"device_ids": [self.device.index] if self.device.type == "cuda" else None,
                                  "find_unused_parameters": bool(unused)}
            if "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters:
                kw["forward_sync_buffers"] = False  # buffers are equal everywhere; no sync per step
            else:
                kw["broadcast_buffers"] = False
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                model = DDP(objective, **kw)
            # DDP notes that depthwise-convolution gradients have other strides than its buckets: harmless
            warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")

        if state is not None:  # last: nothing between here and the first step draws random numbers
            rngs = state["rng"]
            if len(rngs) != self.dist.world and self.dist.main:
                log.warning("checkpoint written by %d process(es), resumed by %d: random states of rank 0 reused",
                            len(rngs), self.dist.world)
            ckpt.set_rng_state(rngs[self.dist.rank] if self.dist.rank < len(rngs) else rngs[0])
            self._resume = None

        bar = tqdm(total=n_iter, initial=self.stage_step, disable=not (self.dist.main and self.progress),
                   desc=f"stage {self.stage_index + 1}/{len(self.stages)} {stage.label}", dynamic_ncols=True,
                   mininterval=0.5)
        sums: dict[str, float] = {}
        epoch_sums: dict[str, float] = {}
        epoch_steps = 0
        count = 0
        t0 = time.perf_counter()
        stopped = False
        try:
            while self.stage_step < n_iter:
                batch = first if first is not None else self._add_proxies(to_device(next(batches), self.device))
                first = None
                gen = torch.Generator(device=self.device).manual_seed(
                    mix_seed(self.cfg.seed, self.step, self.dist.rank))
                with self._autocast():
                    loss, logs = model(batch, gen)
                if not torch.isfinite(loss.detach()):
                    raise FloatingPointError(f"loss is {float(loss)} at step {self.step + 1} "
                                             f"(stage {stage.label!r}); logs: {logs}")
                opt.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.unscale_(opt)
                else:
                    loss.backward()
                if stage.grad_clip:
                    norm = torch.nn.utils.clip_grad_norm_(tensors, stage.grad_clip)
                    logs["grad_norm"] = float(norm)
                if scaler is not None:
                    scaler.step(opt)
                    scaler.update()
                else:
                    opt.step()
                logs["lr"] = opt.param_groups[0]["lr"]
                sched.step()
                if ema is not None:
                    ema.update()
                self.step += 1
                self.stage_step += 1
                self.steps_this_run += 1
                count += 1
                for k, v in logs.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
                    epoch_sums[k] = epoch_sums.get(k, 0.0) + float(v)
                epoch_steps += 1
                bar.update(1)
                if self.dist.main and self.progress:
                    bar.set_postfix({k: f"{v:.4g}" for k, v in logs.items() if k in ("loss", "lr")}, refresh=False)
                self.registry.pm.hook.vlir_train_step_end(trainer=self, step=self.step, logs=logs)

                done = self.stage_step >= n_iter
                if self.step % self.cfg.log_every == 0 or done:
                    mean = ddp.mean_dict(self.dist, {k: v / count for k, v in sums.items()})
                    elapsed = time.perf_counter() - t0
                    mean["steps_per_s"] = count / elapsed if elapsed > 0 else float("nan")
                    self._log("train", mean)
                    sums, count, t0 = {}, 0, time.perf_counter()
                before, after = (self.stage_step - 1) * batch_size, self.stage_step * batch_size
                for e in range(before // epoch_len, after // epoch_len):
                    mean = {k: v / max(1, epoch_steps) for k, v in epoch_sums.items()}
                    self.registry.pm.hook.vlir_train_epoch_end(trainer=self, epoch=e, logs=mean)
                    epoch_sums, epoch_steps = {}, 0
                if self.step % self.cfg.val_every == 0 or done:
                    self._validate(stage, ema)
                stop = self.cfg.max_steps_this_run is not None and self.steps_this_run >= self.cfg.max_steps_this_run
                if done:
                    break
                if self.step % self.cfg.save_every == 0 or stop:
                    self._save(opt, sched, scaler, ema, mid_stage=True)
                if stop:
                    stopped = True
                    break
        finally:
            bar.close()
        if stopped:
            return True
        # end of the stage: the averaged weights become the weights
        if ema is not None:
            ema.copy_to()
        self.stage_index += 1
        self.stage_step = 0
        self._save(opt, sched, scaler, None, mid_stage=False)
        self.ema = None
        del model, objective, opt, sched, ema
        gc.collect()
        return self.cfg.max_steps_this_run is not None and self.steps_this_run >= self.cfg.max_steps_this_run

    # -- validation --------------------------------------------------------------------------
    @torch.no_grad()
    def _validate(self, stage: StageSpec, ema: EMA | None) -> dict[str, float]:
        values: dict[str, float] = {}
        images = None
        if self.dist.main and self.val_data is not None:
            with ema.swapped() if ema is not None else nullcontext():
                modes = {m: m.training for m in self.pipeline.modules()}
                self.pipeline.eval()
                try:
                    values, images = self._val_pass(stage)
                finally:
                    for m, mode in modes.items():
                        m.training = mode
            self._log("val", values, images)
        psnr = ddp.broadcast_float(self.dist, values.get("psnr") if self.dist.main else None)
        if psnr is not None and stage.target == "restorer":
            for loss in self.pipeline.losses.values():
                if hasattr(loss, "update_probe"):
                    loss.update_probe(psnr)
        self.last_val = values
        return values

    def _val_pass(self, stage: StageSpec) -> tuple[dict[str, float], torch.Tensor | None]:
        from torch.utils.data import DataLoader

        from ..inference import run_backbone  # the one tiling/overlap rule (whole patches here)
        from ..metrics import psnr_torch
        from .data import collate

        assert self.val_data is not None
        bs = min(8, self.data.batch_size) if self.data.val_size else 1
        dl = DataLoader(self.val_data, batch_size=bs, shuffle=False, num_workers=0, collate_fn=collate)
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}  # samples behind each value (per-degradation values: that degradation's)
        shown: list[torch.Tensor] = []
        steps = self.spec.eval.steps if self.spec.eval is not None else None
        for i, raw in enumerate(dl):
            batch = self._add_proxies(to_device(raw, self.device))
            b = batch["lq"].shape[0]
            with self._autocast():
                if stage.target == "restorer":
                    gen = torch.Generator(device=self.device).manual_seed(mix_seed(self.cfg.seed, 0x7A1, i))
                    # as in training: teacher-forced routing (condition.teacher) comes from the labels
                    cond, _ = self.pipeline.batch_condition(batch)
                    restored = run_backbone(self.pipeline, batch["lq"], cond, steps=steps, generator=gen)
                    restored = restored.float().clamp(0, 1)
                    parts = {"psnr": psnr_torch(restored, batch["gt"].float()),
                             "input_psnr": psnr_torch(batch["lq"].float(), batch["gt"].float())}
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
        """Run the remaining stages; the final pipeline's folder, or None if stopped early."""
        try:
            self._open_logs()
            if self.stage_index >= len(self.stages) and self._resume is not None and self.dist.main:
                log.info("all stages were already done; saving the pipeline")
            while self.stage_index < len(self.stages):
                if self._run_stage():
                    if self.stage_index < len(self.stages):
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
    from ..spec import load_spec

    resolved = load_spec(spec)
    out = out or (resolved.train.out if resolved.train else TrainSpec().out)
    return Trainer(resolved, out, **kw).fit()
