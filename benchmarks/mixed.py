"""Mixed degradations: one restoration step against step-by-step restoration.

Makes a seeded mixed set from clean validation images in ``../shared/data`` (Val20 by default, not a
test set), with four mixes applied in physical order: low light + noise, haze + JPEG,
blur + noise + JPEG, rain + JPEG. Each image is restored once (the pipeline's own routing) and
step by step (``vlir.core.chain.restore_steps``, ``--chain`` steps); PSNR against the clean image
for the input, one step and the chain, the paths taken, and the share of images in which the
perceiver sees every degradation of the mix (``vlir.core.chain.seen_classes`` of the input). Writes
``benchmarks/results/mixed.json`` and ``mixed.md``.

    python benchmarks/mixed.py [--pipeline DIR] [--data ../shared/data/Val20] [--limit 8] [--size 256] [--chain 3]
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
sys.path.insert(0, str(ROOT / "benchmarks"))
import _common as C  # noqa: E402

# each mix: (name, [(degradation, params), ...]) applied in this (physical) order
MIXES = [
    ("low light + noise", [("low_light", {"scale": (0.15, 0.4), "shot": 0.0, "read": 0.0}), ("noise", {"sigma": (10.0, 25.0)})]),
    ("haze + JPEG", [("haze", {}), ("jpeg", {"quality": (20, 40)})]),
    ("blur + noise + JPEG", [("blur", {}), ("noise", {"sigma": (5.0, 15.0)}), ("jpeg", {"quality": (30, 60)})]),
    ("rain + JPEG", [("rain", {}), ("jpeg", {"quality": (30, 60)})]),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pipeline", default="default", help="pipeline folder, spec file or 'default' (the built-in model)")
    p.add_argument("--data", default=str(SHARED / "data" / "Val20"), help="clean images (not a test set)")
    p.add_argument("--limit", type=int, default=8, help="images per mix")
    p.add_argument("--size", type=int, default=256, help="central crop (pixels)")
    p.add_argument("--chain", type=int, default=3, help="at most this many steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(RESULTS / "mixed.json"), help="JSON output (markdown beside it)")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    import vlir
    from vlir.core.chain import restore_steps, seen_classes
    from vlir.core.classes import degradation_word
    from vlir.core.data.datasets import list_images
    from vlir.core.data.images import read_image
    from vlir.core.metrics import psnr_torch

    torch.set_num_threads(args.threads)
    pipe = vlir.load(args.pipeline)
    reg = pipe.registry
    paths = [p for p in list_images(args.data) if min(read_image(p)[0].shape[-2:]) >= args.size][: args.limit]
    if not paths:
        raise SystemExit(f"{args.data}: no images of at least {args.size} pixels")
    clean = []
    for p in paths:
        x = read_image(p)[0]
        h, w = x.shape[-2:]
        top, left = (h - args.size) // 2, (w - args.size) // 2
        clean.append(x[:, top:top + args.size, left:left + args.size])
    rows = []
    start = time.perf_counter()
    for m, (name, parts) in enumerate(MIXES):
        mods = [reg.load("degradation", t)(**kw) for t, kw in parts]
        words = [degradation_word(d) for d in mods]
        res: dict[str, Any] = {"mix": name, "words": words, "input": [], "one": [], "chain": [], "paths": [],
                               "seen": []}
        for i, x in enumerate(clean):
            g = torch.Generator().manual_seed(args.seed * 1000 + m * 100 + i)
            y = x[None]
            for d in mods:
                y = d(y, generator=g)
            with torch.inference_mode():
                one, perceptions, _ = restore_steps(pipe, y, steps=1)
                many, _, chain_paths = restore_steps(pipe, y, steps=args.chain)
            res["input"].append(float(psnr_torch(y, x[None])))
            res["one"].append(float(psnr_torch(one, x[None])))
            res["chain"].append(float(psnr_torch(many, x[None])))
            res["paths"].append(str(chain_paths[0]))
            res["seen"].append(seen_classes(pipe, perceptions))
        for k in ("input", "one", "chain"):
            res[f"{k}_mean"] = sum(res[k]) / len(res[k])
        res["common_paths"] = Counter(res["paths"]).most_common(3)
        res["all_seen"] = sum(set(words) <= set(seen) for seen in res["seen"]) / len(res["seen"])
        rows.append(res)
        print(f"{name}: input {res['input_mean']:.2f}  one step {res['one_mean']:.2f}  chain {res['chain_mean']:.2f} dB",
              flush=True)
    every = [set(r["words"]) <= set(seen) for r in rows for seen in r["seen"]]
    return {"pipeline": args.pipeline, "data": str(Path(args.data).name), "images": [p.name for p in paths],
            "all_seen": sum(every) / len(every),
            "size": args.size, "chain": args.chain, "seed": args.seed, "threads": args.threads,
            "seconds": round(time.perf_counter() - start, 1), "mixes": rows}


def markdown(data: dict[str, Any]) -> str:
    lines = [f"# Mixed degradations: one step vs step by step ({data['pipeline']})", "",
             f"{len(data['images'])} images of {data['data']} (central {data['size']}² crops), seed {data['seed']}, "
             f"chain of at most {data['chain']} steps. PSNR (dB) against the clean image.", "",
             "| mix | input | one step | chain | all parts seen | most common path |", "|---|---|---|---|---|---|"]
    for r in data["mixes"]:
        path = r["common_paths"][0][0] if r["common_paths"] else ""
        lines.append(f"| {r['mix']} | {r['input_mean']:.2f} | {r['one_mean']:.2f} | {r['chain_mean']:.2f} "
                     f"| {r['all_seen']:.0%} | {path} |")
    lines += ["", f"All parts of the mix seen by the perceiver in the input: {data['all_seen']:.0%} of the images "
                  "(`vlir.core.chain.seen_classes`).",
              "", f"Made by `python benchmarks/mixed.py` in {data['seconds']} s."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    return C.run_and_write(parse_args(argv), run, markdown)


if __name__ == "__main__":
    sys.exit(main())
