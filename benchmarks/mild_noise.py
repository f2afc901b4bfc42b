"""Mild camera noise on validation photos: does ``vlir restore`` denoise it, and does it do harm?

Real photos from a phone or a camera at moderate ISO carry mild, spatially correlated noise (the
PolyU crops of ``benchmarks/real_sets.py`` are such, but a test set: nothing is chosen on it). This
gives the clean validation photos (Set5 by default, not a test set) vlir's ``camera_noise`` at fixed
mild ranges of its shot-noise parameter, without JPEG, seeded, and reports per range the input's PSNR,
``vlir restore``'s (step by step with the do-no-harm rules, ``vlir.core.chain.restore_steps``), the noise
expert's when told the image is noisy (``--degradation noisy``), the chain's with classes ordered by
severity alone (``before=None``: without ``vlir.core.chain.BEFORE``, noise before blur), the classical
bilateral filter's, the
feeding perceiver's presence of ``noisy`` and the steps taken. Writes ``benchmarks/results/mild_noise.json``
and ``mild_noise.md``.

    python benchmarks/mild_noise.py [--pipeline default] [--data ../shared/data/Set5]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SHARED = Path(os.environ.get("VLIR_SHARED", ROOT.parent / "shared"))
SHOTS = ((1e-4, 3e-4), (3e-4, 1e-3), (1e-3, 3e-3))  # camera_noise's shot ranges, mild to moderate
NOISY = "noisy"
sys.path.insert(0, str(ROOT / "benchmarks"))
import _common as C  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pipeline", default="default", help="pipeline folder, spec file or 'default'")
    p.add_argument("--data", default=str(SHARED / "data" / "Set5"), help="clean images (not a test set)")
    p.add_argument("--limit", type=int, help="at most this many images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(RESULTS / "mild_noise.json"), help="JSON output (markdown beside it)")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    import torch

    import vlir
    from vlir.core import baselines
    from vlir.core.chain import classes, default_steps, restore_steps
    from vlir.core.data.datasets import list_images
    from vlir.core.data.images import read_image
    from vlir.core.metrics import psnr_torch
    from vlir.core.registry import get_registry

    torch.set_num_threads(args.threads)
    files = list_images(args.data)[: args.limit]
    if not files:
        raise SystemExit(f"{args.data}: no images")
    pipe = vlir.load(args.pipeline)
    role, names = classes(pipe)
    steps = default_steps(pipe) or 1
    reg = get_registry()
    start = time.perf_counter()
    rows = []
    for shot in SHOTS:
        noise = reg.build("degradation", "camera_noise", params={"shot": list(shot), "jpeg_probability": 0.0})
        g = torch.Generator().manual_seed(args.seed)
        scores: dict[str, list[float]] = {"input": [], "restore": [], "severity": [], "told": [], "bilateral": []}
        presence, paths = [], Counter()
        for f in files:
            x = read_image(f)[0][None]
            y = (noise(x, generator=g).clamp(0, 1) * 255).round() / 255
            with torch.inference_mode():
                out, perceptions, done = restore_steps(pipe, y, steps=steps)
                by_severity, _, _ = restore_steps(pipe, y, steps=steps, before=None)
                told, _, _ = restore_steps(pipe, y, path=[NOISY]) if NOISY in names else (None, None, None)
            filtered = baselines.bilateral(y[0].permute(1, 2, 0).numpy())
            filtered = torch.from_numpy(np.ascontiguousarray(filtered)).permute(2, 0, 1)[None].float()
            for key, img in (("input", y), ("restore", out), ("severity", by_severity), ("told", told),
                             ("bilateral", filtered)):
                if img is not None:
                    scores[key].append(float(psnr_torch(img.float().clamp(0, 1), x)))
            p = perceptions[role].presence if role is not None else None
            presence.append(round(float(p[0, names.index(NOISY)]), 3) if p is not None and NOISY in names else None)
            paths[str(done[0])] += 1
        mean = {k: sum(v) / len(v) if v else None for k, v in scores.items()}
        rows.append({"shot": list(shot), "images": len(files), **mean,
                     "worse_than_input": sum(r < i for r, i in zip(scores["restore"], scores["input"])),
                     "presence": presence, "paths": paths.most_common()})
        print(f"shot {shot}: input {mean['input']:.2f} restore {mean['restore']:.2f} dB", flush=True)
    return {"pipeline": args.pipeline, "data": Path(args.data).name, "images": [f.name for f in files],
            "seed": args.seed, "steps": steps, "threads": args.threads,
            "seconds": round(time.perf_counter() - start, 1), "rows": rows}


def markdown(data: dict[str, Any]) -> str:
    def num(v):
        return "–" if v is None else f"{v:.2f}"

    lines = [f"# Mild camera noise: `{data['pipeline']}` on {len(data['images'])} images of {data['data']}", "",
             "vlir's `camera_noise` at each shot range, no JPEG, seed "
             f"{data['seed']}; PSNR (dB, RGB) against the clean image. `vlir restore`: step by step (at most "
             f"{data['steps']} steps) with the do-no-harm rules; told noisy: `--degradation noisy`.", "",
             "| shot | input | vlir restore | worse than input | by severity alone | told noisy | bilateral "
             "| presence of noisy | steps |", "|---|---|---|---|---|---|---|---|---|"]
    for r in data["rows"]:
        pres = ", ".join("–" if v is None else f"{v:.2f}" for v in r["presence"])
        paths = "; ".join(f"{p} ({n})" for p, n in r["paths"])
        lines.append(f"| {r['shot'][0]:g}-{r['shot'][1]:g} | {num(r['input'])} | {num(r['restore'])} "
                     f"| {r['worse_than_input']} of {r['images']} | {num(r['severity'])} | {num(r['told'])} "
                     f"| {num(r['bilateral'])} | {pres} "
                     f"| {paths} |")
    lines += ["", f"Made by `python benchmarks/mild_noise.py` in {data['seconds']} s."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    return C.run_and_write(parse_args(argv), run, markdown)


if __name__ == "__main__":
    sys.exit(main())
