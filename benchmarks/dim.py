"""Dim photos taken in good light: how often a pipeline treats them as low-light.

A photo of a dark scene, or one exposed a little short, is not a low-light image in the sense of the
low-light expert (a dark, noisy capture whose reference is bright): brightening it makes it worse
(the PolyU crops of ``benchmarks/real_sets.py``). This darkens clean validation images (Set5 by
default, not a test set) by fixed factors, with no noise, and restores each in one step
(``vlir.core.chain.restore_steps``): per factor and pipeline, how many are treated as low-light and
how many come back unchanged, and the mean PSNR of the others against the darkened input (how
much they were changed). With ``--noise`` each dim image is also given camera noise
(``camera_noise``, seeded), as a photo of a dim scene taken at a high ISO: it is noisy, not low-light.
Beside them, the counterpart: the LOL training pairs that ``specs/default-v2.yaml`` holds out of
training (``--lol-held``, the last 20 in name order; real low light that should be treated), with the
input's and the output's PSNR against their references. Each image's low-light presence (multi-label
perceivers) is kept in the JSON, so that any presence threshold can be read off.

Every image is restored twice: without and with the chain's presence bars
(``vlir.core.chain.PRESENT_FOR``: the presence low light needs before it is treated). From the runs
without them come the two costs the low-light bar is made of: a false treatment (40 dB, the PSNR of
a nearly unchanged image, less the PSNR of a treated dim photo against itself) and a miss (what
treating the held-out LOL pairs gains), and the bar ``false / (false + miss)``: the presence above
which treating lowers the expected loss. Writes ``benchmarks/results/dim.json`` and ``dim.md``.

    python benchmarks/dim.py [--pipeline default --pipeline runs/x/pipeline] [--data ../shared/data/Set5] [--noise]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from itertools import product
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SHARED = Path(os.environ.get("VLIR_SHARED", ROOT.parent / "shared"))
FACTORS = (0.15, 0.2, 0.25, 0.3, 0.4)
LOW_LIGHT = "low-light"
NEAR_IDENTICAL = 40.0  # dB: an image left nearly as it was (vlir.core.classes.psnr_of(0))
sys.path.insert(0, str(ROOT / "benchmarks"))
import _common as C  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pipeline", action="append", help="pipeline folder, spec file or 'default' (repeatable)")
    p.add_argument("--data", default=str(SHARED / "data" / "Set5"), help="clean images (not a test set)")
    p.add_argument("--factors", type=float, nargs="+", default=list(FACTORS), help="brightness factors")
    p.add_argument("--noise", action="store_true", help="also the dim images with camera noise (high-ISO photos)")
    p.add_argument("--lol", default=str(SHARED / "data" / "LOL" / "train"), help="LOL training pairs (low/, high/)")
    p.add_argument("--lol-held", type=int, default=20, help="the last N LOL training pairs, held out of training "
                   "(0: none)")
    p.add_argument("--limit", type=int, help="at most this many images")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(RESULTS / "dim.json"), help="JSON output (markdown beside it)")
    return p.parse_args(argv)


def _presence(pipe, perceptions, word: str) -> float | None:
    """The feeding perceiver's presence of class ``word`` in the first image (None: not multi-label)."""
    from vlir.core.chain import classes

    role, names = classes(pipe)
    p = perceptions[role] if role is not None else None
    if p is None or p.presence is None or word not in names:
        return None
    return round(float(p.presence[0, names.index(word)]), 4)


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    import vlir
    from vlir.core.chain import PRESENT_FOR, restore_steps
    from vlir.core.data.datasets import list_images
    from vlir.core.data.images import read_image
    from vlir.core.data.pairs import pair_files, split_pairs
    from vlir.core.metrics import psnr_torch
    from vlir.core.registry import get_registry

    torch.set_num_threads(args.threads)
    files = list_images(args.data)[: args.limit]
    if not files:
        raise SystemExit(f"{args.data}: no images")
    images = [read_image(f)[0][None] for f in files]
    held = []
    if args.lol_held:
        lol = Path(args.lol)
        held = split_pairs(pair_files(lol / "low", lol / "high"), args.lol_held, str(lol))[1][: args.limit]
    held_images = [(read_image(a)[0][None], read_image(b)[0][None]) for a, b in held]
    noise = get_registry().build("degradation", "camera_noise") if args.noise else None

    def one(pipe, x, bar):
        with torch.inference_mode():
            out, perceptions, paths = restore_steps(pipe, x, steps=1, present_for=PRESENT_FOR if bar else None)
        treated = bool(paths[0].steps) and paths[0].steps[0].word == LOW_LIGHT
        return out.clamp(0, 1), treated, _presence(pipe, perceptions, LOW_LIGHT)

    start = time.perf_counter()
    rows, lol_rows = [], []
    for name in args.pipeline or ["default"]:
        pipe = vlir.load(name)
        for bar, noisy in product((False, True), (False, True) if noise is not None else (False,)):
            g = torch.Generator().manual_seed(0)  # the same noise for every pipeline
            for s in args.factors:
                treated, unchanged, changes, presence, brightened = 0, 0, [], [], []
                for x in images:
                    dim = (x * s * 255).round() / 255  # an 8-bit photo, darker
                    if noisy:
                        dim = (noise(dim, generator=g).clamp(0, 1) * 255).round() / 255
                    out, low, pres = one(pipe, dim, bar)
                    treated += low
                    presence.append(pres)
                    if torch.equal(out, dim):
                        unchanged += 1
                    else:
                        changes.append(float(psnr_torch(out, dim)))
                        if low:
                            brightened.append(round(changes[-1], 3))
                rows.append({"pipeline": name, "bar": bar, "factor": s, "noise": noisy, "images": len(images),
                             "low_light": treated, "unchanged": unchanged, "presence": presence,
                             "change_psnr": sum(changes) / len(changes) if changes else None,
                             "low_light_psnr": brightened})
                print(f"{name}{' (bar)' if bar else ''} x{s}{' +noise' if noisy else ''}: {treated} of {len(images)} "
                      "treated as low-light", flush=True)
        for bar in (False, True) if held_images else ():
            treated, presence, before, after = 0, [], [], []
            for lq, gt in held_images:
                out, low, pres = one(pipe, lq, bar)
                treated += low
                presence.append(pres)
                before.append(float(psnr_torch(lq, gt)))
                after.append(float(psnr_torch(out, gt)))
            lol_rows.append({"pipeline": name, "bar": bar, "images": len(held_images), "low_light": treated,
                             "presence": presence, "input_psnr": sum(before) / len(before),
                             "psnr": sum(after) / len(after)})
            print(f"{name}{' (bar)' if bar else ''} held-out LOL: {treated} of {len(held_images)} treated as low-light",
                  flush=True)
    return {"data": Path(args.data).name, "images": [f.name for f in files], "threads": args.threads,
            "noise": args.noise, "lol_held": [a.name for a, _ in held], "present_for": dict(PRESENT_FOR),
            "seconds": round(time.perf_counter() - start, 1), "rows": rows, "lol": lol_rows,
            "costs": costs(rows, lol_rows)}


def costs(rows: list[dict[str, Any]], lol_rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per pipeline, from its runs without bars: the mean cost (dB) of treating a dim photo (40 less the
    PSNR of those treated as low-light against their input), of missing a low-light one (the held-out LOL pairs'
    gain) and the low-light bar they make, ``false / (false + miss)``."""
    out = {}
    for r in lol_rows:
        if r["bar"] or not r["low_light"]:
            continue
        name = r["pipeline"]
        treated = [c for x in rows if x["pipeline"] == name and not x["bar"] for c in x["low_light_psnr"]]
        if not treated:
            continue
        n = len(treated)
        false = sum(NEAR_IDENTICAL - c for c in treated) / n
        miss = r["psnr"] - r["input_psnr"]
        out[name] = {"false": round(false, 2), "miss": round(miss, 2), "bar": round(false / (false + miss), 3),
                     "dim_treated": n}
    return out


def _bars(bars: dict[str, float]) -> str:
    return ", ".join(f"{w} {v}" for w, v in bars.items()) or "none"


def markdown(data: dict[str, Any]) -> str:
    lines = [f"# Dim photos in good light: treated as low-light? ({len(data['images'])} images of {data['data']})", "",
             "Each image darkened by the factor (8-bit" + (", then, in the rows marked noisy, given camera noise: a "
             "high-ISO photo of a dim scene" if data.get("noise") else ", no noise") + ") and restored in one step. "
             "PSNR of the output against the darkened input over the changed images (how much they were changed)."
             f" Each twice: without and with the chain's presence bars ({_bars(data['present_for'])}).",
             "", "| pipeline | bar | factor | noise | treated as low-light | unchanged | PSNR of the changed vs input |",
             "|---|---|---|---|---|---|---|"]
    for r in data["rows"]:
        change = f"{r['change_psnr']:.2f}" if r["change_psnr"] is not None else "–"
        lines.append(f"| {r['pipeline']} | {'yes' if r['bar'] else 'no'} | {r['factor']} "
                     f"| {'camera' if r.get('noise') else '–'} | {r['low_light']} of {r['images']} | {r['unchanged']} "
                     f"| {change} |")
    if data.get("lol"):
        lines += ["", f"Real low light: the {len(data['lol_held'])} LOL training pairs held out of training "
                  "(PSNR against their references).", "",
                  "| pipeline | bar | treated as low-light | input | output |", "|---|---|---|---|---|"]
        lines += [f"| {r['pipeline']} | {'yes' if r['bar'] else 'no'} | {r['low_light']} of {r['images']} "
                  f"| {r['input_psnr']:.2f} | {r['psnr']:.2f} |" for r in data["lol"]]
    if data.get("costs"):
        lines += ["", f"Costs of the low-light decision (dB, without bars): a dim photo treated loses {NEAR_IDENTICAL:.0f} "
                  "less its PSNR against itself; a held-out LOL pair left alone loses the expert's gain. Bar = "
                  "false / (false + miss).", "", "| pipeline | dim photos treated | false | miss | bar |",
                  "|---|---|---|---|---|"]
        lines += [f"| {n} | {c['dim_treated']} | {c['false']:.2f} | {c['miss']:.2f} | {c['bar']:.3f} |"
                  for n, c in data["costs"].items()]
    lines += ["", f"Made by `python benchmarks/dim.py{' --noise' if data.get('noise') else ''}` in {data['seconds']} s."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    return C.run_and_write(parse_args(argv), run, markdown)


if __name__ == "__main__":
    sys.exit(main())
