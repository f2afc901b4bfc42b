"""``vlir eval``: PSNR/SSIM per degradation, degradation classification, speed, and a report.

Evaluation sets are clean folders degraded with a FIXED seed (the same inputs every run), one
set per folder and degradation, or DA-CLIP paired folders ``root/<degradation>/{LQ,GT}``.
Metrics are BasicSR's (8-bit quantised, ``crop_border``, RGB and Y). When a perceiver gives
degradation class probabilities, the dataset's degradation words are matched to its class names
and accuracy and a confusion matrix are reported.

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
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from .cli import threads
from .data.images import max_pixels_arg, max_pixels_help
from .precision import add_argument as add_precision_argument

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .pipeline import Pipeline
    from .sections import DegradationSpec

DEFAULT_DEGRADATIONS = ("noise", "jpeg", "blur")
METRICS = ("psnr", "ssim", "psnr_y", "ssim_y", "input_psnr", "input_ssim", "input_psnr_y", "input_ssim_y")


@dataclass
class EvalSet:
    """One folder under one degradation: ``items()`` yields dataset items (whole images)."""

    name: str
    data: str
    degradation: str  # class word (e.g. noisy)
    dataset: Any
    indices: list[int]

    def __len__(self) -> int:
        return len(self.indices)

    def items(self):
        for i in self.indices:
            yield self.dataset[i]


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
               limit: int | None = None) -> list[EvalSet]:
    """Evaluation sets: each clean folder under each degradation, or each degradation of a paired root."""
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
                                       seed=seed, balanced=True, flips=False)
            n = len(ds.files) if limit is None else min(limit, len(ds.files))
            ds.length = len(ds.files)
            label = ds.names[0]
            sets.append(EvalSet(f"{base}/{_set_label(deg)}", str(root), label, ds, list(range(n))))
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
    for k in METRICS:
        out[k] = _mean(rows, k)
    if any("quality_score" in r for r in rows):
        out["quality_score"] = _mean(rows, "quality_score")
    return out


def evaluate(pipeline: "Pipeline", sets: Sequence[EvalSet], out: str | Path, *, crop_border: int = 0,
             tile: int | None = None, steps: int | None = None, seed: int = 0, crops: int = 4,
             crop_size: int = 96, headline_y: bool = False, progress: bool = True,
             name: str | None = None, ensemble: bool = False, precision: str | None = None) -> dict[str, Any]:
    """Run ``pipeline`` on every set, write the report files into ``out`` and return the results."""
    import torch
    from tqdm.auto import tqdm

    from .data.images import write_image
    from .metrics import psnr, ssim

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
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
                gt = item["gt"][None]
                gen = torch.Generator(device=device).manual_seed(seed * 1_000_003 + si * 10_007 + j)
                _sync(device)
                t0 = time.perf_counter()
                with torch.no_grad():
                    restored, perceptions = pipeline.restore(lq, tile=tile, steps=steps, generator=gen,
                                                                ensemble=ensemble, dtype=precision)
                _sync(device)
                restore_time += time.perf_counter() - t0
                n_images += 1
                restored = restored.float().cpu().clamp(0, 1)
                lq_cpu = lq.float().cpu()
                row: dict[str, Any] = {"set": es.name, "data": es.data, "degradation": es.degradation,
                                       "path": item.get("path", ""), "height": int(gt.shape[-2]),
                                       "width": int(gt.shape[-1])}
                for prefix, img in (("", restored), ("input_", lq_cpu)):
                    row[f"{prefix}psnr"] = psnr(img, gt, crop_border=crop_border)
                    row[f"{prefix}ssim"] = ssim(img, gt, crop_border=crop_border)
                    row[f"{prefix}psnr_y"] = psnr(img, gt, crop_border=crop_border, y_channel=True)
                    row[f"{prefix}ssim_y"] = ssim(img, gt, crop_border=crop_border, y_channel=True)
                found = _classifier(perceptions)
                if found is not None:
                    role, p = found
                    if cls_names is None:
                        cls_names, cls_role = list(p.class_names), role
                    k = int(p.class_probs[0].argmax())
                    row["predicted"] = cls_names[k]
                    row["confidence"] = float(p.class_probs[0, k])
                    confusion[(es.degradation, k)] = confusion.get((es.degradation, k), 0) + 1
                for p in perceptions.values():
                    if getattr(p, "quality_score", None) is not None:
                        row["quality_score"] = float(p.quality_score[0])
                        break
                per_image.append(row)
                if shown < crops:
                    top, left, hh, ww = _crop_box(gt.shape[-2], gt.shape[-1], crop_size)
                    stem = f"{si:02d}_{j:03d}"
                    files = {}
                    for key, img in (("lq", lq_cpu), ("restored", restored), ("gt", gt)):
                        rel = f"crops/{stem}_{key}.png"
                        write_image(out / rel, img[0, :, top:top + hh, left:left + ww])
                        files[key] = rel
                    crop_rows.append({"set": es.name, "path": row["path"], "psnr": row["psnr"],
                                      "input_psnr": row["input_psnr"], **files})
                    shown += 1
                bar.update(1)
    finally:
        bar.close()

    sets_out = []
    for es in sets:
        rows = [r for r in per_image if r["set"] == es.name]
        sets_out.append({"name": es.name, "data": es.data, "degradation": es.degradation, **_summary(rows)})
    per_deg = {}
    for label in dict.fromkeys(es.degradation for es in sets):
        per_deg[label] = _summary([r for r in per_image if r["degradation"] == label])
    classification = None
    if cls_names is not None:
        labels = list(dict.fromkeys(es.degradation for es in sets))
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
        "pipeline": name, "vlir": __version__, "device": str(device), "precision": str(precision or "fp32"),
        "seed": seed, "crop_border": crop_border,
        "tile": tile, "steps": steps, "ensemble": ensemble, "headline": "psnr_y" if headline_y else "psnr",
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
    from .report import bar_chart, write_html

    out = Path(out)
    paths = {k: out / v for k, v in (("json", "results.json"), ("summary_csv", "summary.csv"),
                                    ("images_csv", "per_image.csv"), ("png", "summary.png"),
                                    ("html", "report.html"))}
    atomic_write_text(paths["json"], json.dumps(_json_safe(results), indent=2) + "\n")
    cols = ["scope", "name", "n", *METRICS, "quality_score"]
    rows = [{"scope": "degradation", "name": k, **v} for k, v in results["per_degradation"].items()]
    rows += [{"scope": "set", **s} for s in results["sets"]]
    rows.append({"scope": "all", "name": "all", **results["overall"]})
    atomic_write_text(paths["summary_csv"], _csv_text(rows, cols))
    img_cols = ["set", "degradation", "path", "height", "width", *METRICS, "predicted", "confidence", "quality_score"]
    atomic_write_text(paths["images_csv"], _csv_text(results["images"], img_cols))
    key = results.get("headline", "psnr")
    groups = list(results["per_degradation"])
    series = {"input": [results["per_degradation"][g].get(f"input_{key}") or float("nan") for g in groups],
              "restored": [results["per_degradation"][g].get(key) or float("nan") for g in groups]}
    bar_chart(paths["png"], groups, series, title=f"{'PSNR-Y' if key == 'psnr_y' else 'PSNR'} per degradation",
              ylabel="dB")
    write_html(paths["html"], results, chart=paths["png"].name)
    return paths


# -- command line ------------------------------------------------------------------------------
def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pipeline", help="saved pipeline folder or spec file")
    p.add_argument("--data", nargs="+", metavar="PATH",
                   help="clean image folders (degraded with a fixed seed) or paired roots <degradation>/{LQ,GT}; "
                        "default: the spec's eval.data")
    p.add_argument("--degradations", type=parse_degradations, metavar="LIST",
                   help="e.g. noise,jpeg:quality=20,noise:sigma=50 (default: eval.degradations, then "
                        f"data.degradations, then {','.join(DEFAULT_DEGRADATIONS)})")
    p.add_argument("--seed", type=int, help="seed of the synthetic degradations (default: eval.seed, 0)")
    p.add_argument("--out", metavar="DIR", help="report folder (default: beside the pipeline)")
    p.add_argument("--tile", type=int, metavar="N", help="restore in N x N tiles")
    p.add_argument("--max-pixels", type=max_pixels_arg, metavar="N", help=max_pixels_help())
    p.add_argument("--ensemble", action="store_true", help="self-ensemble: the flips and quarter turns the degradation allows, averaged (up to 8x slower)")
    p.add_argument("--crop-border", type=int, metavar="N", help="pixels left out at each border for the metrics")
    p.add_argument("--limit", type=int, metavar="N", help="at most N images per folder and degradation")
    p.add_argument("--steps", type=int, metavar="N", help="sampling steps of diffusion pipelines")
    p.add_argument("--crops", type=int, metavar="N", help="example crops per set in the report")
    p.add_argument("--y", action="store_true", help="headline metric on the Y channel")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: CUDA when available)")
    p.add_argument("--threads", type=threads, metavar="N", help="CPU threads of torch")
    add_precision_argument(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def default_out(source: Path) -> Path:
    if source.is_dir():
        return source.parent / "eval" if source.name == "pipeline" else source.parent / f"{source.name}-eval"
    return Path(f"{source.stem}-eval")


def run_eval(args: argparse.Namespace) -> int:
    import logging

    import torch

    from .pipeline import Pipeline
    from .precision import autocast_dtype
    from .sections import EvalSpec
    from .train.ddp import pick_device

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    source = Path(args.pipeline)
    if source.is_dir() and not (source / "spec.yaml").is_file() and (source / "pipeline" / "spec.yaml").is_file():
        source = source / "pipeline"  # a training run folder: its final pipeline
    device = pick_device(args.device)
    autocast_dtype(args.precision, device)  # fp16 on a CPU: refused before any work
    pipe = Pipeline.open(source)
    pipe = pipe.to(device).eval()
    spec = pipe.spec
    ev = spec.eval or EvalSpec()
    data = args.data or ev.data
    if not data:
        raise FileNotFoundError("no evaluation data: give --data FOLDER (or eval.data in the spec)")
    degradations = args.degradations or ev.degradations or (spec.data.degradations if spec.data else [])
    if not degradations:
        degradations = parse_degradations(",".join(DEFAULT_DEGRADATIONS))
    seed = ev.seed if args.seed is None else args.seed
    from .data.images import MAX_PIXELS, TILED_MAX_PIXELS, set_max_pixels

    tiled = args.tile is not None or ev.tile is not None
    set_max_pixels(args.max_pixels if args.max_pixels is not None else TILED_MAX_PIXELS if tiled else MAX_PIXELS)
    sets = build_sets(data, degradations, seed=seed, limit=args.limit if args.limit is not None else ev.limit)
    out = Path(args.out) if args.out else default_out(source)
    results = evaluate(pipe, sets, out, crop_border=ev.crop_border if args.crop_border is None else args.crop_border,
                       tile=args.tile if args.tile is not None else ev.tile,
                       steps=args.steps if args.steps is not None else ev.steps, seed=seed,
                       crops=ev.crops if args.crops is None else args.crops,
                       headline_y=args.y or ev.test_y_channel, progress=not args.quiet, name=str(source),
                       ensemble=args.ensemble, precision=args.precision)
    key = results["headline"]
    skey = "ssim_y" if key == "psnr_y" else "ssim"
    w = max([len(k) for k in results["per_degradation"]] + [11])
    print(f"{'degradation':<{w}}  {'images':>6}  {'input ' + key:>12}  {key:>8}  {skey:>8}")
    rows = [*results["per_degradation"].items(), ("all", results["overall"])]
    for k, v in rows:
        print(f"{k:<{w}}  {v['n']:>6}  {_num(v.get('input_' + key)):>12}  {_num(v.get(key)):>8}  "
              f"{_num(v.get(skey), 4):>8}")
    c = results["classification"]
    if c and c.get("accuracy") is not None:
        print(f"degradation classification accuracy ({c['perceiver']}): {c['accuracy']:.3f} over {c['n']} images")
    ips = results["speed"]["images_per_second"]
    print(f"speed: {_num(ips, 3)} images/s on {results['device']}")
    print(f"report: {out / 'report.html'}")
    return 0


def _num(v: Any, digits: int = 2) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


add_arguments = add_eval_arguments
run = run_eval
