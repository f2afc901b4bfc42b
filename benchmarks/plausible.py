"""The chain's plausibility bounds (``vlir.core.plausible.BOUNDS``), from the training data.

A multi-label perceiver can read a photo unlike its training data as low-light or hazy, and the
expert then brightens or dehazes a normal photo. Two plain statistics bound what those classes look
like: a low-light image is dark (mean luminance), a hazy one has a bright dark channel (He et al.).
This draws ``--samples`` training items (epoch after epoch) of a spec's perceiver stage (its ``data`` as that stage sees
it: the synthetic degradations and mixes on the training folders, the real LOL training pairs, the
stage's augmentations), and for each bounded class reports the statistic's quantiles over the items
that show the class and over the clean ones. The bound leaves out the most extreme 1% of the items
that show the class (the 99th percentile of low-light items' luminance, the 1st of hazy items' dark
channel): an image beyond it looks like at most 1 in 100 training images of that class, and is left
alone rather than treated on a guess. The same over the items whose severity of the class is saturated
(``vlir.core.classes.SATURATED`` and up) gives the narrower bound of saturated readings. No test set
is read.
Writes ``benchmarks/results/plausible.json``.

    python benchmarks/plausible.py [--spec specs/default-v2.yaml] [--stage perceiver] [--samples 3000]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
QUANTILES = (0.0, 0.01, 0.05, 0.5, 0.95, 0.99, 1.0)
SHARE = 0.99  # the share of a class's training items its bound keeps


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spec", default=str(ROOT / "specs" / "default-v2.yaml"))
    p.add_argument("--stage", default="perceiver", help="the stage whose training data is read")
    p.add_argument("--samples", type=int, default=12000, help="training items drawn (about 4 minutes on 2 cores)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(RESULTS / "plausible.json"))
    args = p.parse_args(argv)

    import torch

    from vlir.core.classes import CLEAN, SATURATED, parse_parts
    from vlir.core.plausible import BOUNDS, STATISTICS
    from vlir.core.registry import get_registry
    from vlir.core.spec import load_spec
    from vlir.core.train.data import build_dataset

    torch.set_num_threads(args.threads)
    spec = load_spec(args.spec)
    stage = next((s for s in spec.train.resolved_stages() if s.name == args.stage), None)
    if stage is None:
        raise SystemExit(f"{args.spec}: no stage named {args.stage!r}")
    data = spec.data.model_copy(update={"augment": stage.augment} if stage.augment is not None else {})
    ds = build_dataset(data, "train", spec.data.patch_size, registry=get_registry())
    t0 = time.perf_counter()
    values: dict[str, list[float]] = {w: [] for w in STATISTICS}
    saturated: dict[str, list[float]] = {w: [] for w in STATISTICS}
    clean_values: dict[str, list[float]] = {w: [] for w in STATISTICS}
    n = args.samples
    for k in range(n):  # epoch after epoch, as training draws them
        if k % len(ds) == 0 and hasattr(ds, "set_epoch"):
            ds.set_epoch(k // len(ds))
        item = ds[k % len(ds)]
        parts = parse_parts(item.get("parts") or "") or {item["degradation_name"]: 1.0}
        words = set(parts)
        x = item["lq"][None].float()
        for word, (_, stat) in STATISTICS.items():
            v = float(stat(x)[0])
            if word in words:
                values[word].append(v)
                if parts[word] >= SATURATED:
                    saturated[word].append(v)
            if words == {CLEAN}:
                clean_values[word].append(v)
    out: dict[str, object] = {"spec": os.path.relpath(args.spec, ROOT), "stage": args.stage, "samples": n,
                              "seconds": round(time.perf_counter() - t0, 1), "classes": {}}
    q = lambda t: {str(k): round(float(t.quantile(k)), 4) for k in QUANTILES} if len(t) else {}  # noqa: E731
    for word, (name, _) in STATISTICS.items():
        code = BOUNDS.get(word, {})
        low, high = code.get("any", (None, None))
        clean = torch.tensor(clean_values[word])
        row: dict[str, object] = {"statistic": name, "clean_items": len(clean), "clean_quantiles": q(clean),
                                  "bounds_in_code": {k: list(v) for k, v in code.items()}}
        for key, vals in (("any", values[word]), ("saturated", saturated[word])):
            shown = torch.tensor(vals)
            row[key] = {"items": len(shown), "quantiles": q(shown)}
            if len(shown):  # the bound on the side the class lies on: above for low-light, below for hazy
                row[key]["bound"] = [round(float(shown.quantile(1 - SHARE)), 3) if low is not None else None,
                                     round(float(shown.quantile(SHARE)), 3) if high is not None else None]
        ruled = (clean < low) if low is not None else (clean > high) if high is not None else None
        row["clean_items_outside_any"] = int(ruled.sum()) if ruled is not None and len(clean) else None
        out["classes"][word] = row
        print(f"{word}: any {row['any']}; saturated {row['saturated']}; clean {q(clean)}; code {code}",
              file=sys.stderr)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
