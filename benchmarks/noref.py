"""No-reference quality of a pipeline on real photos without ground truth.

Restores each photo of ``--data`` (RNI15's 15 real noisy photos by default) and scores the photo
and its restoration on their own with ``vlir.core.noref``: NIQE (BasicSR's, lower is better),
noise sigma in 8-bit levels (Immerkaer) and sharpness (variance of the Laplacian of Y), per image
and per degradation the perceiver recognises. It is ``vlir eval PIPELINE --data FOLDER
--no-reference``; this script keeps the figures in ``benchmarks/results/noref.json`` and ``noref.md``.

    python benchmarks/noref.py [--pipeline DIR] [--data ../shared/data/RNI15] [--limit N] [--crop 768]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SHARED = Path(os.environ.get("VLIR_SHARED", ROOT.parent / "shared"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pipeline", default=str(ROOT / "core" / "assets" / "default"),
                   help="pipeline folder or spec file (default: the built-in default model)")
    p.add_argument("--data", default=str(SHARED / "data" / "RNI15"),
                   help="folder of degraded photos (default: ../shared/data/RNI15, or $VLIR_SHARED/data/RNI15)")
    p.add_argument("--limit", type=int, help="at most this many photos (default: all)")
    p.add_argument("--crop", type=int, help="measure the central N x N pixels (default: vlir eval's; 0: whole)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--out", default=str(RESULTS / "noref.json"), help="JSON output (markdown beside it)")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from vlir.core import Pipeline, noref
    from vlir.core.evaluate import evaluate, photo_sets

    torch.set_num_threads(args.threads)
    pipe = Pipeline.open(args.pipeline).eval()
    sets = photo_sets([args.data], limit=args.limit)
    with tempfile.TemporaryDirectory() as tmp:
        res = evaluate(pipe, sets, tmp, crops=0, progress=False, name=args.pipeline, noref_crop=args.crop)
    keys = ["n", *noref.KEYS]
    return {
        "pipeline": Path(args.pipeline).name, "data": Path(args.data).name, "crop": res["noref_crop"],
        "vlir": res["vlir"], "device": res["device"], "torch_threads": args.threads,
        "per_degradation": {k: {m: v.get(m) for m in keys} for k, v in res["per_degradation"].items()},
        "overall": {m: res["overall"].get(m) for m in keys},
        "images": [{"image": Path(r["path"]).name, "predicted": r.get("predicted"), "confidence": r.get("confidence"),
                    **{m: r.get(m) for m in noref.KEYS}} for r in res["images"]],
        "seconds_restoring": res["speed"]["seconds"],
    }


def markdown(data: dict[str, Any]) -> str:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import _common as C

    from vlir.core.noref import MEASURES

    heads = [f"{m.label} {'↑' if m.higher_is_better else '↓'} (in → out)" for m in MEASURES]

    def cells(v: dict[str, Any]) -> list[str]:
        return [f"{m.format(v.get('input_' + m.name))} → {m.format(v.get(m.name))}" for m in MEASURES]

    crop = f"the central {data['crop']}x{data['crop']} pixels" if data["crop"] else "whole images"
    rows = [[k, v["n"], *cells(v)] for k, v in data["per_degradation"].items()]
    rows.append(["all", data["overall"]["n"], *cells(data["overall"])])
    lines = [f"No-reference quality of `{data['pipeline']}` on `{data['data']}` (photos without ground truth; "
             f"measured on {crop}; vlir {data['vlir']}, {data['device']}).", "",
             C.md_table(["recognised degradation", "photos", *heads], rows), "",
             C.md_table(["photo", "recognised", *heads],
                        [[i["image"], i["predicted"] or "–", *cells(i)] for i in data["images"]]), "",
             "Reproduce: `python benchmarks/noref.py` (the same as `vlir eval PIPELINE --data FOLDER --no-reference`)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import _common as C

    args = parse_args(argv)
    C.offline()
    data = run(args)
    json_path, md_path = C.write_outputs(data, markdown(data), args.out)
    print(md_path.read_text())
    print(f"wrote {json_path} and {md_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
