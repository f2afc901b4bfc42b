"""``vlir restore`` and ``vlir classify``: run a pipeline on image files, folders and globs.

``restore`` keeps each file's name and format (16-bit PNG/TIFF stay 16-bit), writes every output
atomically, never overwrites an input, reports a failing file (path and reason) and goes on;
the exit status is 1 when any file failed. ``classify`` prints the degradation class
probabilities and quality score the pipeline's perceivers give, as text or JSON.

Without ``--pipeline`` or ``--spec`` both use the built-in default model (``vlir.core.default``).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .cli import resolve_device  # noqa: F401 - also vlir.core.restore.resolve_device (benchmarks)
from .data.images import max_pixels_arg, max_pixels_help
from .errors import UserError, memory_message, out_of_memory

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .conditioning import Perception
    from .pipeline import Pipeline

# suffixes write_image can produce; anything else readable is written as PNG
WRITABLE = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"}
SIXTEEN_BIT = {".png", ".tif", ".tiff"}


class RestoreError(UserError):
    """A problem with the whole command (not one file): shown as one line, exit code 2."""


@dataclass
class Job:
    """One input file and where its output goes."""

    src: Path
    rel: Path  # output path relative to the output folder
    problem: str | None = None  # set when the file cannot be processed at all
    skip: bool = False  # its output exists and --skip-existing keeps it


@dataclass
class Outcome:
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    done: int = 0


# -- inputs -----------------------------------------------------------------------------------
def _is_image(path: Path) -> bool:
    from .data.images import is_image_file

    return is_image_file(path) and not path.name.startswith(".")


def expand_inputs(inputs: list[str], recursive: bool = False, exclude: Path | None = None
                  ) -> tuple[list[Job], list[tuple[str, str]]]:
    """Files, folders (their image files) and glob patterns -> jobs; plus inputs that match nothing.

    A folder input that contains ``exclude`` (the output folder) as a subfolder skips the files
    in it, so earlier outputs are not restored again.
    """
    skip = exclude.resolve() if exclude is not None else None

    jobs: list[Job] = []
    missing: list[tuple[str, str]] = []
    seen: set[Path] = set()

    def add(src: Path, rel: Path) -> None:
        key = src.resolve()
        if key not in seen:
            seen.add(key)
            jobs.append(Job(src, rel))

    for text in inputs:
        path = Path(text).expanduser()
        if path.is_dir():
            it = path.rglob("*") if recursive else path.iterdir()
            inner = skip if skip is not None and skip != path.resolve() and skip.is_relative_to(path.resolve()) else None
            files = sorted(p for p in it if p.is_file() and _is_image(p)
                           and (inner is None or not p.resolve().is_relative_to(inner)))
            if not files:
                missing.append((text, "folder has no image files (png, jpg, tif, bmp, webp, ...)"
                                + ("" if recursive else "; use --recursive for subfolders")))
            for p in files:
                add(p, p.relative_to(path))
        elif path.exists():
            add(path, Path(path.name))
        elif glob.has_magic(text):
            matches = sorted(Path(m) for m in glob.glob(os.path.expanduser(text), recursive=True))
            files = [m for m in matches if m.is_file() and _is_image(m)]
            if not files:
                missing.append((text, "pattern matches no image files"))
            for p in files:
                add(p, Path(p.name))
        else:
            missing.append((text, "no such file or folder"))
    return jobs, missing


def output_name(rel: Path, suffix: str = "") -> Path:
    """Output path (relative) for an input: same stem (+ suffix) and format; PNG when unwritable."""
    ext = rel.suffix.lower()
    keep = rel.suffix if ext in WRITABLE else ".png"
    return rel.with_name(rel.stem + suffix + keep)


EXISTING = ("refuse", "overwrite", "skip")  # what to do with outputs already there


def plan_outputs(jobs: list[Job], out_dir: Path, suffix: str = "", existing: str = "refuse") -> dict[Path, Path]:
    """Output file of each job; refuses outputs that would overwrite an input.

    Two inputs that map to the same output name: the second gets ``job.problem`` set. Output
    files that already exist are refused, all of them named (``existing="refuse"``), replaced
    (``"overwrite"``) or kept, their jobs skipped (``"skip"``: ``job.skip`` set).
    """
    if existing not in EXISTING:
        raise ValueError(f"existing must be one of {EXISTING}, got {existing!r}")
    inputs = {j.src.resolve() for j in jobs}
    plan: dict[Path, Path] = {}
    used: dict[Path, Path] = {}
    clashes = []
    for job in jobs:
        dst = out_dir / output_name(job.rel, suffix)
        key = dst.resolve()
        if key in inputs:
            clashes.append(f"{job.src} -> {dst}")
            continue
        if key in used:
            job.problem = (f"output {dst} is already the output of {used[key]} (same file name); "
                           "restore them in separate runs or to different folders")
            continue
        used[key] = job.src
        plan[job.src] = dst
    if clashes:
        more = f" (and {len(clashes) - 3} more)" if len(clashes) > 3 else ""
        raise RestoreError("refusing to overwrite inputs: " + "; ".join(clashes[:3]) + more
                           + ". Choose another output folder (-o) or add --suffix, e.g. --suffix _restored")
    there = [job for job in jobs if job.src in plan and _exists(plan[job.src])]
    if there and existing == "refuse":
        names = [str(plan[job.src]) for job in there]
        more = f" ... and {len(names) - 20} more" if len(names) > 20 else ""
        raise RestoreError(f"{len(names)} output file(s) already exist and are kept: " + ", ".join(names[:20]) + more
                           + ". Add --overwrite to replace them or --skip-existing to restore only the others")
    if existing == "skip":
        for job in there:
            job.skip = True
    return plan


def _exists(path: Path) -> bool:
    return path.exists() or path.is_symlink()  # a dangling link would be replaced too


def check_output_dir(out_dir: Path) -> None:
    """Create the output folder and check that files can be written there."""
    from .io import temp_prefix

    if out_dir.exists() and not out_dir.is_dir():
        raise RestoreError(f"output folder {out_dir} exists and is not a folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RestoreError(f"cannot create output folder {out_dir}: {e.strerror or e}") from e
    try:
        fd, probe = tempfile.mkstemp(prefix=temp_prefix("vlir-write-test"), suffix=".tmp", dir=out_dir)
    except OSError as e:
        raise RestoreError(f"cannot write to output folder {out_dir}: {e.strerror or e}") from e
    os.close(fd)
    os.unlink(probe)


# -- perception summaries ----------------------------------------------------------------------
def summarize(perceptions: "dict[str, Perception]", index: int = 0) -> dict[str, Any]:
    """One image's perceptions merged over roles.

    Top-level ``degradation`` / ``confidence`` / ``probabilities`` come from the first perceiver
    with class probabilities, ``present`` (class -> presence of the classes present, most likely
    first) from the first multi-label one, ``quality_score`` / ``quality`` from the first with a
    quality output; ``perceivers`` holds every role's own summary.
    """
    from .chain import PRESENT

    out: dict[str, Any] = {}
    by_role = {}
    for role, p in perceptions.items():
        d = p.as_dict(index)
        by_role[role] = d
        if "degradation" in d and "degradation" not in out:
            name, prob = max(d["degradation"].items(), key=lambda kv: kv[1])
            out.update(degradation=name, confidence=prob, probabilities=d["degradation"], degradation_from=role)
        if "presence" in d and "present" not in out:  # a multi-label perceiver: every class present
            out["present"] = {w: q for w, q in sorted(d["presence"].items(), key=lambda kv: -kv[1]) if q > PRESENT}
        if "quality_score" in d and "quality_score" not in out:
            out["quality_score"] = d["quality_score"]
        if "quality" in d and "quality" not in out:
            out["quality"] = d["quality"]
    out["perceivers"] = by_role
    return out


def describe(summary: dict[str, Any]) -> str:
    """Short text for one image, e.g. ``noisy 0.93, quality 0.71``; for a multi-label perceiver
    what is present, e.g. ``low-light 0.97 + noisy 0.81`` (or ``clean``)."""
    from .classes import CLEAN

    parts = []
    if "present" in summary:  # multi-label: what is present (clean: nothing)
        parts.append(" + ".join(f"{w} {q:.2f}" for w, q in summary["present"].items() if w != CLEAN) or "clean")
    elif "degradation" in summary:
        parts.append(f"{summary['degradation']} {summary['confidence']:.2f}")
    if "quality_score" in summary:
        parts.append(f"quality {summary['quality_score']:.2f}")
    return ", ".join(parts) if parts else "no perceiver output"


# -- model --------------------------------------------------------------------------------------
def load_pipeline(args: argparse.Namespace, device: str | None = None) -> "Pipeline":
    """The pipeline of ``--pipeline`` / ``--spec``, else the default model, in eval mode."""
    from .default import open_pipeline

    from .precision import PrecisionError, autocast_dtype

    device = device or resolve_device(args.device)
    precision = getattr(args, "precision", None)
    try:
        autocast_dtype(precision, device)  # fp16 on a CPU: refused before the model loads
    except PrecisionError as e:
        raise RestoreError(str(e)) from None
    pipe = open_pipeline(getattr(args, "pipeline", None), getattr(args, "spec", None), device)
    pipe.precision = precision
    return pipe


def check_model_source(args: argparse.Namespace) -> None:
    """Cheap checks before any work: the pipeline folder / spec file exists, or the default model."""
    from .default import default_dir

    pipeline, spec = getattr(args, "pipeline", None), getattr(args, "spec", None)
    if pipeline and not Path(pipeline).expanduser().exists():
        raise RestoreError(f"--pipeline {pipeline}: no such folder or spec file")
    if spec and not Path(spec).expanduser().is_file():
        raise RestoreError(f"--spec {spec}: no such file")
    if not pipeline and not spec:
        default_dir()
    from .spec import read_yaml  # torch-free: a hostile spec is refused before torch is imported

    for file in (Path(pipeline).expanduser() / "spec.yaml" if pipeline else None, spec):
        if file and Path(file).expanduser().is_file():
            read_yaml(Path(file).expanduser())


def _reason(e: BaseException) -> str:
    from .data.images import ImageError

    if isinstance(e, ImageError):
        return e.reason
    if out_of_memory(e):
        return memory_message(e)
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if isinstance(e, OSError) and e.strerror:
        return f"{e.strerror}: {e.filename}" if e.filename else e.strerror
    return f"{type(e).__name__}: {msg}"


def _progress(items, desc: str, disable: bool):
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="img", file=sys.stderr, disable=True if disable else None, leave=False)


def _say(text: str, err: bool = False) -> None:
    from tqdm import tqdm

    tqdm.write(text, file=sys.stderr if err else sys.stdout)


# -- restore -----------------------------------------------------------------------------------
def add_restore_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or glob patterns")
    p.add_argument("-o", "--out", required=True, metavar="OUTDIR", help="output folder (created if needed)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--overwrite", dest="existing", action="store_const", const="overwrite", default="refuse",
                   help="replace output files that already exist (default: refuse to run, naming them)")
    g.add_argument("--skip-existing", dest="existing", action="store_const", const="skip",
                   help="keep output files that already exist and restore only the other inputs")
    p.add_argument("--tile", type=int, metavar="N", help="run the backbone on N x N tiles (large images, low memory)")
    p.add_argument("--overlap", type=int, metavar="N", help="tile overlap in pixels (default: a quarter tile, at most 32, "
                                                            "fitted to the model's tiling grid)")
    p.add_argument("--max-pixels", type=max_pixels_arg, metavar="N", help=max_pixels_help())
    p.add_argument("--steps", type=int, metavar="K", help="sampling steps of diffusion pipelines")
    p.add_argument("--engine", choices=["torch", "onnx"], default="torch",
                   help="onnx: run the backbone with onnxruntime from a folder of 'vlir export onnx' "
                        "(--pipeline DIR; extra vlir[onnx])")
    p.add_argument("--ensemble", action="store_true",
                   help="self-ensemble: average over the flips and quarter turns the degradation allows "
                        "(up to 8x slower, usually a little better)")
    g = p.add_argument_group("what to remove (pipelines routed by class probabilities, such as the default model)")
    w = g.add_mutually_exclusive_group()
    w.add_argument("--degradation", metavar="WORDS", help="remove these degradations, in this order, whatever the "
                                                           "perceiver sees: class words, comma-separated (rainy,noisy)")
    w.add_argument("--prompt", metavar="TEXT", help='say it in words: "remove the rain, then the noise"')
    g.add_argument("--chain", type=int, metavar="K", help="restore step by step, at most K steps: remove the most "
                                                          "likely degradation, look again, stop when nothing is left "
                                                          "or a step does not help (undone); on by default, one step "
                                                          "per class, for multi-label perceivers (--chain 1: off)")
    g.add_argument("--abstain", type=float, metavar="P", help="leave an image as it is when the perceiver's top class "
                                                              "probability (multi-label: top presence) is under P (0..1)")
    p.add_argument("--suffix", default="", metavar="S", help="added to each output file's stem, e.g. _restored")
    p.add_argument("--quality", type=quality, default=95, metavar="Q", help="JPEG/WebP output quality, 1..100 (default 95)")
    p.add_argument("--seed", type=int, default=0, help="seed of diffusion sampling (per image)")
    p.add_argument("-r", "--recursive", action="store_true", help="include images in subfolders of folder inputs")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def quality(text: str) -> int:
    """``--quality Q``: a JPEG/WebP quality in 1..100."""
    try:
        q = int(text)
    except ValueError:
        q = 0
    if not 1 <= q <= 100:
        raise argparse.ArgumentTypeError(f"expected a JPEG/WebP quality from 1 to 100, got {text!r}")
    return q


def _onnx_pipeline(args: argparse.Namespace, device: str) -> "Pipeline":
    from .onnx_engine import OnnxEngineError, load_onnx_pipeline

    try:
        return load_onnx_pipeline(args.pipeline, device, getattr(args, "threads", None))
    except OnnxEngineError as e:
        raise RestoreError(str(e)) from e


def run_restore(args: argparse.Namespace) -> int:
    from .inference import tiling

    tile, overlap = tiling(args.tile, args.overlap)
    if args.engine == "onnx" and not args.pipeline:
        raise RestoreError("--engine onnx needs --pipeline DIR, a folder written by: vlir export onnx PIPELINE -o DIR")
    if args.steps is not None and args.steps < 1:
        raise RestoreError(f"--steps must be >= 1, got {args.steps}")
    if "/" in args.suffix or os.sep in args.suffix:
        raise RestoreError(f"--suffix must not contain a path separator, got {args.suffix!r}")
    out_dir = Path(args.out).expanduser()
    jobs, missing = expand_inputs(args.inputs, args.recursive, exclude=out_dir)
    outcome = Outcome(failed=list(missing))
    for path, reason in missing:
        _say(f"error: {path}: {reason}", err=True)
    if not jobs:
        raise RestoreError("no input images" + (f" ({len(missing)} input(s) matched nothing)" if missing else ""))
    plan = plan_outputs(jobs, out_dir, args.suffix, args.existing)
    skipped = [job for job in jobs if job.skip]
    if skipped:
        _say(f"skipping {len(skipped)} input(s) whose output already exists (--skip-existing)", err=True)
    check_model_source(args)
    device = resolve_device(args.device)
    check_output_dir(out_dir)
    from .io import remove_stale_temp

    for folder in sorted({out_dir, *(dst.parent for dst in plan.values())}):
        remove_stale_temp(folder)  # hidden *.tmp files of writes an earlier run did not finish
    if len(skipped) == len(jobs) and not missing:  # the model is not even loaded
        _say(f"nothing to restore: every output is already in {out_dir}", err=True)
        return 0

    import torch

    from .data.images import MAX_PIXELS, TILED_MAX_PIXELS, dropped_metadata, read_image, write_image

    limit = args.max_pixels if args.max_pixels is not None else TILED_MAX_PIXELS if tile else MAX_PIXELS
    from .data.images import pixel_problem

    for job in jobs:  # images over the pixel limit are refused from their headers, before the model loads
        if not job.skip and job.problem is None:
            job.problem = pixel_problem(job.src, limit)
    pipe, steering = None, None
    if any(not job.skip and job.problem is None for job in jobs):  # else the model is not even loaded
        pipe = _onnx_pipeline(args, device) if args.engine == "onnx" else load_pipeline(args, device)
        device = pipe.device
        from .inference import tile_plan

        tile_plan(pipe, tile, overlap)  # an overlap that does not fit the model's tiles: before any file
        steering = steering_of(pipe, args)  # bad words or an unsteerable pipeline: before any file
    for job in _progress(jobs, "restoring", args.no_progress):
        if job.skip:
            continue
        if job.problem is not None:
            outcome.failed.append((str(job.src), job.problem))
            _say(f"error: {job.src}: {job.problem}", err=True)
            continue
        dst = plan[job.src]
        try:
            img, info = read_image(job.src, max_pixels=limit)
            gen = torch.Generator(device=device).manual_seed(args.seed) if pipe.process is not None else None
            path = None
            if steering is None:
                restored, perceptions = pipe.restore(img[None].to(device), tile=tile, overlap=overlap,
                                                     steps=args.steps, generator=gen, ensemble=args.ensemble)
            else:
                restored, perceptions, paths = pipe.restore_steps(
                    img[None].to(device), tile=tile, overlap=overlap, generator=gen, ensemble=args.ensemble, **steering)
                path = paths[0]
            depth = info["bit_depth"] if dst.suffix.lower() in SIXTEEN_BIT else 8
            dst.parent.mkdir(parents=True, exist_ok=True)
            if args.existing != "overwrite" and _exists(dst):  # written by someone else since the plan
                raise FileExistsError(f"{dst} appeared while restoring; kept (use --overwrite to replace it)")
            write_image(dst, restored[0].float().cpu(), bit_depth=depth, quality=args.quality,
                        exif=info["exif"], icc_profile=info["icc_profile"])
        except Exception as e:  # noqa: BLE001 - report the file and go on with the others
            reason = _reason(e)
            outcome.failed.append((str(job.src), reason))
            _say(f"error: {job.src}: {reason}", err=True)
            continue
        outcome.done += 1
        note = f" [{info['converted']}]" if info.get("converted") else ""
        if info["bit_depth"] == 16 and depth == 8:
            note += " [16-bit input written as 8-bit: the format has no 16-bit]"
        if dropped_metadata(dst, depth, info):
            note += f" [{' and '.join(dropped_metadata(dst, depth, info))} not kept: {dst.suffix} cannot hold it]"
        shown = describe(summarize(perceptions)) + (f"; path: {path}" if path is not None else "")
        _say(f"{job.src} -> {dst}: {shown}{note}")
    total = outcome.done + len(outcome.failed)
    _say(f"restored {outcome.done} of {total} image(s) into {out_dir}"
         + (f"; {len(outcome.failed)} failed" if outcome.failed else "")
         + (f"; {len(skipped)} kept (already there)" if skipped else ""), err=True)
    return 1 if outcome.failed else 0


def steering_of(pipe: "Pipeline", args: argparse.Namespace) -> dict[str, Any] | None:
    """``Pipeline.restore_steps`` arguments of ``--degradation`` / ``--prompt`` / ``--chain`` /
    ``--abstain`` (None: none given), checked against the pipeline before any file is read."""
    from .chain import check_words, default_steps, prompt_words, why_not_steerable, SteerError

    steps = args.chain
    if steps is None and args.degradation is None and args.prompt is None:
        steps = default_steps(pipe)  # a multi-label perceiver's pipeline chains unless told otherwise
    if args.degradation is None and args.prompt is None and steps is None and args.abstain is None:
        return None
    path = None
    if args.degradation is not None:
        path = check_words(pipe, [w.strip() for w in args.degradation.split(",") if w.strip()])
    elif args.prompt is not None:
        path = prompt_words(pipe, args.prompt)
    if (path is not None or (steps or 1) > 1) and (reason := why_not_steerable(pipe)):
        raise SteerError(f"--degradation, --prompt and --chain need a pipeline that can be steered: {reason}")
    return {"path": path, "steps": steps or 1, "abstain": args.abstain}


# -- classify ----------------------------------------------------------------------------------
def add_classify_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or glob patterns")
    p.add_argument("--json", action="store_true", help="print one JSON document (images and failures)")
    p.add_argument("--max-pixels", type=max_pixels_arg, metavar="N", help=max_pixels_help(whole=False))
    p.add_argument("-r", "--recursive", action="store_true", help="include images in subfolders of folder inputs")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_classify(args: argparse.Namespace) -> int:
    from .classes import CLEAN

    jobs, missing = expand_inputs(args.inputs, args.recursive)
    failed = [{"path": p, "error": r} for p, r in missing]
    if not args.json:
        for p, r in missing:
            _say(f"error: {p}: {r}", err=True)
    if not jobs and not failed:
        raise RestoreError("no input images")

    import torch

    from .data.images import TILED_MAX_PIXELS, read_image

    limit = TILED_MAX_PIXELS if args.max_pixels is None else args.max_pixels  # perceivers see small views
    pipe = load_pipeline(args) if jobs else None
    if pipe is not None and not len(pipe.perceivers):
        raise RestoreError("this pipeline has no perceivers: there is nothing to classify")
    from .inference import perceive
    from .precision import resolve

    plan = resolve(pipe.precision, pipe.device, pipe).perceivers if pipe is not None else None
    results = []
    for job in _progress(jobs, "classifying", args.no_progress):
        try:
            img, _ = read_image(job.src, max_pixels=limit)
            with torch.no_grad():
                perceptions = perceive(pipe, img[None].to(pipe.device), plan)
            s = summarize(perceptions)
        except Exception as e:  # noqa: BLE001 - report the file and go on
            failed.append({"path": str(job.src), "error": _reason(e)})
            if not args.json:
                _say(f"error: {job.src}: {_reason(e)}", err=True)
            continue
        results.append({"path": str(job.src), **s})
        if not args.json:
            line = f"{job.src}: {describe(s)}"
            if "present" in s:  # multi-label: the most likely of the classes not present
                presence = s["perceivers"][s["degradation_from"]]["presence"]
                others = sorted(((n, v) for n, v in presence.items() if n not in s["present"] and n != CLEAN),
                                key=lambda kv: -kv[1])[:3]
                if others:
                    line += " (not present: " + ", ".join(f"{n} {v:.2f}" for n, v in others) + ")"
            elif "probabilities" in s:
                others = sorted(s["probabilities"].items(), key=lambda kv: -kv[1])[1:4]
                if others:
                    line += " (" + ", ".join(f"{n} {v:.2f}" for n, v in others) + ")"
            _say(line)
    if args.json:
        print(json.dumps({"images": results, "failed": failed}, indent=2))
    return 1 if failed else 0
