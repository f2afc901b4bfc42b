"""Perceiver benchmark: ms per image of the CLIP perceivers and their overhead over a backbone forward.

    python benchmarks/perceivers.py              # ViT-B-32, random init (no download), 256x256 images
    python benchmarks/perceivers.py --quick      # tiny presets (smoke test)

Each perceiver is built with ``pretrained: null`` (random weights: same cost, nothing is
downloaded) and timed in a fresh process: median of ``--repeat`` forward calls after
``--warmup`` (eval, ``torch.no_grad``; the first call also caches DA-CLIP's prompt embeddings).
The overhead is perceiver ms per image / backbone ms (batch 1, same image size and device),
in percent. Writes JSON (``--out``, default ``benchmarks/results/perceivers.json``) and a
markdown table beside it.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
from backbones import forward_worker  # noqa: E402  (the same backbone measurement as backbones.py)

PERCEIVERS = ["daclip", "lora_caption_aligner", "quality_perceiver"]
MODEL = "ViT-B-32"
# (label, registry name, preset) of the reference backbones
REFERENCES = [("restormer", "restormer", None), ("nafnet sidd-width32", "nafnet", "sidd-width32")]
PRELOAD = ["vlir.core.registry", "vlir.core.components", "open_clip", "peft", "vlir.plugins.perceivers._clip",
           "vlir.plugins.backbones.restormer", "vlir.plugins.backbones.nafnet"]


def perceiver_worker(name: str, preset: str | None, params: dict[str, Any], size: int, batch: int, device: str,
                     warmup: int, repeat: int) -> dict[str, Any]:
    """Forward time of one perceiver on a batch of ``size`` x ``size`` images."""
    import torch

    from vlir.core.registry import get_registry

    model = get_registry().build("perceiver", name, preset, params).eval().to(device)
    x = torch.rand(batch, 3, size, size, device=device)
    named = list(model.parameters())
    with torch.no_grad():
        times = C.time_calls(lambda: model(x), warmup, repeat, cuda=device == "cuda")
    s = C.summary(times)
    return {"device": device, "batch": batch, "size": size, **s, "times_ms": times,
            "ms_per_image": s["median_ms"] / batch, "total_params": sum(p.numel() for p in named),
            "trainable_params": sum(p.numel() for p in named if p.requires_grad)}


def _present(name: str) -> str | None:
    """None when the perceiver can be built, else why it is skipped (not registered / file absent)."""
    from vlir.core.registry import RegistryError, get_registry

    try:
        entry = get_registry().get("perceiver", name)
    except RegistryError as e:
        return f"not registered ({e})"
    module = entry.target_path.partition(":")[0]
    try:
        if importlib.util.find_spec(module) is None:
            return f"module {module} is not present"
    except ModuleNotFoundError as e:
        return f"module {module} is not present ({e})"
    return None


def _markdown(res: dict[str, Any]) -> str:
    mach = res["machine"]
    st = res["settings"]
    out = [f"# vlir perceivers benchmark ({res['mode']})", "",
           f"CPU: {mach['cpu']} ({mach['cpu_count']} cores, torch threads {mach['torch_num_threads']}); "
           f"torch {mach['torch']}; GPU: {mach.get('gpu', 'none')}. Perceivers: {st['model']}, random init "
           f"(`pretrained: null`), images {st['size']}x{st['size']}; ms = median of {st['repeat']} after "
           f"{st['warmup']} warmup, eval, no_grad. Overhead = perceiver ms per image / backbone ms (batch 1, "
           "same size and device).", ""]
    refs = res["references"]
    rows = []
    for p in res["perceivers"]:
        if "skipped" in p:
            continue
        for r in p["runs"]:
            if "error" in r:
                rows.append([p["label"], r["device"], r["batch"], "error", None] + [None] * len(refs))
                continue
            over = []
            for ref in refs:
                base = ref["runs"].get(r["device"], {})
                over.append(C.fmt(100 * r["ms_per_image"] / base["median_ms"], 1)
                            if "median_ms" in base else None)
            rows.append([p["label"], r["device"], r["batch"], C.fmt(r["median_ms"]), C.fmt(r["ms_per_image"])]
                        + over)
    out += ["## Perceivers", "", C.md_table(
        ["perceiver", "device", "batch", "ms / batch", "ms / image"] + [f"overhead vs {r['label']} (%)" for r in refs],
        rows), ""]
    params = [[p["label"], C.fmt(p["total_params"] / 1e6, 2), C.fmt(p["trainable_params"] / 1e6, 2)]
              for p in res["perceivers"] if "total_params" in p]
    if params:
        out += [C.md_table(["perceiver", "params (M)", "trainable (M)"], params), ""]
    rows = []
    for ref in refs:
        for dev, r in ref["runs"].items():
            rows.append([ref["label"], dev, f"{st['size']}x{st['size']}", C.fmt(r.get("median_ms"))])
    out += ["## Reference backbones (batch 1)", "", C.md_table(["backbone", "device", "size", "ms"], rows), ""]
    skipped = [f"- {p['label']}: skipped, {p['skipped']}" for p in res["perceivers"] if "skipped" in p]
    if skipped:
        out += ["## Skipped", ""] + skipped + [""]
    if "note" in res:
        out += [res["note"], ""]
    out += C.md_footer(res)
    return "\n".join(out).rstrip()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(C.RESULTS / "perceivers.json"), help="JSON path (markdown beside it)")
    ap.add_argument("--quick", action="store_true", help="tiny presets, 64x64 images, batches 1 2, 1 repeat")
    ap.add_argument("--size", type=int, help="image size (default 256; quick 64)")
    ap.add_argument("--batches", type=int, nargs="+", help="batch sizes (default 1 8; quick 1 2)")
    ap.add_argument("--repeat", type=int, help="timed calls (default 5; quick 1)")
    ap.add_argument("--perceivers", nargs="+", metavar="NAME", help=f"only these of {PERCEIVERS}")
    C.add_timing_arguments(ap)
    args = ap.parse_args(argv)

    C.offline()
    q = args.quick
    size = args.size or (64 if q else 256)
    batches = args.batches or ([1, 2] if q else [1, 8])
    repeat = args.repeat or (1 if q else 5)
    timeout = args.timeout or (300.0 if q else 3600.0)
    names = args.perceivers or PERCEIVERS
    unknown = sorted(set(names) - set(PERCEIVERS))
    if unknown:
        ap.error(f"--perceivers: unknown {unknown}; choose from {PERCEIVERS}")

    C.start_workers(PRELOAD, args.threads)  # this process never imports torch: measurements run in workers
    machine = C.run_isolated(C.machine_info, timeout, threads=args.threads)
    if "error" in machine:
        print(f"perceivers: could not read the machine info: {machine['error']}", file=sys.stderr)
        return 1
    devices = C.timing_devices(args.device, machine["cuda_available"])
    res: dict[str, Any] = {
        "benchmark": "perceivers", "mode": "quick" if q else "full", "machine": machine,
        "settings": {"model": "vlir-tiny (tiny preset)" if q else MODEL, "pretrained": None, "size": size,
                     "batches": batches, "repeat": repeat, "warmup": args.warmup, "devices": devices,
                     "grad": "torch.no_grad",
                     "overhead": "100 * perceiver ms per image / backbone ms at batch 1, same size and device"},
        "perceivers": [], "references": [], "errors": [],
    }
    if q:
        res["note"] = "Quick mode: perceivers and backbones at their `tiny` presets (not the official configs)."

    log, check = C.reporter(res, machine)

    for label, name, preset in REFERENCES:
        preset = "tiny" if q else preset
        ref: dict[str, Any] = {"label": f"{name} [tiny]" if q else label, "name": name, "preset": preset, "runs": {}}
        for dev in devices:
            log(f"reference {ref['label']} {size}x{size} {dev} ...")
            ref["runs"][dev] = check(f"reference {ref['label']} {dev}", C.run_isolated(
                forward_worker, timeout, name=name, preset=preset, size=size, device=dev, warmup=args.warmup,
                repeat=repeat))
        res["references"].append(ref)

    preset = "tiny" if q else None
    params = {"pretrained": None} if q else {"model": MODEL, "pretrained": None}
    for name in names:
        entry: dict[str, Any] = {"label": f"{name} [tiny]" if q else f"{name} {MODEL}", "name": name,
                                 "preset": preset, "params": params}
        why = _present(name)
        if why:
            entry["skipped"] = why
            log(f"{name}: skipped, {why}")
            res["perceivers"].append(entry)
            continue
        entry["runs"] = []
        for dev in devices:
            for b in batches:
                log(f"{entry['label']} batch {b} {dev} ...")
                r = check(f"{entry['label']} batch {b} {dev}", C.run_isolated(
                    perceiver_worker, timeout, name=name, preset=preset, params=params, size=size, batch=b,
                    device=dev, warmup=args.warmup, repeat=repeat))
                if "error" not in r:
                    entry["total_params"] = r["total_params"]
                    entry["trainable_params"] = r["trainable_params"]
                    log(f"  {r['ms_per_image']:.1f} ms / image")
                    r = {k: v for k, v in r.items() if k not in ("total_params", "trainable_params")}
                else:
                    r.update(device=dev, batch=b)
                entry["runs"].append(r)
        res["perceivers"].append(entry)

    md = _markdown(res)
    json_path, md_path = C.write_outputs(res, md, args.out)
    print(md)
    print(f"\nwrote {json_path} and {md_path}")
    return 1 if res["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
