"""Dim photos taken in good light: how often a pipeline treats them as low-light.

A photo of a dark scene, or one exposed a little short, is not a low-light image in the sense of the
low-light expert (a dark, noisy capture whose reference is bright): brightening it makes it worse
(the PolyU crops of ``benchmarks/real_sets.py``). This darkens clean validation images (Set5 by
default, not a test set) by fixed factors, with no noise, and restores each in one step
(``vlir.core.chain.restore_steps``): per factor and pipeline, how many are treated as low-light and
how many come back unchanged, and the mean PSNR of the others against the darkened input (how
much they were changed). Writes ``benchmarks/results/dim.json`` and ``dim.md``.

    python benchmarks/dim.py [--pipeline default --pipeline runs/x/pipeline] [--data ../shared/data/Set5]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SHARED = Path(os.environ.get("VLIR_SHARED", ROOT.parent / "shared"))
FACTORS = (0.15, 0.2, 0.25, 0.3, 0.4)
LOW_LIGHT = "low-light"
sys.path.insert(0, str(ROOT / "benchmarks"))
import _common as C  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pipeline", action="append", help="pipeline folder, spec file or 'default' (repeatable)")
    p.add_argument("--data", default=str(SHARED / "data" / "Set5"), help="clean images (not a test set)")
    p.add_argument("--factors", type=float, nargs="+", default=list(FACTORS), help="brightness factors")
    p.add_argument("--limit", type=int, help="at most this many images")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(RESULTS / "dim.json"), help="JSON output (markdown beside it)")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    import vlir
    from vlir.core.chain import restore_steps
    from vlir.core.data.datasets import list_images
    from vlir.core.data.images import read_image
    from vlir.core.metrics import psnr_torch

    torch.set_num_threads(args.threads)
    files = list_images(args.data)[: args.limit]
    if not files:
        raise SystemExit(f"{args.data}: no images")
    images = [read_image(f)[0][None] for f in files]
    start = time.perf_counter()
    rows = []
    for name in args.pipeline or ["default"]:
        pipe = vlir.load(name)
        for s in args.factors:
            treated, unchanged, changes = 0, 0, []
            for x in images:
                dim = (x * s * 255).round() / 255  # an 8-bit photo, darker
                with torch.inference_mode():
                    out, _, paths = restore_steps(pipe, dim, steps=1)
                treated += bool(paths[0].steps) and paths[0].steps[0].word == LOW_LIGHT
                if torch.equal(out, dim):
                    unchanged += 1
                else:
                    changes.append(float(psnr_torch(out.clamp(0, 1), dim)))
            rows.append({"pipeline": name, "factor": s, "images": len(images), "low_light": treated,
                         "unchanged": unchanged, "change_psnr": sum(changes) / len(changes) if changes else None})
            print(f"{name} x{s}: {treated} of {len(images)} treated as low-light", flush=True)
    return {"data": Path(args.data).name, "images": [f.name for f in files], "threads": args.threads,
            "seconds": round(time.perf_counter() - start, 1), "rows": rows}


def markdown(data: dict[str, Any]) -> str:
    lines = [f"# Dim photos in good light: treated as low-light? ({len(data['images'])} images of {data['data']})", "",
             "Each image darkened by the factor (8-bit, no noise) and restored in one step. PSNR of the output "
             "against the darkened input over the changed images (how much they were changed).", "",
             "| pipeline | factor | treated as low-light | unchanged | PSNR of the changed vs input |",
             "|---|---|---|---|---|"]
    for r in data["rows"]:
        change = f"{r['change_psnr']:.2f}" if r["change_psnr"] is not None else "–"
        lines.append(f"| {r['pipeline']} | {r['factor']} | {r['low_light']} of {r['images']} | {r['unchanged']} "
                     f"| {change} |")
    lines += ["", f"Made by `python benchmarks/dim.py` in {data['seconds']} s."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    return C.run_and_write(parse_args(argv), run, markdown)


if __name__ == "__main__":
    sys.exit(main())
