"""The field's test sets: a pipeline against the input, classical baselines and the papers.

Runs a pipeline (default: the built-in model) on the test sets in ``$VLIR_SHARED/data``
(``../shared/data`` by default) with the papers' protocol, 8-bit, no border crop, BasicSR's
functions (``vlir.core.metrics``):

- ``lol``: LOL v1 eval15 (15 real low-light pairs), RGB PSNR / SSIM;
- ``rain100h``: Rain100H test (100 pairs), PSNR / SSIM on Y (BT.601), as the deraining papers report;
- ``polyu``: PolyU real camera noise (100 crops), RGB PSNR / SSIM;
- ``cbsd68-clean``: CBSD68 with no degradation; PSNR of the output against the clean input ("do no harm").

Beside the pipeline: the input, the classical baselines of ``vlir.core.baselines`` suited to the
set (low light: histogram equalisation, gamma to mean 0.45; rain: median 5, streak median 7;
noise: Gaussian σ 1, median 3, bilateral), all with the library's fixed textbook parameters
(nothing here is tuned on a test set), and, with ``--cbm3d``, CBM3D (``pip install vlir[benchmark]``)
on the noise set at the noise level estimated by ``vlir.core.noref.noise_sigma``. The pipeline runs
once (its own routing) and step by step (``vlir.core.chain.restore_steps``, ``--chain`` steps);
the degradation each image was recognised as (what one step treated it for, or ``clean`` / ``unsure``
where it was left alone) is counted, and
seconds per image are recorded. The published numbers of GPU-trained paper models are shown where
``../shared/reference/NOTES.md`` has them for the set. Writes ``benchmarks/results/real_sets.json``
and ``real_sets.md``.

    python benchmarks/real_sets.py [--pipeline default] [--sets lol,rain100h,polyu,cbsd68-clean]
                                   [--limit N] [--cbm3d] [--threads N]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections import Counter
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SHARED = Path(os.environ.get("VLIR_SHARED", ROOT.parent / "shared"))


@dataclass(frozen=True)
class TestSet:
    title: str
    lq: str  # folder under data/
    gt: str | None  # None: the input is its own ground truth (clean images)
    y_channel: bool  # score on BT.601 luma (the deraining papers) instead of RGB
    baselines: str | None  # degradation name in vlir.core.baselines.BASELINES
    noise: bool = False  # CBM3D runs here with --cbm3d


SETS: dict[str, TestSet] = {
    "lol": TestSet("LOL v1 eval15 (real low light)", "LOL/eval15/low", "LOL/eval15/high", False, "low_light"),
    "rain100h": TestSet("Rain100H test (heavy synthetic rain)", "Rain100H/test/rainy", "Rain100H/test/norain",
                        True, "rain"),
    "polyu": TestSet("PolyU test (real camera noise)", "PolyU/test/noisy", "PolyU/test/clean", False, "noise",
                     noise=True),
    "cbsd68-clean": TestSet("CBSD68, clean (do no harm)", "CBSD68", None, False, None),
}

# Published PSNR of GPU-trained paper models on their own training data, from
# ../shared/reference/NOTES.md (the methods' repositories' result tables, 5-task all-in-one
# setting). NOTES.md has none for Rain100H (only Rain100L), PolyU or clean CBSD68, and no DA-CLIP
# number for LOL.
PAPERS: dict[str, dict[str, float]] = {
    "lol": {"PromptIR": 22.68, "Perceive-IR": 22.88, "InstructIR-5D": 23.00},
}
PAPER_MODELS = ["PromptIR", "Perceive-IR", "DA-CLIP", "InstructIR"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pipeline", default="default", help="pipeline folder, spec file or 'default' (the built-in model)")
    p.add_argument("--data", default=str(SHARED / "data"), help="folder holding the test sets (default $VLIR_SHARED/data)")
    p.add_argument("--sets", default=",".join(SETS), help=f"comma-separated, of: {', '.join(SETS)}")
    p.add_argument("--limit", type=int, help="at most this many images per set (default: all)")
    p.add_argument("--chain", type=int, default=3, help="at most this many steps for the step-by-step row")
    p.add_argument("--cbm3d", action="store_true", help="CBM3D on the noise set (bm3d package; 15-30 s per image)")
    p.add_argument("--cbm3d-limit", type=int, help="CBM3D on the first this many images of the set (default: --limit)")
    p.add_argument("--cbm3d-sigma", default="auto",
                   help="CBM3D noise level in 8-bit levels, or 'auto': vlir.core.noref.noise_sigma per image (default)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--seed", type=int, default=0, help="generator seed of stochastic pipelines")
    p.add_argument("--out", default=str(RESULTS / "real_sets.json"), help="JSON output (markdown beside it)")
    args = p.parse_args(argv)
    if args.cbm3d_sigma != "auto":
        try:
            if float(args.cbm3d_sigma) <= 0:
                raise ValueError
        except ValueError:
            p.error(f"--cbm3d-sigma: expected 'auto' or a positive number of 8-bit levels, got {args.cbm3d_sigma!r}")
    args.sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    bad = [s for s in args.sets if s not in SETS]
    if bad:
        p.error(f"--sets: unknown {', '.join(bad)}; known: {', '.join(SETS)}")
    return args


def pairs(data: Path, ts: TestSet, limit: int | None) -> list[tuple[Path, Path]]:
    """(input, ground truth) files of a set, paired by file name."""
    from vlir.core.data.datasets import list_images

    lq_dir = data / ts.lq
    if not lq_dir.is_dir():
        raise SystemExit(f"{lq_dir}: no such folder; --data (default $VLIR_SHARED/data) must hold {ts.lq}")
    files = list_images(lq_dir, recursive=False)
    if not files:
        raise SystemExit(f"{lq_dir}: no images (is $VLIR_SHARED set to the shared folder?)")
    if ts.gt is None:
        out = [(f, f) for f in files]
    else:
        gt_dir = data / ts.gt
        missing = [f.name for f in files if not (gt_dir / f.name).is_file()]
        if missing:
            raise SystemExit(f"{gt_dir}: no ground truth for {len(missing)} inputs, e.g. {missing[0]}")
        out = [(f, gt_dir / f.name) for f in files]
    return out[:limit] if limit else out


def cbm3d(img, sigma: float):
    """CBM3D (bm3d package) of an image [H, W, 3] in [0, 1] at noise level ``sigma`` (8-bit levels)."""
    import bm3d
    import numpy as np

    return np.clip(bm3d.bm3d_rgb(img, sigma_psd=max(sigma, 0.5) / 255.0), 0, 1)


def _mean(values: list[float]) -> float | None:
    from vlir.core.metrics import mean_finite

    m = mean_finite(values)
    return None if m != m else round(m, 4)


class Scores:
    """PSNR / SSIM lists of one row (input, a baseline, the pipeline) and its seconds."""

    def __init__(self, y_channel: bool) -> None:
        self.y, self.psnr, self.ssim, self.psnr_rgb, self.seconds = y_channel, [], [], [], []
        self.identical = 0

    def add(self, out, gt, seconds: float = 0.0) -> None:
        import torch

        from vlir.core.metrics import psnr, ssim

        self.psnr.append(psnr(out, gt, y_channel=self.y))
        self.ssim.append(ssim(out, gt, y_channel=self.y))
        if self.y:
            self.psnr_rgb.append(psnr(out, gt))
        self.identical += int(torch.equal((out.clamp(0, 1) * 255).round(), (gt.clamp(0, 1) * 255).round()))
        self.seconds.append(seconds)

    def as_dict(self) -> dict[str, Any]:
        d = {"psnr": _mean(self.psnr), "ssim": _mean(self.ssim), "n": len(self.psnr),
             "identical": self.identical, "seconds_per_image": round(sum(self.seconds) / max(len(self.seconds), 1), 3)}
        if self.y:
            d["psnr_rgb"] = _mean(self.psnr_rgb)
        return d


def run_set(name: str, pipe, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from vlir.core import baselines
    from vlir.core.chain import restore_steps
    from vlir.core.data.images import read_image
    from vlir.core.noref import noise_sigma
    from vlir.core.restore import summarize

    ts = SETS[name]
    files = pairs(Path(args.data), ts, args.limit)
    fns = baselines.baselines_for(ts.baselines) if ts.baselines else {}
    rows = {"input": Scores(ts.y_channel), **{b: Scores(ts.y_channel) for b in fns},
            "one": Scores(ts.y_channel), "chain": Scores(ts.y_channel)}
    use_cbm3d = args.cbm3d and ts.noise
    cbm3d_n = args.cbm3d_limit if args.cbm3d_limit is not None else len(files)
    if use_cbm3d:
        rows["cbm3d"] = Scores(ts.y_channel)
    sigmas: list[float] = []
    recognised: Counter[str] = Counter()
    paths: Counter[str] = Counter()
    t_set = time.perf_counter()
    for i, (lq_path, gt_path) in enumerate(files):
        lq = read_image(lq_path)[0][None]
        gt = lq if ts.gt is None else read_image(gt_path)[0][None]
        if lq.shape != gt.shape:
            raise SystemExit(f"{lq_path}: input {tuple(lq.shape[-2:])} and ground truth {tuple(gt.shape[-2:])} differ in size")
        rows["input"].add(lq, gt)
        for b, fn in fns.items():
            t = time.perf_counter()
            out = baselines.apply(fn, lq[0])[None]
            rows[b].add(out, gt, time.perf_counter() - t)
        if use_cbm3d and i < cbm3d_n:
            sigma = noise_sigma(lq[0]) if args.cbm3d_sigma == "auto" else float(args.cbm3d_sigma)
            sigmas.append(sigma)
            t = time.perf_counter()
            out = baselines.apply(partial(cbm3d, sigma=sigma), lq[0])[None]
            rows["cbm3d"].add(out, gt, time.perf_counter() - t)
        gen = (lambda: torch.Generator().manual_seed(args.seed)) if pipe.process is not None else (lambda: None)
        with torch.inference_mode():
            t = time.perf_counter()
            one, perceptions, one_paths = restore_steps(pipe, lq, steps=1, generator=gen())
            rows["one"].add(one.float(), gt, time.perf_counter() - t)
            t = time.perf_counter()
            many, _, chain_paths = restore_steps(pipe, lq, steps=args.chain, generator=gen())
            rows["chain"].add(many.float(), gt, time.perf_counter() - t)
        s = summarize(perceptions)
        recognised[one_paths[0].first if s.get("degradation") else "(no classes)"] += 1
        paths[str(chain_paths[0])] += 1
        print(f"  {name} {i + 1}/{len(files)} {lq_path.name}: input {rows['input'].psnr[-1]:.2f}"
              f" one {rows['one'].psnr[-1]:.2f} chain {rows['chain'].psnr[-1]:.2f} dB"
              f" ({s.get('degradation', '?')})", file=sys.stderr, flush=True)
    res = {name_: r.as_dict() for name_, r in rows.items()}
    # CBM3D competes for "best" only when it ran on the whole set (a mean over fewer images is another number)
    base = {b: res[b] for b in [*fns, *(["cbm3d"] if use_cbm3d and res["cbm3d"]["n"] == len(files) else [])]}
    best = max(base, key=lambda b: base[b]["psnr"] if base[b]["psnr"] is not None else -math.inf) if base else None
    out = {
        "set": name, "title": ts.title, "lq": ts.lq, "gt": ts.gt, "images": len(files),
        "metric": ("PSNR / SSIM on Y (BT.601)" if ts.y_channel else "PSNR / SSIM on RGB") + ", 8-bit, no border crop"
                  + ("; against the clean input itself" if ts.gt is None else ""),
        "input": res["input"], "baselines": {b: res[b] for b in fns}, "best_baseline": best,
        "one_step": res["one"], "chain": res["chain"],
        "recognised_as": dict(recognised.most_common()), "chain_paths": paths.most_common(5),
        "papers": PAPERS.get(name, {}), "seconds": round(time.perf_counter() - t_set, 1),
    }
    if use_cbm3d:
        out["cbm3d"] = {**res["cbm3d"], "sigma": ("vlir.core.noref.noise_sigma per image" if args.cbm3d_sigma == "auto"
                                                   else f"fixed {args.cbm3d_sigma}"),
                        "sigma_mean": round(sum(sigmas) / len(sigmas), 3) if sigmas else None}
    return out


def run(args: argparse.Namespace, save=None) -> dict[str, Any]:
    """All sets of ``args``; ``save(result)`` is called after each set (``complete`` False until the last)."""
    import torch

    import vlir

    torch.set_num_threads(args.threads)
    pipe = vlir.load(args.pipeline)
    t0 = time.perf_counter()
    sets: list[dict[str, Any]] = []

    def result(complete: bool) -> dict[str, Any]:
        return {
            "pipeline": args.pipeline, "pipeline_name": pipe.spec.name, "data": str(args.data), "limit": args.limit,
            "chain": args.chain, "cbm3d": args.cbm3d, "cbm3d_limit": args.cbm3d_limit, "cbm3d_sigma": args.cbm3d_sigma,
            "threads": args.threads, "seed": args.seed,
            "machine": f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
            "seconds": round(time.perf_counter() - t0, 1), "complete": complete, "sets": list(sets),
            "papers_note": "published PSNR of GPU-trained paper models on their own training data "
                           "(../shared/reference/NOTES.md, 5-task all-in-one setting); not run here",
        }

    for name in args.sets:
        r = run_set(name, pipe, args)
        b = r["best_baseline"]
        print(f"{name}: input {r['input']['psnr']} | best baseline {b} "
              f"{r['baselines'].get(b, r.get('cbm3d', {})).get('psnr') if b else None} | one step {r['one_step']['psnr']}"
              f" | chain {r['chain']['psnr']} dB | recognised {r['recognised_as']}", file=sys.stderr, flush=True)
        sets.append(r)
        if save is not None and name != args.sets[-1]:
            save(result(False))
    return result(True)


def _cell(d: dict[str, Any] | None) -> str:
    if not d or d.get("psnr") is None:
        return "identical" if d and d.get("n") else "–"
    return f"{d['psnr']:.2f} / {d['ssim']:.4f}"


def markdown(data: dict[str, Any]) -> str:
    head = ["set", "n", "metric", "input", "best classical baseline", "vlir one step", f"vlir chain (≤ {data['chain']})",
            "recognised as", "s / image (one, chain)", *[f"{m}†" for m in PAPER_MODELS]]
    lines = [f"# The field's test sets: `{data['pipeline_name'] or data['pipeline']}`", "",
             "PSNR (dB) / SSIM, 8-bit, BasicSR's functions, no border crop. Rain100H on Y (BT.601), the others "
             "on RGB; clean CBSD68 is scored against the clean input itself (\"do no harm\"; identical = ∞). "
             "Baselines use fixed textbook parameters (`vlir.core.baselines`), none tuned on these sets; "
             "the best of them per set is picked after the fact.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in data["sets"]:
        b = r["best_baseline"]
        bd = r.get("cbm3d") if b == "cbm3d" else r["baselines"].get(b)
        best = f"{b}: {_cell(bd)}" if b else "–"
        rec = ", ".join(f"{k} {v}" for k, v in r["recognised_as"].items())
        inp = _cell(r["input"]) if r["gt"] else "identical"
        one, chain = _cell(r["one_step"]), _cell(r["chain"])
        if r["gt"] is None:
            one += f" ({r['one_step']['identical']} of {r['images']} identical)"
            chain += f" ({r['chain']['identical']} of {r['images']} identical)"
        secs = f"{r['one_step']['seconds_per_image']:.1f}, {r['chain']['seconds_per_image']:.1f}"
        papers = [next((f"{v:.2f}" for k, v in r["papers"].items() if k.startswith(m)), "–") for m in PAPER_MODELS]
        lines.append("| " + " | ".join([r["set"], str(r["images"]), "Y" if "Y" in r["metric"] else "RGB", inp, best,
                                        one, chain, rec, secs, *papers]) + " |")
    lines += ["", "† Published numbers of GPU-trained paper models on their own training data (5-task all-in-one "
              "setting; InstructIR = InstructIR-5D), from `../shared/reference/NOTES.md`; not run here. "
              "NOTES.md has none for Rain100H (only Rain100L), PolyU or clean CBSD68.", "",
              "## All baselines", "", "| set | baseline | PSNR / SSIM | s / image |", "|---|---|---|---|"]
    for r in data["sets"]:
        for b, d in r["baselines"].items():
            lines.append(f"| {r['set']} | {b} | {_cell(d)} | {d['seconds_per_image']:.2f} |")
        if "cbm3d" in r:
            c = r["cbm3d"]
            lines.append(f"| {r['set']} | CBM3D (σ {c['sigma']}, mean {c['sigma_mean']}; first {c['n']} images) | "
                         f"{_cell(c)} | {c['seconds_per_image']:.1f} |")
    lines += ["", "## Step-by-step paths (most common)", ""]
    for r in data["sets"]:
        lines.append(f"- {r['set']}: " + "; ".join(f"{p} ({n})" for p, n in r["chain_paths"]))
    lim = f" --limit {data['limit']}" if data["limit"] else ""
    if data["cbm3d"]:
        lim += " --cbm3d" + (f" --cbm3d-limit {data['cbm3d_limit']}" if data["cbm3d_limit"] is not None else "")
        lim += f" --cbm3d-sigma {data['cbm3d_sigma']}" if data["cbm3d_sigma"] != "auto" else ""
    if not data.get("complete", True):
        lines += ["", "**Partial:** the run was stopped before its last set."]
    lines += ["", f"Made by `python benchmarks/real_sets.py{lim} "
              f"--threads {data['threads']}` in {data['seconds']} s ({data['machine']})."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from vlir.core.io import atomic_write_text

    args = parse_args(argv)
    if args.cbm3d:
        try:
            import bm3d  # noqa: F401
        except ImportError:
            raise SystemExit("--cbm3d needs the bm3d package: pip install 'vlir[benchmark]'") from None
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save(data: dict[str, Any]) -> None:  # after each set, so a long run keeps what it measured
        atomic_write_text(out, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        atomic_write_text(out.with_suffix(".md"), markdown(data))

    save(run(args, save))
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
