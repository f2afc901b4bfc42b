"""The chain's guard margin (``vlir.core.chain.GUARD``), from held-out synthetic images.

A multi-label perceiver's severity s of a class is defined by PSNR(clean, degraded) = 40 - 30 s, so a
right restoration of that class changes its input by about 40 - 30 s dB. For each validation image
(``--data``, default ``../shared/data/Set5``: the default specs' validation set, not a test set), each
single degradation of the pipeline's ``data.degradations`` (mixes and ``clean`` aside) and ``--seeds``
seeds, this degrades the image, reads the perceived severity of the true class, runs that class's
expert (as a chain step does) and records d = PSNR(input, output) - (40 - 30 s). A step is undone when
d < -GUARD; the guard should keep nearly every right step: the script reports the quantiles of d and
the share of right steps each margin would undo. Writes ``benchmarks/results/guard.json``.

    python benchmarks/guard.py --pipeline runs/default-v2b/pipeline [--data DIR] [--seeds 2]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SHARED = Path(os.environ.get("VLIR_SHARED", ROOT.parent / "shared"))
MARGINS = (3.0, 4.0, 5.0, 6.0, 8.0, 10.0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pipeline", required=True, help="pipeline folder with a multi-label perceiver")
    p.add_argument("--data", default=str(SHARED / "data" / "Set5"), help="held-out clean images (not a test set)")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(RESULTS / "guard.json"))
    args = p.parse_args(argv)

    import torch

    import vlir
    from vlir.core.chain import SATURATED, classes, multilabel, steer
    from vlir.core.classes import psnr_of
    from vlir.core.data.datasets import list_images
    from vlir.core.data.images import read_image
    from vlir.core.inference import run_backbone
    from vlir.core.metrics import psnr_torch

    torch.set_num_threads(args.threads)
    pipe = vlir.load(args.pipeline)
    if not multilabel(pipe):
        raise SystemExit(f"{args.pipeline}: the feeding perceiver is not multi-label")
    role, names = classes(pipe)
    entries = [d for d in pipe.spec.data.degradations if d.type not in ("mix", "clean")]
    rows = []
    for i, path in enumerate(list_images(args.data)):
        gt = read_image(path)[0][None]
        for e in entries:
            deg = pipe.registry.build("degradation", e.model_dump())
            word = deg.label
            for seed in range(args.seeds):
                with torch.no_grad():
                    x = deg(gt, generator=torch.Generator().manual_seed(1000 * i + seed)).clamp(0, 1)
                    seen = pipe.perceive(x)
                    s = float(seen[role].severity[0, names.index(word)])
                    y = run_backbone(pipe, x, pipe.condition(steer(pipe, seen, word))).clamp(0, 1)
                change = float(psnr_torch(y, x)[0])  # 100 dB when nothing changed
                rows.append({"image": path.name, "degradation": e.type, "word": word, "seed": seed,
                             "severity": round(s, 4), "change_db": round(change, 3),
                             "d": round(change - psnr_of(s), 3), "saturated": s >= SATURATED})
    ds = sorted(r["d"] for r in rows if not r["saturated"])
    q = lambda f: ds[min(len(ds) - 1, int(f * len(ds)))] if ds else None  # noqa: E731
    out = {"pipeline": args.pipeline, "data": Path(args.data).name, "seeds": args.seeds, "steps": len(rows),
           "checked": len(ds), "quantiles_d": {f"{f:g}": q(f) for f in (0.0, 0.01, 0.05, 0.1, 0.5)},
           "undone_share": {f"{m:g}": round(sum(d < -m for d in ds) / max(1, len(ds)), 4) for m in MARGINS},
           "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"{len(ds)} right steps checked (of {len(rows)}; severity >= {SATURATED} is never checked)")
    print("quantiles of d (dB):", out["quantiles_d"])
    print("share of right steps each margin would undo:", out["undone_share"])
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
