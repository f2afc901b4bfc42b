"""``vlir eval``: PSNR/SSIM per degradation, degradation classification, speed, and a report.

Evaluation sets are clean folders degraded with a FIXED seed (the same inputs every run), one
set per folder and degradation, or DA-CLIP paired folders ``root/<degradation>/{LQ,GT}``.
Metrics are the rows of :data:`vlir.core.metrics.TABLE` (BasicSR's PSNR and SSIM, 8-bit quantised,
``crop_border``, RGB and Y); one too small for an image (SSIM on a 1x1 image) is n/a for it. When a perceiver gives
degradation class probabilities, the dataset's degradation words are matched to its class names
and accuracy and a confusion matrix are reported.

Folders of degraded photos without ground truth (``--no-reference``, :func:`photo_sets`) get the
no-reference measures of :mod:`vlir.core.noref` (NIQE, noise sigma, sharpness) before and after
restoration, grouped by the degradation the perceiver recognises.

Outputs (all written atomically): ``results.json``, ``summary.csv``, ``per_image.csv``,
``report.html``, ``summary.png`` and ``crops/*.png``.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from .data.images import max_pixels_arg, max_pixels_help
from .errors import UserError
from . import metrics

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .metrics import Metric
    from .pipeline import Pipeline
    from .registry import Registry
    from .sections import DegradationSpec

DEFAULT_DEGRADATIONS = ("noise", "jpeg", "blur")
NOREF_CROPS = 64  # before/after crops per folder in a no-reference report, by default


@dataclass
class EvalSet:
    """One folder under one degradation: ``items()`` yields dataset items (whole images)."""

    name: str
    data: str
    degradation: str  # class word (e.g. noisy)
    dataset: Any
    indices: list[int]
    reference: bool = True  # items have a ground truth ("gt"); else no-reference measures

    def __len__(self) -> int:
        return len(self.indices)

    def items(self):
        for i in self.indices:
            item = self.dataset[i]
            if item is not None:  # None: an unreadable photo, skipped with a warning
                yield item


def norm_label(name: str) -> str:
    return re.sub(r"[\s_]+", "-", str(name).strip().lower())


def match_classes(labels: Sequence[str], classes: Sequence[str]) -> dict[str, int | None]:
    """Each dataset label -> index of the perceiver class with the same word (case, ``_``/space/``-`` ignored)."""
    by_norm = {norm_label(c): i for i, c in enumerate(classes)}
    return {label: by_norm.get(norm_label(label)) for label in labels}


def parse_degradations(text: str) -> list["DegradationSpec"]:
    """``noise,jpeg:quality=20,noise:sigma=50`` -> degradation specs (params as YAML values)."""
    import yaml

    from .sections import DegradationSpec

    out = []
    for part in [p.strip() for p in text.split(",") if p.strip()]:
        name, *kvs = part.split(":")
        params = {}
        for kv in kvs:
            k, sep, v = kv.partition("=")
            if not sep:
                raise argparse.ArgumentTypeError(f"--degradations: {kv!r} in {part!r} is not key=value")
            params[k.strip()] = yaml.safe_load(v)
        out.append(DegradationSpec(type=name.strip(), params=params))
    if not out:
        raise argparse.ArgumentTypeError("--degradations: give at least one name, e.g. noise,jpeg")
    return out


def _is_paired(root: Path) -> bool:
    if not root.is_dir():
        return False
    for sub in root.iterdir():
        if sub.is_dir():
            kids = {p.name.lower() for p in sub.iterdir() if p.is_dir()}
            if {"lq", "gt"} <= kids:
                return True
    return False


def _set_label(deg: "DegradationSpec") -> str:
    if not deg.params:
        return deg.type
    return deg.type + "(" + ", ".join(f"{k}={v}" for k, v in deg.params.items()) + ")"


def build_sets(data: Sequence[str | Path], degradations: Sequence["DegradationSpec"], seed: int = 0,
               limit: int | None = None, registry: "Registry | None" = None) -> list[EvalSet]:
    """Evaluation sets: each clean folder under each degradation, or each degradation of a paired root;
    degradations built through ``registry`` (the pipeline's)."""
    from .data.datasets import PairedFolders, SyntheticDegradations

    sets: list[EvalSet] = []
    for root in data:
        root = Path(root).expanduser()
        if not root.exists():
            raise FileNotFoundError(f"evaluation data {root}: no such folder")
        base = root.name or str(root)
        if _is_paired(root):
            ds = PairedFolders(root, patch_size=None, balanced=False, seed=seed, flips=False)
            for k, name in enumerate(ds.names):
                idx = [i for i, (kk, _) in enumerate(ds.flat) if kk == k]
                if limit is not None:
                    idx = idx[:limit]
                if idx:
                    sets.append(EvalSet(f"{base}/{name}", str(root), name, ds, idx))
            continue
        if not degradations:
            raise ValueError(f"{root} holds clean images: give degradations (--degradations noise,jpeg)")
        for deg in degradations:
            ds = SyntheticDegradations([root], [{"name": deg.type, "params": dict(deg.params)}], patch_size=None,
                                       seed=seed, balanced=True, flips=False, registry=registry)
            n = len(ds.files) if limit is None else min(limit, len(ds.files))
            ds.length = len(ds.files)
            label = ds.names[0]
            sets.append(EvalSet(f"{base}/{_set_label(deg)}", str(root), label, ds, list(range(n))))
    return sets


def pair_sets(lq_dirs: Sequence[str | Path], gt_dirs: Sequence[str | Path], label: str | None = None,
              limit: int | None = None, held_out: int = 0) -> list[EvalSet]:
    """One set per pair of folders (degraded, ground truth): :class:`vlir.core.data.pairs.FolderPairs`,
    labelled ``label`` or the degraded folder's name; with ``held_out``, only the last N pairs (the
    training split a spec's ``data.pairs[].hold_out`` keeps out)."""
    from .data.pairs import FolderPairs

    sets = []
    for lq, gt in zip(lq_dirs, gt_dirs):
        lq, gt = Path(lq).expanduser(), Path(gt).expanduser()
        word = label or norm_label(lq.name)
        ds = FolderPairs(lq, gt, word, hold_out=held_out, held=bool(held_out))
        n = len(ds) if limit is None else min(limit, len(ds))
        sets.append(EvalSet(f"{lq.parent.name}/{lq.name}" if lq.parent.name else lq.name, str(lq), word, ds,
                            list(range(n))))
    return sets


class Photos:
    """Degraded photos without ground truth: item ``i`` is ``{"lq": [3, H, W], "path": str}``, or
    ``None`` (with a warning) for one that cannot be read (e.g. over the pixel limit)."""

    def __init__(self, files: Sequence[Path]):
        self.files = list(files)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict[str, Any] | None:
        import logging

        from .data.images import ImageError, read_image

        try:
            img, _ = read_image(self.files[i])
        except ImageError as e:
            logging.getLogger("vlir.eval").warning("skipping %s: %s", e.path, e.reason)
            return None
        return {"lq": img, "path": str(self.files[i])}


def photo_sets(data: Sequence[str | Path], limit: int | None = None) -> list[EvalSet]:
    """One no-reference set per folder of degraded photos (unreadable files skipped with a warning)."""
    from .cli import CLIError
    from .data.datasets import list_images, scan_images

    sets = []
    for root in data:
        root = Path(root).expanduser()
        if not root.exists():
            raise FileNotFoundError(f"evaluation data {root}: no such folder")
        if _is_paired(root):
            raise CLIError(f"evaluation data {root}: paired folders <degradation>/{{LQ,GT}} have a ground truth: "
                           "evaluate them without --no-reference")
        files, _ = scan_images(list_images(root), what=f"photos under {root}")
        if not files:
            raise FileNotFoundError(f"evaluation data {root}: no readable images")
        files = files[:limit] if limit is not None else files
        sets.append(EvalSet(root.name or str(root), str(root), "", Photos(files), list(range(len(files))),
                            reference=False))
    return sets


def _classifier(perceptions: dict[str, Any]) -> tuple[str, Any] | None:
    for role, p in perceptions.items():
        if getattr(p, "class_probs", None) is not None and getattr(p, "class_names", None):
            return role, p
    return None


def _crop_box(h: int, w: int, size: int) -> tuple[int, int, int, int]:
    s = min(size, h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return top, left, s, s


def _sync(device: "torch.device") -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _mean(rows: list[dict[str, Any]], key: str) -> float | None:
    from .metrics import mean_finite

    vals = [r[key] for r in rows if r.get(key) is not None]
    if not vals:
        return None
    m = mean_finite(vals)
    return None if math.isnan(m) else m


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"n": len(rows)}
    for k in metrics.columns():
        out[k] = _mean(rows, k)
    from .noref import KEYS

    for k in ("quality_score", *KEYS):
        if any(k in r for r in rows):
            out[k] = _mean(rows, k)
    return out


def evaluate(pipeline: "Pipeline", sets: Sequence[EvalSet], out: str | Path, *, crop_border: int = 0,
             tile: int | None = None, overlap: int | None = None, steps: int | None = None, seed: int = 0,
             crops: int = 4,
             crop_size: int = 96, headline_y: bool = False, progress: bool = True,
             name: str | None = None, ensemble: bool = False, noref_crop: int | None = None,
             precision: str | None = None, chain: int | None = None) -> dict[str, Any]:
    """Run ``pipeline`` on every set, write the report files into ``out`` and return the results.

    ``chain`` (at least 1) restores as ``vlir restore`` does, step by step with the do-no-harm rules
    (:func:`vlir.core.chain.restore_steps`, at most ``chain`` steps; each image's steps in its row);
    None: one restoration by the pipeline's own routing (``Pipeline.restore``).

    Sets without ground truth get :func:`vlir.core.noref.before_after` on the central ``noref_crop``
    pixels (default ``noref.DEFAULT_CROP``; 0: whole images), grouped by the recognised degradation.
    """
    import torch
    from tqdm.auto import tqdm

    from . import noref
    from .chain import restore_steps
    from .data.images import write_image
    from .io import remove_stale_temp
    from .metrics import score

    noref_crop = noref.DEFAULT_CROP if noref_crop is None else noref_crop

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for folder in (out, out / "crops"):
        remove_stale_temp(folder)  # hidden *.tmp files of writes an earlier run did not finish
    device = pipeline.device
    pipeline.eval()
    per_image: list[dict[str, Any]] = []
    crop_rows: list[dict[str, Any]] = []
    confusion: dict[tuple[str, int], int] = {}
    cls_names: list[str] | None = None
    cls_role: str | None = None
    restore_time = 0.0
    n_images = 0
    total = sum(len(s) for s in sets)
    bar = tqdm(total=total, disable=not progress, desc="eval", dynamic_ncols=True, mininterval=0.5)
    try:
        for si, es in enumerate(sets):
            shown = 0
            for j, item in enumerate(es.items()):
                lq = item["lq"][None].to(device)
                gt = item["gt"][None] if es.reference else None
                gen = torch.Generator(device=device).manual_seed(seed * 1_000_003 + si * 10_007 + j)
                _sync(device)
                t0 = time.perf_counter()
                taken = None
                with torch.no_grad():
                    if chain is None:
                        restored, perceptions = pipeline.restore(lq, tile=tile, overlap=overlap, steps=steps,
                                                                 generator=gen, ensemble=ensemble, dtype=precision)
                    else:
                        restored, perceptions, paths = restore_steps(pipeline, lq, steps=chain, tile=tile,
                                                                     overlap=overlap, generator=gen, ensemble=ensemble)
                        taken = str(paths[0])
                _sync(device)
                restore_time += time.perf_counter() - t0
                n_images += 1
                restored = restored.float().cpu().clamp(0, 1)
                lq_cpu = lq.float().cpu()
                row: dict[str, Any] = {"set": es.name, "data": es.data, "degradation": es.degradation,
                                       "path": item.get("path", ""), "height": int(lq.shape[-2]),
                                       "width": int(lq.shape[-1])}
                if taken is not None:
                    row["steps"] = taken
                if es.reference:
                    row.update(score(restored, gt, crop_border))
                    row.update(score(lq_cpu, gt, crop_border, prefix="input_"))
                    undefined = [m.label for m in metrics.TABLE if row[m.name] is None]
                    if undefined:  # e.g. SSIM on an image smaller than its window: n/a, the rest counts
                        row["n/a"] = " ".join(undefined)
                        border = f" less a {crop_border}-pixel border" if crop_border else ""
                        tqdm.write(f"warning: {row['path'] or es.name}: {row['width']}x{row['height']} pixels{border} "
                                   f"is too small for {', '.join(undefined)}: n/a for this image", file=sys.stderr)
                else:
                    row.update(noref.before_after(lq_cpu, restored, noref_crop))
                found = _classifier(perceptions)
                if found is not None:
                    role, p = found
                    if cls_names is None:
                        cls_names, cls_role = list(p.class_names), role
                    k = int(p.class_probs[0].argmax())
                    row["predicted"] = cls_names[k]
                    row["confidence"] = float(p.class_probs[0, k])
                    if es.reference:
                        confusion[(es.degradation, k)] = confusion.get((es.degradation, k), 0) + 1
                if not es.reference:  # grouped by the degradation recognised
                    row["degradation"] = row.get("predicted", "unrecognised")
                for p in perceptions.values():
                    if getattr(p, "quality_score", None) is not None:
                        row["quality_score"] = float(p.quality_score[0])
                        break
                per_image.append(row)
                if shown < crops:
                    top, left, hh, ww = _crop_box(lq.shape[-2], lq.shape[-1], crop_size)
                    stem = f"{si:02d}_{j:03d}"
                    files = {}
                    shots = (("lq", lq_cpu), ("restored", restored)) + ((("gt", gt),) if es.reference else ())
                    for key, img in shots:
                        rel = f"crops/{stem}_{key}.png"
                        write_image(out / rel, img[0, :, top:top + hh, left:left + ww])
                        files[key] = rel
                    scores = ("psnr", "input_psnr") if es.reference else noref.KEYS
                    crop_rows.append({"set": es.name, "path": row["path"], **{k: row[k] for k in scores}, **files})
                    shown += 1
                bar.update(1)
    finally:
        bar.close()

    sets_out = []
    for es in sets:
        rows = [r for r in per_image if r["set"] == es.name]
        sets_out.append({"name": es.name, "data": es.data, "degradation": es.degradation,
                         "reference": es.reference, **_summary(rows)})
    per_deg = {}
    for label in dict.fromkeys([es.degradation for es in sets if es.reference] + [r["degradation"] for r in per_image]):
        per_deg[label] = _summary([r for r in per_image if r["degradation"] == label])
    classification = None
    if cls_names is not None and any(es.reference for es in sets):
        labels = list(dict.fromkeys(es.degradation for es in sets if es.reference))
        mapping = match_classes(labels, cls_names)
        matrix = [[confusion.get((lab, k), 0) for k in range(len(cls_names))] for lab in labels]
        correct = sum(confusion.get((lab, mapping[lab]), 0) for lab in labels if mapping[lab] is not None)
        mapped_n = sum(sum(matrix[i]) for i, lab in enumerate(labels) if mapping[lab] is not None)
        per_label = {lab: (matrix[i][mapping[lab]] / max(1, sum(matrix[i])) if mapping[lab] is not None else None)
                     for i, lab in enumerate(labels)}
        classification = {
            "perceiver": cls_role, "classes": cls_names, "labels": labels,
            "mapping": {lab: (cls_names[k] if k is not None else None) for lab, k in mapping.items()},
            "matrix": matrix, "n": mapped_n, "accuracy": correct / mapped_n if mapped_n else None,
            "per_label": per_label, "unmapped": [lab for lab in labels if mapping[lab] is None],
        }
    from . import __version__

    results = {
        "pipeline": name, "vlir": __version__, "device": str(device),
        "precision": str(precision or "fp32"), "chain": chain, "seed": seed, "crop_border": crop_border,
        "tile": tile, "overlap": overlap, "steps": steps, "ensemble": ensemble,
        "headline": "psnr_y" if headline_y else "psnr",
        "reference": all(es.reference for es in sets),
        "noref_crop": None if all(es.reference for es in sets) else noref_crop,
        "overall": _summary(per_image), "per_degradation": per_deg, "sets": sets_out,
        "classification": classification,
        "speed": {"images": n_images, "seconds": restore_time,
                  "images_per_second": n_images / restore_time if restore_time > 0 else None},
        "crops": crop_rows, "images": per_image,
    }
    write_outputs(results, out)
    return results


def _csv_text(rows: list[dict[str, Any]], columns: list[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})
    return buf.getvalue()


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def write_outputs(results: dict[str, Any], out: str | Path) -> dict[str, Path]:
    """results.json, summary.csv, per_image.csv, summary.png and report.html in ``out``."""
    from .io import atomic_write_text
    from .noref import KEYS
    from .report import bar_chart, write_html

    out = Path(out)
    paths = {k: out / v for k, v in (("json", "results.json"), ("summary_csv", "summary.csv"),
                                    ("images_csv", "per_image.csv"), ("png", "summary.png"),
                                    ("html", "report.html"))}
    atomic_write_text(paths["json"], json.dumps(_json_safe(results), indent=2) + "\n")
    ref = results.get("reference", True)
    kinds = {s.get("reference", True) for s in results["sets"]}
    measured = (metrics.columns() if True in kinds or not kinds else []) + ([*KEYS] if False in kinds else [])
    cols = ["scope", "name", "n", *measured, "quality_score"]
    rows = [{"scope": "degradation", "name": k, **v} for k, v in results["per_degradation"].items()]
    rows += [{"scope": "set", **s} for s in results["sets"]]
    rows.append({"scope": "all", "name": "all", **results["overall"]})
    atomic_write_text(paths["summary_csv"], _csv_text(rows, cols))
    img_cols = ["set", "degradation", "path", "height", "width", *measured, "n/a", "predicted", "confidence",
                "quality_score"] + (["steps"] if results.get("chain") else [])
    atomic_write_text(paths["images_csv"], _csv_text(results["images"], img_cols))
    key = results.get("headline", "psnr") if ref else "niqe"
    groups = list(results["per_degradation"])
    series = {"input": [results["per_degradation"][g].get(f"input_{key}") or float("nan") for g in groups],
              "restored": [results["per_degradation"][g].get(key) or float("nan") for g in groups]}
    if ref:
        bar_chart(paths["png"], groups, series, title=f"{metrics.get(key).label} per degradation",
                  ylabel=metrics.get(key).unit)
    else:
        bar_chart(paths["png"], groups, series, title="NIQE per recognised degradation", ylabel="NIQE")
    write_html(paths["html"], results, chart=paths["png"].name)
    return paths


# -- command line ------------------------------------------------------------------------------
def _crop_arg(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected 0 (whole images) or a size in pixels, got {text!r}")
    return n


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pipeline", help="saved pipeline folder or spec file")
    p.add_argument("--data", nargs="+", metavar="PATH",
                   help="clean image folders (degraded with a fixed seed) or paired roots <degradation>/{LQ,GT} "
                        "(with --no-reference: degraded photos); default: the spec's eval.data")
    p.add_argument("--gt", nargs="+", metavar="DIR",
                   help="ground-truth folders of real pairs: each --data folder holds the degraded images, the "
                        "--gt folder at the same place their clean versions (same names, or rain-N / norain-N)")
    p.add_argument("--label", metavar="WORD",
                   help="with --gt: the degradation word of the pairs (e.g. low-light), for the per-degradation "
                        "tables and the recognition accuracy (default: the --data folder's name)")
    p.add_argument("--held-out", type=int, default=0, metavar="N",
                   help="with --gt: score only the last N pairs (in name order), the split a spec's "
                        "data.pairs[].hold_out keeps out of training")
    p.add_argument("--no-reference", action="store_true",
                   help="the --data folders hold degraded photos without ground truth: report NIQE, noise sigma "
                        "and sharpness before and after restoration, per image and per recognised degradation")
    p.add_argument("--noref-crop", type=_crop_arg, metavar="N",
                   help="no-reference measures on the central N x N pixels of each image (default: 768; 0: the "
                        "whole image; NIQE takes about 1 s per 768 x 768 on a CPU)")
    p.add_argument("--degradations", type=parse_degradations, metavar="LIST",
                   help="e.g. noise,jpeg:quality=20,noise:sigma=50 (default: eval.degradations, then "
                        f"data.degradations, then {','.join(DEFAULT_DEGRADATIONS)})")
    p.add_argument("--seed", type=int, help="seed of the synthetic degradations (default: eval.seed, 0)")
    p.add_argument("--out", metavar="DIR", help="report folder (default: beside the pipeline)")
    p.add_argument("--tile", type=int, metavar="N", help="restore in N x N tiles")
    p.add_argument("--overlap", type=int, metavar="N", help="tile overlap in pixels (default: a quarter tile, at most 32, "
                                                            "fitted to the model's tiling grid)")
    p.add_argument("--max-pixels", type=max_pixels_arg, metavar="N", help=max_pixels_help())
    p.add_argument("--ensemble", action="store_true", help="self-ensemble: the flips and quarter turns the degradation allows, averaged (up to 8x slower)")
    p.add_argument("--crop-border", type=int, metavar="N", help="pixels left out at each border for the metrics")
    p.add_argument("--limit", type=int, metavar="N", help="at most N images per folder and degradation")
    p.add_argument("--steps", type=int, metavar="N", help="sampling steps of diffusion pipelines")
    p.add_argument("--chain", type=int, metavar="K", help="restore as vlir restore does: step by step with the "
                   "do-no-harm rules, at most K steps (default: one restoration by the pipeline's routing)")
    p.add_argument("--crops", type=int, metavar="N",
                   help="example crops per set in the report (default: eval.crops; --no-reference: every image, "
                        f"at most {NOREF_CROPS})")
    p.add_argument("--y", action="store_true", help="headline metric on the Y channel")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def default_out(source: Path) -> Path:
    if source.is_dir():
        return source.parent / "eval" if source.name == "pipeline" else source.parent / f"{source.name}-eval"
    return Path(f"{source.stem}-eval")


def run_eval(args: argparse.Namespace) -> int:
    import logging

    from .cli import resolve_device
    from .inference import tile_plan
    from .pipeline import Pipeline
    from .precision import autocast_dtype
    from .sections import EvalSpec

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    source = Path(args.pipeline)
    if not source.exists():
        raise UserError(f"{source}: no such pipeline folder or spec file")
    if source.is_dir() and not (source / "spec.yaml").is_file() and (source / "pipeline" / "spec.yaml").is_file():
        source = source / "pipeline"  # a training run folder: its final pipeline
    device = resolve_device(args.device)
    autocast_dtype(args.precision, device)  # fp16 on a CPU: refused before any work
    if args.chain is not None and args.precision not in (None, "fp32"):
        raise UserError("--chain restores in fp32; leave out --precision")
    if args.chain is not None and args.chain < 1:
        raise UserError(f"--chain must be at least 1 step, got {args.chain}")
    pipe = Pipeline.open(source)
    pipe = pipe.to(device).eval()
    if args.chain is not None and args.chain > 1:
        from .chain import why_not_steerable

        if reason := why_not_steerable(pipe):
            raise UserError(f"--chain {args.chain} needs a pipeline that can be steered: {reason}")
    spec = pipe.spec
    ev = spec.eval or EvalSpec()
    tile, overlap = tile_plan(pipe, args.tile if args.tile is not None else ev.tile, args.overlap)
    data = args.data or ev.data
    if not data:
        raise UserError("no evaluation data: give --data FOLDER (or eval.data in the spec)")
    degradations = args.degradations or ev.degradations or (spec.data.degradations if spec.data else [])
    if not degradations:
        degradations = parse_degradations(",".join(DEFAULT_DEGRADATIONS))
    seed = ev.seed if args.seed is None else args.seed
    from .data.images import MAX_PIXELS, TILED_MAX_PIXELS, set_max_pixels

    set_max_pixels(args.max_pixels if args.max_pixels is not None else TILED_MAX_PIXELS if tile else MAX_PIXELS)
    limit = args.limit if args.limit is not None else ev.limit
    if args.noref_crop is not None and not args.no_reference:
        raise UserError("--noref-crop applies to --no-reference (photos without ground truth) only")
    if args.gt and (args.no_reference or len(args.gt) != len(data)):
        raise UserError("--gt needs one ground-truth folder per --data folder, and no --no-reference")
    if (args.label or args.held_out) and not args.gt:
        raise UserError("--label and --held-out apply to real pairs given by --gt only")
    try:
        if args.no_reference:
            sets = photo_sets(data, limit=limit)
        elif args.gt:
            sets = pair_sets(data, args.gt, args.label, limit=limit, held_out=args.held_out)
        else:
            sets = build_sets(data, degradations, seed=seed, limit=limit, registry=pipe.registry)
    except (ValueError, FileNotFoundError) as e:  # unusable folders: name them (--data)
        raise UserError(f"--data: {e}") from e
    if args.no_reference:
        crops = NOREF_CROPS if args.crops is None else args.crops
    else:
        crops = ev.crops if args.crops is None else args.crops
    out = Path(args.out) if args.out else default_out(source)
    results = evaluate(pipe, sets, out, crop_border=ev.crop_border if args.crop_border is None else args.crop_border,
                       tile=tile, overlap=overlap,
                       steps=args.steps if args.steps is not None else ev.steps, seed=seed, crops=crops,
                       crop_size=256 if args.no_reference else 96,
                       headline_y=args.y or ev.test_y_channel, progress=not args.quiet, name=str(source),
                       ensemble=args.ensemble, noref_crop=args.noref_crop, precision=args.precision,
                       chain=args.chain)
    if args.no_reference:
        _print_noref(results)
        print(f"report: {out / 'report.html'}")
        return 0
    head = metrics.get(results["headline"])
    shown = [m for m in metrics.TABLE if m.y_channel == head.y_channel]  # RGB or Y metrics, as the headline
    w = max([len(k) for k in results["per_degradation"]] + [11])
    print(f"{'degradation':<{w}}  {'images':>6}  {'input ' + head.name:>12}"
          + "".join(f"  {m.name:>8}" for m in shown))
    rows = [*results["per_degradation"].items(), ("all", results["overall"])]
    for k, v in rows:
        print(f"{k:<{w}}  {v['n']:>6}  {_num(v.get('input_' + head.name), head):>12}"
              + "".join(f"  {_num(v.get(m.name), m):>8}" for m in shown))
    c = results["classification"]
    if c and c.get("accuracy") is not None:
        print(f"degradation classification accuracy ({c['perceiver']}): {c['accuracy']:.3f} over {c['n']} images")
    ips = results["speed"]["images_per_second"]
    print(f"speed: {'-' if ips is None else f'{ips:.3f}'} images/s on {results['device']}")
    print(f"report: {out / 'report.html'}")
    return 0


def _print_noref(results: dict[str, Any]) -> None:
    from .noref import MEASURES

    heads = [f"{m.label} {'↑' if m.higher_is_better else '↓'}" for m in MEASURES]
    w = max([len(k) for k in results["per_degradation"]] + [22])
    cw = max(len(h) for h in heads) + 8
    print(f"{'recognised degradation':<{w}}  {'images':>6}  " + "  ".join(f"{h + ' in → out':>{cw}}" for h in heads))
    rows = [*results["per_degradation"].items(), ("all", results["overall"])]
    for k, v in rows:
        cells = [f"{m.format(v.get('input_' + m.name))} → {m.format(v.get(m.name))}" for m in MEASURES]
        print(f"{k:<{w}}  {v['n']:>6}  " + "  ".join(f"{c:>{cw}}" for c in cells))
    ips = results["speed"]["images_per_second"]
    crop = results["noref_crop"]
    print(f"speed: {'-' if ips is None else f'{ips:.3f}'} images/s on {results['device']}; measures on "
          + (f"the central {crop}x{crop} pixels" if crop else "whole images") + "; per image: per_image.csv")


def _num(v: Any, metric: "Metric") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else metric.format(v)


add_arguments = add_eval_arguments
run = run_eval
