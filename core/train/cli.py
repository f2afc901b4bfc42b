"""``vlir train SPEC [--resume DIR] [--out DIR] [--set key=value ...] [--device D]``.

Several GPUs or nodes: ``torchrun --nproc_per_node N -m vlir.core.cli train SPEC`` (or the
``vlir`` script's path instead of ``-m``). Nothing heavy is imported until the command runs.
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

from ..cli import apply_sets as apply_overrides, parse_set as parse_override  # noqa: F401 - the one --set parser

RUN_SPEC = "run.yaml"  # as vlir.core.train.trainer.RUN_SPEC (kept here: this module does not import torch)


def select_stages(raw: dict[str, Any], names: list[str], source: str) -> dict[str, Any]:
    """Keep only the named stages of ``train.stages`` (a stage's name defaults to its target)."""
    from ..spec import SpecError

    stages = ((raw.get("train") or {}).get("stages")) or []
    label = [s.get("name") or s.get("target", "restorer") for s in stages if isinstance(s, dict)]
    unknown = [n for n in names if n not in label]
    if unknown:
        raise SpecError([("train.stages", f"--stages: no stage named {', '.join(unknown)}; stages: "
                                          f"{', '.join(label) or 'none'}")], source=source)
    out = copy.deepcopy(raw)
    out["train"]["stages"] = [s for s, n in zip(stages, label) if n in names]
    return out


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", nargs="?", help="spec file (YAML); optional with --resume (the run's run.yaml)")
    p.add_argument("--resume", metavar="DIR", help="run folder or checkpoint file to continue from")
    p.add_argument("--out", metavar="DIR", help="run folder (default: train.out, or the --resume folder)")
    p.add_argument("--set", action="append", type=parse_override, default=[], metavar="KEY=VALUE",
                   help="override a spec value, e.g. --set train.iterations=100 --set data.train=imgs")
    p.add_argument("--allow-spec-change", action="store_true",
                   help="with --resume: continue although the spec differs from the checkpoint's (the "
                        "differences are logged; without this flag they are refused)")
    p.add_argument("--quiet", action="store_true", help="print nothing while training (no progress bar, "
                                                        "no validation lines)")
    p.add_argument("--stages", metavar="NAMES", help="run only these stages of train.stages (comma-separated "
                                                     "names), e.g. to train independent stages as parallel runs")


def _run_folder(resume: str) -> Path:
    p = Path(resume)
    if p.is_file():  # a checkpoint: run/checkpoints/step_*.pt
        return p.parent.parent if p.parent.name == "checkpoints" else p.parent
    return p


def run_train(args: argparse.Namespace) -> int:
    import logging

    if args.spec:  # a hostile spec (alias bomb, deep nesting) is refused before torch is imported
        from ..spec import read_yaml

        read_yaml(args.spec)
    import torch

    from ..spec import SpecError, read_spec
    from ..validate import validate
    from .checkpoint import list_checkpoints
    from .trainer import Trainer

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("vlir").setLevel(logging.INFO)
    if args.threads:
        torch.set_num_threads(args.threads)
    source = args.spec
    if source is None:
        if not args.resume:
            raise SpecError([("", "give a spec file, or --resume DIR to continue a run")], source="vlir train")
        source = str(_run_folder(args.resume) / RUN_SPEC)
    raw = apply_overrides(read_spec(source), args.set or [])  # --set paths: from the working directory
    if getattr(args, "stages", None):
        raw = select_stages(raw, args.stages.split(","), source)
    spec = validate(raw, name=source)  # everything training would fail on, before any work
    if spec.data is None:
        raise SpecError([("data", "training needs a data section (data.train: folders of images)")], source=source)
    out = Path(args.out or (_run_folder(args.resume) if args.resume else (spec.train.out if spec.train else "runs/vlir")))
    if not args.resume and list_checkpoints(out / "checkpoints"):
        raise SpecError([("train.out", f"{out} already has checkpoints; continue with --resume {out} "
                                       "or choose another --out")], source=source)
    if getattr(args, "allow_spec_change", False) and not args.resume:
        raise SpecError([("", "--allow-spec-change is for --resume")], source="vlir train")
    trainer = Trainer(spec, out, device=args.device, resume=args.resume, progress="off" if args.quiet else "auto",
                      allow_spec_change=getattr(args, "allow_spec_change", False))
    result = trainer.fit()
    if trainer.dist.main:
        if result is None:
            why = f" ({trainer.stop_signal})" if trainer.stop_signal else ""
            print(f"stopped{why} after {trainer.steps_this_run} step(s) at step {trainer.step}, with a checkpoint; "
                  f"continue with: vlir train --resume {out}", file=sys.stderr)
        else:
            print(f"trained pipeline: {result}")
    return (trainer.signals.exit_code or 0) if result is None else 0


add_arguments = add_train_arguments
run = run_train
