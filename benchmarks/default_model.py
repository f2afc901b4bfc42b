"""Benchmark of the built-in default model against classical baselines.

For each synthetic degradation of held-out clean images (CBSD68 by default: the default model
is trained on McMaster, Set14 and Val20), with a fixed seed per image:

- PSNR / SSIM (RGB, 8-bit, BasicSR's definitions) of the degraded input, the model's output
  and each classical baseline of ``vlir.core.baselines`` suited to the degradation;
- degradation classification accuracy of the pipeline's perceiver (predicted class word vs
  the degradation's label) and the confusion counts;
- a "clean" row: what the model does to undegraded images (it should leave them alone; with a
  perceiver class "clean" its accuracy too, and how many images came back unchanged).

Gaussian noise is at sigma 25 on all CBSD68 images (the field's CBSD68 sigma 25 protocol); the
other degradations use the fixed settings of ``vlir demo`` on the first ``--limit-others``
images. Writes ``benchmarks/results/default_model.json`` and ``default_model.md``.

``--precision bf16`` (or ``auto``, ``fp16``): every image is also restored in that precision
(``Pipeline.restore(dtype=...)``, :mod:`vlir.core.precision`); each row gets its PSNR / SSIM,
the PSNR change against the fp32 row, the PSNR of its outputs against the fp32 outputs and the
restore time ratio. Written to ``default_model_<precision>.json`` / ``.md`` unless ``--out``.

    python benchmarks/default_model.py [--pipeline DIR] [--data ../shared/data/CBSD68]
    python benchmarks/default_model.py --precision bf16 [--limit 4 --limit-others 2]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SHARED = Path(os.environ.get("VLIR_SHARED", ROOT.parent / "shared"))
PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # vlir.core.precision.PRECISIONS (checked in run)


def settings() -> dict[str, dict[str, Any]]:
    """Degradation -> fixed params: those of ``vlir demo`` (noise: the CBSD68 sigma 25 protocol)."""
    from vlir.core.demo import DEMO_DEGRADATIONS

    return DEMO_DEGRADATIONS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pipeline", help="pipeline folder (default: the built-in default model)")
    p.add_argument("--data", default=str(SHARED / "data" / "CBSD68"),
                   help="folder of clean test images (default: ../shared/data/CBSD68, or $VLIR_SHARED/data/CBSD68)")
    p.add_argument("--degradations", nargs="+", help="degradation types (default: those the model was trained on)")
    p.add_argument("--limit", type=int, help="at most this many images for noise sigma 25 (default: all)")
    p.add_argument("--limit-others", type=int, default=20, help="images for each other degradation (default 20)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tile", type=int, help="restore on tiles of this size")
    p.add_argument("--ensemble", action="store_true", help="self-ensemble: the flips and quarter turns the degradation allows, averaged (up to 8x slower)")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-baselines", action="store_true")
    p.add_argument("--note", default="", help="free text stored with the results (e.g. a subset, the machine)")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS,
                   help="also restore in this precision and report the change against fp32 (default: fp32 only)")
    p.add_argument("--out", help="JSON output, markdown beside it (default: benchmarks/results/default_model.json, "
                                 "default_model_<precision>.json with --precision)")
    args = p.parse_args(argv)
    if args.out is None:
        suffix = "" if args.precision == "fp32" else f"_{args.precision}"
        args.out = str(RESULTS / f"default_model{suffix}.json")
    return args


def _mean(values: list[float]) -> float | None:
    """Mean over finite values (identical images give inf PSNR); None when there are none."""
    from vlir.core.metrics import mean_finite

    m = mean_finite(values)
    return None if m != m else round(m, 4)


def _scores(out, gt) -> tuple[float, float]:
    from vlir.core.metrics import psnr, ssim

    return psnr(out, gt), ssim(out, gt)


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from vlir.core import baselines
    from vlir.core.data.datasets import list_images
    from vlir.core.data.images import read_image
    from vlir.core.default import default_dir, open_pipeline
    from vlir.core.registry import get_registry
    from vlir.core.cli import resolve_device
    from vlir.core.restore import summarize

    from vlir.core.precision import PRECISIONS as known, autocast_dtype

    assert tuple(known) == PRECISIONS
    device = str(resolve_device(args.device))
    reduced = args.precision != "fp32"
    if reduced:
        autocast_dtype(args.precision, device)  # fp16 on a CPU: refused before any work
    folder = Path(args.pipeline) if args.pipeline else default_dir()
    pipe = open_pipeline(str(folder), None, device)
    files = list_images(args.data, recursive=False)
    if not files:
        raise SystemExit(f"no images in {args.data}")
    trained = [d.type for d in pipe.spec.data.degradations] if pipe.spec.data is not None else []
    # each type once (a spec may list one twice, as default-v2 does its mixes, to draw it more often)
    types = list(dict.fromkeys(t for t in (args.degradations or trained or list(settings())) if t != "clean"))
    if "noise" in types:  # the headline row first
        types = ["noise"] + [t for t in types if t != "noise"]
    reg = get_registry()
    rows = []
    t_start = time.time()

    def evaluate(name: str, params: dict[str, Any] | None, images: list[Path]) -> dict[str, Any]:
        deg = reg.build("degradation", name, params=params) if name != "clean" else None
        label = getattr(deg, "label", "") if deg is not None else "clean"  # a perceiver may have a clean class
        fns = baselines.baselines_for(name) if (deg is not None and not args.no_baselines) else {}
        acc: dict[str, list[float]] = {"in_psnr": [], "in_ssim": [], "psnr": [], "ssim": []}
        unchanged = 0  # outputs equal to their input (routed to no restoration)
        for b in fns:
            acc[f"{b}_psnr"], acc[f"{b}_ssim"] = [], []
        for k in ("p_psnr", "p_ssim", "p_vs_fp32", "t_fp32", "t_p"):
            acc[k] = []
        predicted: dict[str, int] = {}
        correct = 0
        t0 = time.time()
        for i, path in enumerate(images):
            gt, _ = read_image(path)
            gt = gt[None]
            if deg is None:
                lq = gt
            else:
                with torch.no_grad():
                    lq = deg(gt, generator=torch.Generator().manual_seed(args.seed * 100003 + i)).clamp(0, 1)
            def restore(dtype: str) -> tuple[Any, Any, float]:
                gen = torch.Generator(device=device).manual_seed(args.seed) if pipe.process is not None else None
                t = time.perf_counter()
                o, per = pipe.restore(lq.to(device), tile=args.tile, generator=gen, ensemble=args.ensemble, dtype=dtype)
                return o.float().cpu(), per, time.perf_counter() - t

            out, perceptions, t_fp32 = restore("fp32")
            if reduced:
                low, _, t_p = restore(args.precision)
                acc["t_fp32"].append(t_fp32), acc["t_p"].append(t_p)
                acc["p_vs_fp32"].append(_scores(low, out)[0])
                p, q = _scores(low, gt)
                acc["p_psnr"].append(p), acc["p_ssim"].append(q)
            unchanged += int(torch.equal(out, lq.float()))
            s = summarize(perceptions)
            if "degradation" in s:
                predicted[s["degradation"]] = predicted.get(s["degradation"], 0) + 1
                correct += int(s["degradation"] == label)
            p, q = _scores(lq, gt)
            acc["in_psnr"].append(p), acc["in_ssim"].append(q)
            p, q = _scores(out, gt)
            acc["psnr"].append(p), acc["ssim"].append(q)
            for b, fn in fns.items():
                p, q = _scores(baselines.apply(fn, lq), gt)
                acc[f"{b}_psnr"].append(p), acc[f"{b}_ssim"].append(q)
        classes = None
        for per in pipe.perceivers.values():
            classes = getattr(per, "class_names", None) or classes
        row: dict[str, Any] = {
            "degradation": name, "params": params or {}, "label": label or None, "images": len(images),
            "input": {"psnr": _mean(acc["in_psnr"]), "ssim": _mean(acc["in_ssim"])},
            "model": {"psnr": _mean(acc["psnr"]), "ssim": _mean(acc["ssim"])}, "unchanged": unchanged,
            "baselines": {b: {"psnr": _mean(acc[f"{b}_psnr"]), "ssim": _mean(acc[f"{b}_ssim"])} for b in fns},
            "predicted": dict(sorted(predicted.items(), key=lambda kv: -kv[1])),
            "accuracy": (round(correct / len(images), 4) if predicted and classes and label in classes else None),
            "seconds": round(time.time() - t0, 1),
        }
        if reduced:
            psnr_p, base = _mean(acc["p_psnr"]), row["model"]["psnr"]
            row["precision"] = {
                "name": args.precision, "psnr": psnr_p, "ssim": _mean(acc["p_ssim"]),
                "psnr_change": None if psnr_p is None or base is None else round(psnr_p - base, 4),
                "psnr_vs_fp32": _mean(acc["p_vs_fp32"]),
                "time_ratio": round(sum(acc["t_p"]) / sum(acc["t_fp32"]), 3),
            }
        print(f"{name:<12} n={len(images):<3} input {row['input']['psnr'] or float('inf'):6.2f}"
              f" -> model {row['model']['psnr'] or float('inf'):6.2f} dB"
              + "".join(f" | {b} {v['psnr']:.2f}" for b, v in row["baselines"].items())
              + (f" | accuracy {row['accuracy']:.2f}" if row["accuracy"] is not None else "")
              + (f" | {args.precision} {row['precision']['psnr_change']:+.3f} dB, time x{row['precision']['time_ratio']}"
                 if reduced and row["precision"]["psnr_change"] is not None else ""), file=sys.stderr)
        return row

    for name in types:
        images = files[:args.limit] if name == "noise" else files[:args.limit_others]
        rows.append(evaluate(name, settings().get(name, {}), images))
    rows.append(evaluate("clean", None, files[:args.limit_others]))
    labelled = [r for r in rows if r["accuracy"] is not None and r["degradation"] != "clean"]
    total = sum(r["images"] for r in labelled)
    return {
        "pipeline": str(folder),
        "pipeline_name": pipe.spec.name,
        "trained_on": trained,
        "data": str(args.data),
        "seed": args.seed,
        "tile": args.tile,
        "ensemble": args.ensemble,
        "precision": args.precision,
        **({"note": args.note} if args.note else {}),
        "metric": "PSNR (dB) / SSIM on RGB, 8-bit, no border crop (BasicSR)",
        "rows": rows,
        "classification_accuracy": (round(sum(r["accuracy"] * r["images"] for r in labelled) / total, 4)
                                    if total else None),
        "device": device,
        "machine": f"{platform.machine()} {platform.system()}, torch {torch.__version__}",
        "seconds": round(time.time() - t_start, 1),
    }


def markdown(result: dict[str, Any]) -> str:
    head = ["degradation", "params", "n", "input", "default model", "classical baselines", "accuracy"]
    prec = result.get("precision", "fp32")
    if prec != "fp32":
        head += [f"{prec}", f"{prec} − fp32 (dB)", f"{prec} vs fp32 output (dB)", "time ratio"]
    lines = [f"Default model `{result['pipeline_name'] or result['pipeline']}` on `{Path(result['data']).name}`"
             f" (seed {result['seed']}{', self-ensemble' if result.get('ensemble') else ''});"
             f" PSNR dB / SSIM, RGB, 8-bit.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def cell(v):
        if not v or v.get("psnr") is None:
            return "identical" if v else "–"
        return f"{v['psnr']:.2f} / {v['ssim']:.4f}"

    for r in result["rows"]:
        params = ", ".join(f"{k}={v}" for k, v in r["params"].items()) or "default"
        if r["degradation"] == "clean":
            params = "none"
        acc = f"{r['accuracy']:.2f}" if r["accuracy"] is not None else "–"
        model, u, n = cell(r["model"]), r.get("unchanged", 0), r["images"]
        if u and r["degradation"] == "clean":  # unchanged clean images have no finite PSNR
            model = "identical" if u == n else f"{u} of {n} unchanged<br>the others: {model}"
        elif u:
            model += f"<br>{u} of {n} unchanged"
        cells = [r["degradation"], params, str(n), cell(r["input"]), model,
                 "<br>".join(f"{b}: {cell(v)}" for b, v in r["baselines"].items()) or "–", acc]
        if "precision" in r:
            q = r["precision"]
            cells += [cell(q), "–" if q["psnr_change"] is None else f"{q['psnr_change']:+.3f}",
                      "identical" if q["psnr_vs_fp32"] is None else f"{q['psnr_vs_fp32']:.2f}",
                      f"{q['time_ratio']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    if result["classification_accuracy"] is not None:
        lines += ["", f"Degradation classification accuracy (all degraded rows): "
                      f"{result['classification_accuracy']:.3f}"]
    if result.get("note"):
        lines += ["", f"Note: {result['note']}"]
    if prec != "fp32":
        lines += ["", f"{prec}: the same images restored with `Pipeline.restore(dtype={prec!r})`; time ratio = "
                      f"{prec} restore time / fp32 restore time on {result['device']}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from vlir.core.default import DefaultModelMissing
    from vlir.core.io import atomic_write_text

    try:
        result = run(args)
    except DefaultModelMissing as e:
        print(f"default_model.py: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    md = markdown(result)
    atomic_write_text(out.with_suffix(".md"), md)
    print(md)
    print(f"wrote {out} and {out.with_suffix('.md')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
