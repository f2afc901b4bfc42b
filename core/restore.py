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

from .cli import threads
from .data.images import max_pixels_arg, max_pixels_help
from .precision import add_argument as add_precision_argument

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .conditioning import Perception
    from .pipeline import Pipeline

# suffixes write_image can produce; anything else readable is written as PNG
WRITABLE = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"}
SIXTEEN_BIT = {".png", ".tif", ".tiff"}


class RestoreError(Exception):
    """A problem with the whole command (not one file): shown as one line, exit code 2."""


@dataclass
class Job:
    """One input file and where its output goes."""

    src: Path
    rel: Path  # output path relative to the output folder
    problem: str | None = None  # set when the file cannot be processed at all


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


def plan_outputs(jobs: list[Job], out_dir: Path, suffix: str = "") -> dict[Path, Path]:
    """Output file of each job; refuses outputs that would overwrite an input.

    Two inputs that map to the same output name: the second gets ``job.problem`` set.
    """
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
    return plan


def check_output_dir(out_dir: Path) -> None:
    """Create the output folder and check that files can be written there."""
    if out_dir.exists() and not out_dir.is_dir():
        raise RestoreError(f"output folder {out_dir} exists and is not a folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RestoreError(f"cannot create output folder {out_dir}: {e.strerror or e}") from e
    try:
        fd, probe = tempfile.mkstemp(prefix=".vlir-write-test-", dir=out_dir)
    except OSError as e:
        raise RestoreError(f"cannot write to output folder {out_dir}: {e.strerror or e}") from e
    os.close(fd)
    os.unlink(probe)


# -- perception summaries ----------------------------------------------------------------------
def summarize(perceptions: "dict[str, Perception]", index: int = 0) -> dict[str, Any]:
    """One image's perceptions merged over roles.

    Top-level ``degradation`` / ``confidence`` / ``probabilities`` come from the first perceiver
    with class probabilities, ``quality_score`` / ``quality`` from the first with a quality
    output; ``perceivers`` holds every role's own summary.
    """
    out: dict[str, Any] = {}
    by_role = {}
    for role, p in perceptions.items():
        d = p.as_dict(index)
        by_role[role] = d
        if "degradation" in d and "degradation" not in out:
            name, prob = max(d["degradation"].items(), key=lambda kv: kv[1])
            out.update(degradation=name, confidence=prob, probabilities=d["degradation"], degradation_from=role)
        if "quality_score" in d and "quality_score" not in out:
            out["quality_score"] = d["quality_score"]
        if "quality" in d and "quality" not in out:
            out["quality"] = d["quality"]
    out["perceivers"] = by_role
    return out


def describe(summary: dict[str, Any]) -> str:
    """Short text for one image, e.g. ``noisy 0.93, quality 0.71``."""
    parts = []
    if "degradation" in summary:
        parts.append(f"{summary['degradation']} {summary['confidence']:.2f}")
    if "quality_score" in summary:
        parts.append(f"quality {summary['quality_score']:.2f}")
    return ", ".join(parts) if parts else "no perceiver output"


# -- shared options ----------------------------------------------------------------------------
def _add_model_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--pipeline", metavar="DIR", help="saved pipeline folder (default: the built-in default model)")
    g.add_argument("--spec", metavar="FILE", help="spec file (components built from it, weights from its 'weights:')")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, mps or auto (default: auto)")
    p.add_argument("--threads", type=threads, metavar="N", help="CPU threads of torch (torch.set_num_threads)")
    add_precision_argument(p)


def resolve_device(name: str) -> str:
    import torch

    if name != "auto":
        try:
            torch.empty(0, device=name)
        except (RuntimeError, AssertionError) as e:
            raise RestoreError(f"device {name!r} is not usable here: {str(e).splitlines()[0]}") from e
        return name
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def load_pipeline(args: argparse.Namespace, device: str | None = None) -> "Pipeline":
    """The pipeline of ``--pipeline`` / ``--spec``, else the default model, in eval mode."""
    from .default import open_pipeline

    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
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
        raise FileNotFoundError(f"pipeline {pipeline}: no such folder or spec file")
    if spec and not Path(spec).expanduser().is_file():
        raise FileNotFoundError(f"spec {spec}: no such file")
    if not pipeline and not spec:
        default_dir()


def _reason(e: BaseException) -> str:
    from .data.images import ImageError

    if isinstance(e, ImageError):
        return e.reason
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if isinstance(e, MemoryError) or "out of memory" in msg.lower():
        return f"out of memory ({msg}); try --tile 512 (or smaller)"
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
    _add_model_arguments(p)
    p.add_argument("--tile", type=int, metavar="N", help="run the backbone on N x N tiles (large images, low memory)")
    p.add_argument("--overlap", type=int, metavar="N", help="tile overlap in pixels (default: min(32, N/4))")
    p.add_argument("--max-pixels", type=max_pixels_arg, metavar="N", help=max_pixels_help())
    p.add_argument("--steps", type=int, metavar="K", help="sampling steps of diffusion pipelines")
    p.add_argument("--ensemble", action="store_true",
                   help="self-ensemble: average over the flips and quarter turns the degradation allows "
                        "(up to 8x slower, usually a little better)")
    p.add_argument("--suffix", default="", metavar="S", help="added to each output file's stem, e.g. _restored")
    p.add_argument("--quality", type=int, default=95, metavar="Q", help="JPEG/WebP output quality (default 95)")
    p.add_argument("--seed", type=int, default=0, help="seed of diffusion sampling (per image)")
    p.add_argument("-r", "--recursive", action="store_true", help="include images in subfolders of folder inputs")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _check_tiling(args: argparse.Namespace) -> tuple[int | None, int]:
    tile, overlap = args.tile, args.overlap
    if tile is None:
        return None, overlap if overlap is not None else 32
    if tile < 8:
        raise RestoreError(f"--tile must be at least 8 pixels, got {tile}")
    if overlap is None:
        overlap = min(32, tile // 4)
    if not 0 <= overlap < tile:
        raise RestoreError(f"--overlap must be in [0, tile) = [0, {tile}), got {overlap}")
    return tile, overlap


def run_restore(args: argparse.Namespace) -> int:
    try:
        return _restore(args)
    except RestoreError as e:
        print(f"vlir restore: error: {e}", file=sys.stderr)
        return 2


def _restore(args: argparse.Namespace) -> int:
    tile, overlap = _check_tiling(args)
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
    plan = plan_outputs(jobs, out_dir, args.suffix)
    device = resolve_device(args.device)
    check_model_source(args)
    check_output_dir(out_dir)

    import torch

    from .data.images import MAX_PIXELS, TILED_MAX_PIXELS, dropped_metadata, read_image, write_image

    limit = args.max_pixels if args.max_pixels is not None else TILED_MAX_PIXELS if tile else MAX_PIXELS
    pipe = load_pipeline(args, device)
    device = pipe.device
    for job in _progress(jobs, "restoring", args.no_progress):
        if job.problem is not None:
            outcome.failed.append((str(job.src), job.problem))
            _say(f"error: {job.src}: {job.problem}", err=True)
            continue
        dst = plan[job.src]
        try:
            img, info = read_image(job.src, max_pixels=limit)
            gen = torch.Generator(device=device).manual_seed(args.seed) if pipe.process is not None else None
            restored, perceptions = pipe.restore(img[None].to(device), tile=tile, overlap=overlap,
                                                 steps=args.steps, generator=gen, ensemble=args.ensemble)
            depth = info["bit_depth"] if dst.suffix.lower() in SIXTEEN_BIT else 8
            dst.parent.mkdir(parents=True, exist_ok=True)
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
        _say(f"{job.src} -> {dst}: {describe(summarize(perceptions))}{note}")
    total = outcome.done + len(outcome.failed)
    _say(f"restored {outcome.done} of {total} image(s) into {out_dir}"
         + (f"; {len(outcome.failed)} failed" if outcome.failed else ""), err=True)
    return 1 if outcome.failed else 0


# -- classify ----------------------------------------------------------------------------------
def add_classify_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or glob patterns")
    _add_model_arguments(p)
    p.add_argument("--json", action="store_true", help="print one JSON document (images and failures)")
    p.add_argument("--max-pixels", type=max_pixels_arg, metavar="N", help=max_pixels_help(whole=False))
    p.add_argument("-r", "--recursive", action="store_true", help="include images in subfolders of folder inputs")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_classify(args: argparse.Namespace) -> int:
    try:
        return _classify(args)
    except RestoreError as e:
        print(f"vlir classify: error: {e}", file=sys.stderr)
        return 2


def _classify(args: argparse.Namespace) -> int:
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
            if "probabilities" in s:
                others = sorted(s["probabilities"].items(), key=lambda kv: -kv[1])[1:4]
                if others:
                    line += " (" + ", ".join(f"{n} {v:.2f}" for n, v in others) + ")"
            _say(line)
    if args.json:
        print(json.dumps({"images": results, "failed": failed}, indent=2))
    return 1 if failed else 0
