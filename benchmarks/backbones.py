"""Backbone benchmark: parameters, MACs, forward time and peak memory, tiled inference, IR-SDE cost.

    python benchmarks/backbones.py                       # full run (slow on CPU: tens of minutes)
    python benchmarks/backbones.py --quick               # tiny presets, small sizes (smoke test)
    python benchmarks/backbones.py --backbones nafnet --sizes 256 --skip-tiled --skip-sde
    python benchmarks/backbones.py --backbones restormer nafnet --sizes 256 --precisions fp32,fp32+cl,bf16,bf16+cl

Every measurement runs in a fresh process (batch 1, ``torch.no_grad``, eval mode). CPU: median
wall time of ``--repeat`` calls after ``--warmup`` calls and the peak RSS increase (``ru_maxrss``)
over the model and inputs; GPU (when available): CUDA-event times and
``torch.cuda.max_memory_allocated`` over the allocation before the first call. Writes JSON
(``--out``, default ``benchmarks/results/backbones.json``) and a markdown table beside it.

``--precisions``: per backbone and size, one process times every precision / memory-format variant
(``vlir.core.precision``: autocast dtype, ``+cl`` channels-last weights and input) interleaved, call
by call, and reports each one's median as a ratio to fp32 with the PSNR of its output against the
fp32 output (peak 1). The weights are random; NAFNet's zero-initialised branch scales (``beta``,
``gamma``) are drawn N(0, 0.5) first, so that every block contributes.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

# (label, registry name, preset at the official config)
BACKBONES = [
    ("restormer", "restormer", None),
    ("nafnet sidd-width32", "nafnet", "sidd-width32"),
    ("nafnet gopro-width64", "nafnet", "gopro-width64"),
    ("conditional_unet universal-ir", "conditional_unet", "universal-ir"),
]
TILED_BACKBONE = ("nafnet", "sidd-width32")
SDE_BACKBONE = ("conditional_unet", "universal-ir")
# imported once by the forkserver (torch._dynamo: FlopCounterMode's lazy imports, ~900 modules)
PRELOAD = ["vlir.core.registry", "vlir.core.components", "vlir.core.tiling", "vlir.core.cli",
           "torch.utils.flop_counter", "torch._dynamo", "vlir.plugins.backbones.restormer",
           "vlir.plugins.backbones.nafnet", "vlir.plugins.backbones.conditional_unet",
           "vlir.plugins.backbones.irsde"]


# -- workers (each runs in its own process) ------------------------------------------------------
def _build(kind: str, name: str, preset: str | None, params: dict[str, Any] | None = None):
    from vlir.core.registry import get_registry

    return get_registry().build(kind, name, preset, params).eval()


def prewarm(model: Any, device: str) -> None:
    """One call on a 16x16 input, so one-time costs (library code pages, thread pools, CUDA
    context and handles) are in the memory baseline rather than in the measured peak."""
    s = max(16, getattr(model, "multiple_of", 1))
    model(**C.to_device(model.example_inputs(size=(s, s), batch=1), device))


def inspect_worker(name: str, preset: str | None, sizes: list[int]) -> dict[str, Any]:
    """Parameter count and MACs per size (``vlir inspect``: meta device, FlopCounterMode)."""
    from vlir.core.cli import inspect_component

    macs = {}
    for s in sizes:
        info = inspect_component("backbone", name, preset, None, (s, s))
        if info["macs"] is None:
            raise RuntimeError(f"MACs of {name} at {s}x{s}: {info.get('macs_error')}")
        macs[s] = info["macs"]
    return {"total_params": info["total_params"], "macs": macs}


def forward_worker(name: str, preset: str | None, size: int, device: str, warmup: int,
                   repeat: int) -> dict[str, Any]:
    """One network call (diffusion backbones: with ``x`` and ``t``) timed, with its peak memory."""
    import torch

    model = _build("backbone", name, preset)
    kwargs = model.example_inputs(size=(size, size), batch=1)
    cuda = device == "cuda"
    if cuda:
        model.to(device)
        kwargs = C.to_device(kwargs, device)

    def call() -> None:
        model(**kwargs)

    with torch.no_grad():
        prewarm(model, device)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            times = C.time_calls(call, warmup, repeat, cuda=True)
            peak = torch.cuda.max_memory_allocated()
            mem = {"baseline_allocated_mib": base / C.MiB, "peak_allocated_mib": peak / C.MiB,
                   "peak_allocated_delta_mib": (peak - base) / C.MiB}
        else:
            with C.PeakRSS() as m:
                times = C.time_calls(call, warmup, repeat)
            mem = m.as_dict()
    return {"device": device, "size": size, "warmup": warmup, **C.summary(times), "times_ms": times, **mem}


PRECISIONS = ("fp32", "fp32+cl", "bf16", "bf16+cl", "fp16", "fp16+cl")


def precision_worker(name: str, preset: str | None, size: int, device: str, warmup: int, repeat: int,
                     variants: list[str]) -> dict[str, Any]:
    """Every variant's call times, interleaved call by call, and its output's PSNR against fp32."""
    import copy
    import math

    import torch

    from vlir.core.precision import DTYPES, Precision

    model = _build("backbone", name, preset).to(device)
    torch.manual_seed(0)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith(("beta", "gamma")):  # NAFNet's zero-init branch scales: blocks would be identities
                p.normal_(0, 0.5)
    kwargs = C.to_device(model.example_inputs(size=(size, size), batch=1), device)
    plans, models = {}, {}
    for v in variants:
        base, _, cl = v.partition("+")
        plans[v] = Precision(torch.device(device).type, DTYPES.get(base), channels_last=cl == "cl")
        models[v] = plans[v].prepare(copy.deepcopy(model)) if plans[v].channels_last else model
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def call(v: str) -> torch.Tensor:
        plan = plans[v]
        kw = {k: plan.input(t) if isinstance(t, torch.Tensor) else t for k, t in kwargs.items()}
        with plan.autocast():
            return models[v](**kw)

    times: dict[str, list[float]] = {v: [] for v in variants}
    outs: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for v in variants:
            for _ in range(max(1, warmup)):
                outs[v] = call(v).float()
        for _ in range(repeat):
            for v in variants:
                sync()
                t0 = time.perf_counter()
                call(v)
                sync()
                times[v].append((time.perf_counter() - t0) * 1e3)
        ref = outs["fp32"]
        rows = {}
        for v in variants:
            mse = float((outs[v] - ref).pow(2).mean())
            rows[v] = {**C.summary(times[v]), "times_ms": times[v],
                       "psnr_vs_fp32_db": None if mse == 0 else 10 * math.log10(1 / mse)}
    fp32 = rows["fp32"]["median_ms"]
    for v in variants:
        rows[v]["ratio_to_fp32"] = rows[v]["median_ms"] / fp32
    return {"device": device, "size": size, "warmup": warmup, "interleaved": True, "variants": rows}


def tiled_worker(name: str, preset: str | None, size: int, tile: int, overlap: int) -> dict[str, Any]:
    """One tiled restoration of a ``size`` x ``size`` image on CPU: seconds and peak RSS."""
    import torch

    from vlir.core.tiling import tiled_forward

    model = _build("backbone", name, preset)
    calls = [0]

    def fn(t: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        return model(t)

    with torch.no_grad():
        prewarm(model, "cpu")
    with torch.no_grad(), C.PeakRSS() as m:
        x = torch.rand(1, 3, size, size)
        t0 = time.perf_counter()
        y = tiled_forward(fn, x, tile=tile, overlap=overlap, multiple_of=model.multiple_of,
                          passes=model.tile_passes, pad_mode=model.pad_mode)
        seconds = time.perf_counter() - t0
    io = x.numel() * x.element_size() + y.numel() * y.element_size()
    runs = model.tile_passes + 1  # runs over the tiles: extra ones share the global reductions
    return {"size": size, "tile": tile, "overlap": overlap, "passes": runs, "tiles": calls[0] // runs,
            "seconds": seconds,
            "input_output_mib": io / C.MiB, **m.as_dict(), "delta_over_input_output": m.delta / io}


def sde_worker(name: str, preset: str | None, size: int, device: str, sde_params: dict[str, Any],
               steps: int | None, warmup_steps: int) -> dict[str, Any]:
    """IR-SDE sampling of one image: ``steps`` network calls (None: the sampler's full count)."""
    import torch

    unet = _build("backbone", name, preset).to(device)
    process = _build("process", "irsde", None, sde_params).to(device)
    kw = C.to_device(unet.example_inputs(size=(size, size), batch=1), device)
    lq, cond = kw["lq"], kw.get("cond")
    p = process.params
    calls = steps if steps is not None else (p.fast_steps if p.sampler == "fast" else p.T)
    gen = torch.Generator(device=device).manual_seed(0)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    if warmup_steps:
        process.sample(unet, lq, cond, steps=warmup_steps, generator=gen)
    sync()
    t0 = time.perf_counter()
    process.sample(unet, lq, cond, steps=steps, generator=gen)
    sync()
    seconds = time.perf_counter() - t0
    return {"device": device, "size": size, "sampler": p.sampler, "T": p.T, "network_calls": calls,
            "seconds": seconds, "seconds_per_step": seconds / calls}


# -- helpers --------------------------------------------------------------------------------------
def _extrapolate(points: list[tuple[float, float]], target: float) -> tuple[float, str]:
    """Per-step seconds at ``target`` MACs from measured (MACs, seconds) points."""
    points = sorted(points)
    if len(points) >= 2:
        n = len(points)
        mx = sum(m for m, _ in points) / n
        my = sum(s for _, s in points) / n
        var = sum((m - mx) ** 2 for m, _ in points)
        if var > 0:
            b = sum((m - mx) * (s - my) for m, s in points) / var
            a = my - b * mx
            if b > 0:
                return a + b * target, "linear fit seconds = a + b * MACs over the measured sizes"
    m, s = points[-1]
    return s * target / m, "proportional to MACs from the largest measured size"


def _mib(d: dict[str, Any], key: str) -> str | None:
    return C.fmt(d.get(key)) if d and "error" not in d else None


def _ms(d: dict[str, Any] | None) -> str | None:
    return C.fmt(d.get("median_ms")) if d and "error" not in d else None


def _markdown(res: dict[str, Any]) -> str:
    mach = res["machine"]
    out = [f"# vlir backbones benchmark ({res['mode']})", "",
           f"CPU: {mach['cpu']} ({mach['cpu_count']} cores, torch threads {mach['torch_num_threads']}); "
           f"torch {mach['torch']}; GPU: {mach.get('gpu', 'none')}. Batch 1, eval, no_grad; ms = median of "
           f"{res['settings']['repeat']} after {res['settings']['warmup']} warmup. "
           "Peak ΔRSS = ru_maxrss increase over the RSS with model and inputs built, after one 16x16 pre-warm "
           "call (a fresh process per measurement).", ""]
    rows = []
    for b in res["backbones"]:
        for s in res["settings"]["sizes"]:
            k = str(s)
            cpu, gpu = b["cpu"].get(k), b.get("cuda", {}).get(k)
            macs = b["macs"].get(k)
            n = b.get("total_params")
            rows.append([b["label"], f"{s}x{s}", C.fmt(n / 1e6, 2) if n else None,
                         C.fmt(macs / 1e9, 2) if macs else None, _ms(cpu), _mib(cpu, "peak_rss_delta_mib"),
                         _ms(gpu), _mib(gpu, "peak_allocated_delta_mib")])
    out += ["## Backbones", "", C.md_table(
        ["backbone", "size", "params (M)", "GMACs", "CPU ms", "CPU peak ΔRSS (MiB)", "GPU ms",
         "GPU peak Δalloc (MiB)"], rows), ""]
    if "note" in res:
        out += [res["note"], ""]
    prec = [(b, dev, size, r) for b in res["backbones"] for dev, by in b.get("precision", {}).items()
            for size, r in by.items() if "error" not in r]
    if prec:
        out += ["## Precision and memory format", "",
                "Each variant's median call time as a ratio to fp32, timed interleaved call by call in one "
                "process (`--precisions`); PSNR of its output against the fp32 output (peak 1; random weights).", ""]
        rows = []
        for b, dev, size, r in prec:
            for v, row in r["variants"].items():
                psnr = row["psnr_vs_fp32_db"]
                rows.append([b["label"], f"{size}x{size}", dev, v, C.fmt(row["median_ms"]),
                             f"{row['ratio_to_fp32']:.2f}x", "identical" if psnr is None else C.fmt(psnr, 1)])
        out += [C.md_table(["backbone", "size", "device", "variant", "ms", "vs fp32", "PSNR vs fp32 (dB)"], rows), ""]

    tiled = res.get("tiled")
    if tiled:
        ref = tiled.get("tile_reference", {})
        out += [f"## Tiled inference (CPU, {tiled['backbone']}, tile {tiled['tile']}, overlap {tiled['overlap']})",
                ""]
        rows = []
        for r in tiled["runs"]:
            if "error" in r:
                rows.append([f"{r['size']}x{r['size']}", "error", None, None, None, None, None, None])
                continue
            rows.append([f"{r['size']}x{r['size']}", f"{r['tiles']} x {r.get('passes', 1)}", C.fmt(r["seconds"], 1),
                         C.fmt(r["peak_rss_delta_mib"]), C.fmt(r["input_output_mib"]),
                         C.fmt(r["delta_over_input_output"], 2),
                         C.fmt(r["peak_rss_delta_mib"] - r["input_output_mib"]),
                         C.fmt(r.get("untiled_estimate_mib"))])
        out += [C.md_table(["image", "tiles x passes", "seconds", "peak ΔRSS (MiB)", "input+output tensors (MiB)",
                            "ΔRSS / (in+out)", "ΔRSS - (in+out) (MiB)", "untiled ΔRSS, extrapolated (MiB)"],
                           rows), ""]
        if ref and "error" not in ref:
            out += [f"Reference, measured: one untiled {ref['size']}x{ref['size']} forward takes "
                    f"{ref['median_ms']:,.0f} ms with peak ΔRSS {ref['peak_rss_delta_mib']:,.1f} MiB. The untiled "
                    "column is extrapolated from it, linear in pixels (not measured). ΔRSS includes the input; "
                    "besides the tile's working set, tiled_forward holds image-sized buffers (float32 "
                    "accumulator, the weight normaliser and the normalised output; with passes, the padded "
                    "input). Passes: the tiles run once more so that the backbone's reductions over the "
                    "image (channel attention / pooling) use the whole image's sums (vlir.core.tiling).", ""]

    sde = res.get("irsde")
    if sde:
        out += [f"## IR-SDE seconds per image ({sde['backbone']})", ""]
        rows = []
        for r in sde["rows"]:
            rows.append([r["what"], r["device"], f"{r['size']}x{r['size']}", r["network_calls"],
                         C.fmt(r.get("seconds"), 2), C.fmt(r.get("seconds_per_step"), 3), r["how"]])
        out += [C.md_table(["what", "device", "size", "network calls", "s / image", "s / step", "how"], rows), ""]
        if sde.get("extrapolation"):
            out += [f"Extrapolated rows: {sde['extrapolation']}.", ""]
    out += C.md_footer(res)
    return "\n".join(out).rstrip()


# -- main -----------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(C.RESULTS / "backbones.json"), help="JSON path (markdown beside it)")
    ap.add_argument("--quick", action="store_true", help="tiny presets, small sizes, 1 repeat (smoke test)")
    ap.add_argument("--sizes", type=int, nargs="+", help="square input sizes (default 128 256; quick 32)")
    ap.add_argument("--repeat", type=int, help="timed calls per measurement (default 5; quick 1)")
    ap.add_argument("--backbones", nargs="+", metavar="NAME",
                    help="only these (registry names or labels, e.g. nafnet, 'nafnet sidd-width32')")
    ap.add_argument("--skip-tiled", action="store_true", help="skip tiled inference")
    ap.add_argument("--tiled-sizes", type=int, nargs="+", help="tiled image sizes (default 2048 4096; quick 128)")
    ap.add_argument("--tile", type=int, help="tile size (default 512; quick 64)")
    ap.add_argument("--overlap", type=int, help="tile overlap (default 32; quick 8)")
    ap.add_argument("--skip-sde", action="store_true", help="skip the IR-SDE sampling cost")
    ap.add_argument("--sde-sizes", type=int, nargs="+",
                    help="sizes where the official UNet's per-step time is measured on CPU (default 64 128; quick 32)")
    ap.add_argument("--sde-steps", type=int, help="timed sampler steps at each of those sizes (default 3; quick 1)")
    ap.add_argument("--sde-target", type=int, help="size the CPU per-step time is extrapolated to (default 256)")
    ap.add_argument("--precisions", help=f"comma-separated variants timed interleaved in one process per backbone "
                                          f"and size, as ratios to fp32 with the PSNR change (of: {', '.join(PRECISIONS)}; "
                                          "fp32 is always included); replaces the plain forward measurement")
    ap.add_argument("--note", help="a line on the measuring conditions, written into the results")
    C.add_timing_arguments(ap)
    args = ap.parse_args(argv)
    variants = None
    if args.precisions:
        variants = [v for v in args.precisions.split(",") if v]
        unknown = [v for v in variants if v not in PRECISIONS]
        if unknown:
            ap.error(f"--precisions: unknown {', '.join(unknown)}; expected some of: {', '.join(PRECISIONS)}")
        variants = ["fp32"] + [v for v in dict.fromkeys(variants) if v != "fp32"]

    C.offline()
    q = args.quick
    sizes = args.sizes or ([32] if q else [128, 256])
    repeat = args.repeat or (1 if q else 5)
    tiled_sizes = args.tiled_sizes or ([128] if q else [2048, 4096])
    tile = args.tile or (64 if q else 512)
    overlap = args.overlap if args.overlap is not None else (8 if q else 32)
    sde_sizes = args.sde_sizes or ([32] if q else [64, 128])
    sde_steps = args.sde_steps or (1 if q else 3)
    sde_target = args.sde_target or (64 if q else 256)
    timeout = args.timeout or (300.0 if q else 3600.0)
    # quick mode: tiny presets everywhere and a short IR-SDE (T=10, 2 fast steps) so it finishes in seconds
    sde_process = {"T": 10, "fast_steps": 2} if q else {}
    full_size = 32 if q else 64  # full sampling with the tiny UNet, measured

    chosen = BACKBONES
    if q:  # both nafnet configs are the same tiny network
        chosen = [b for i, b in enumerate(BACKBONES) if b[1] not in [c[1] for c in BACKBONES[:i]]]
    if args.backbones:
        chosen = [b for b in chosen if b[0] in args.backbones or b[1] in args.backbones]
        if not chosen:
            ap.error(f"--backbones {args.backbones}: none of {[b[0] for b in BACKBONES]}")

    C.start_workers(PRELOAD, args.threads)  # this process never imports torch: measurements run in workers
    machine = C.run_isolated(C.machine_info, timeout, threads=args.threads)
    if "error" in machine:
        print(f"backbones: could not read the machine info: {machine['error']}", file=sys.stderr)
        return 1
    devices = C.timing_devices(args.device, machine["cuda_available"])
    res: dict[str, Any] = {
        "benchmark": "backbones", "mode": "quick" if q else "full", "machine": machine,
        "settings": {"sizes": sizes, "repeat": repeat, "warmup": args.warmup, "batch": 1, "devices": devices,
                     "grad": "torch.no_grad", "timing": "CPU: time.perf_counter; GPU: CUDA events",
                     "memory": "CPU: ru_maxrss (peak reset after model+inputs) minus RSS then; "
                               "GPU: max_memory_allocated minus memory_allocated before the first call; "
                               "both after one pre-warm call at 16x16 (one-time library costs excluded)"},
        "backbones": [], "errors": [],
    }
    notes = (["Quick mode: every backbone at its `tiny` preset (not the official config)."] if q else []) + \
        ([args.note] if args.note else [])
    if notes:
        res["note"] = " ".join(notes)
    if variants:
        res["settings"]["precisions"] = variants

    log, check = C.reporter(res, machine)

    for label, name, preset in chosen:
        preset = "tiny" if q else preset
        entry: dict[str, Any] = {"label": f"{name} [tiny]" if q else label, "name": name, "preset": preset,
                                 "macs": {}, "cpu": {}}
        info = check(f"{entry['label']} inspect", C.run_isolated(inspect_worker, timeout, name=name, preset=preset,
                                                                  sizes=sizes))
        entry["total_params"] = info.get("total_params")
        entry["macs"] = {str(s): m for s, m in info.get("macs", {}).items()}
        for dev in devices:
            for s in sizes:
                log(f"{entry['label']} {s}x{s} {dev} ...")
                if variants:
                    if dev == "cpu":
                        vs = [v for v in variants if not v.startswith("fp16")]
                    else:
                        vs = variants
                    r = check(f"{entry['label']} {s} {dev} precisions", C.run_isolated(
                        precision_worker, timeout, name=name, preset=preset, size=s, device=dev,
                        warmup=args.warmup, repeat=repeat, variants=vs))
                    entry.setdefault("precision", {}).setdefault(dev, {})[str(s)] = r
                    if "error" not in r:
                        entry.setdefault(dev, {})[str(s)] = {k: v for k, v in r["variants"]["fp32"].items()}
                        for v, row in r["variants"].items():
                            log(f"  {v}: {row['median_ms']:.1f} ms, x{row['ratio_to_fp32']:.2f}, "
                                f"PSNR vs fp32 {row['psnr_vs_fp32_db'] or float('inf'):.1f} dB")
                    else:
                        entry.setdefault(dev, {})[str(s)] = r
                    continue
                r = check(f"{entry['label']} {s} {dev}", C.run_isolated(
                    forward_worker, timeout, name=name, preset=preset, size=s, device=dev,
                    warmup=args.warmup, repeat=repeat))
                entry.setdefault(dev, {})[str(s)] = r
                if "error" not in r:
                    log(f"  {r['median_ms']:.1f} ms")
        res["backbones"].append(entry)

    if not args.skip_tiled:
        name, preset = TILED_BACKBONE
        preset = "tiny" if q else preset
        tiled: dict[str, Any] = {"backbone": f"{name} {preset}", "tile": tile, "overlap": overlap, "device": "cpu",
                                 "runs": []}
        log(f"tiled: reference {tile}x{tile} forward ...")
        ref = check("tiled reference", C.run_isolated(forward_worker, timeout, name=name, preset=preset, size=tile,
                                                       device="cpu", warmup=1, repeat=1))
        tiled["tile_reference"] = ref
        for s in tiled_sizes:
            log(f"tiled {s}x{s} ...")
            r = check(f"tiled {s}", C.run_isolated(tiled_worker, timeout, name=name, preset=preset, size=s,
                                                    tile=tile, overlap=overlap))
            if "error" not in r and "error" not in ref:
                r["untiled_estimate_mib"] = ref["peak_rss_delta_mib"] * (s / tile) ** 2
                r["untiled_estimate_how"] = "extrapolated: reference tile forward peak ΔRSS x pixel ratio"
                log(f"  {r['seconds']:.1f} s, peak ΔRSS {r['peak_rss_delta_mib']:.0f} MiB")
            else:
                r.setdefault("size", s)
            tiled["runs"].append(r)
        res["tiled"] = tiled

    if not args.skip_sde:
        name, preset = SDE_BACKBONE
        big = "tiny" if q else preset
        sde: dict[str, Any] = {"backbone": f"{name} {big}", "process": {"name": "irsde", **sde_process}, "rows": []}
        rows = sde["rows"]
        T = 10 if q else 100
        fast = 2 if q else 20
        # 1. per-step time of the official UNet at small sizes on CPU (measured)
        points, measured = [], {}
        info = check("irsde inspect", C.run_isolated(inspect_worker, timeout, name=name, preset=big,
                                                     sizes=sorted({*sde_sizes, sde_target})))
        sde_macs = info.get("macs", {})
        sde["macs"] = {str(k): v for k, v in sde_macs.items()}
        for s in sde_sizes:
            log(f"irsde per-step {big} {s}x{s} ...")
            r = check(f"irsde per-step {s}", C.run_isolated(
                sde_worker, timeout, name=name, preset=big, size=s, device="cpu",
                sde_params={**sde_process, "sampler": "posterior"}, steps=sde_steps, warmup_steps=1))
            if "error" in r:
                continue
            if s in sde_macs:
                points.append((sde_macs[s], r["seconds_per_step"]))
            measured[s] = r["seconds_per_step"]
            rows.append({"what": f"{big} per step", "device": "cpu", "size": s, "network_calls": r["network_calls"],
                         "seconds": r["seconds"], "seconds_per_step": r["seconds_per_step"],
                         "how": f"measured ({r['network_calls']} steps after 1 warmup step)", "raw": r})
        # 2. per-image seconds at the target size: measured per-step time there, else extrapolated
        per_step = None
        if sde_target in measured:
            per_step, how = measured[sde_target], "measured per-step time x calls"
        elif points and sde_target in sde_macs:
            target_macs = sde_macs[sde_target]
            per_step, method = _extrapolate(points, target_macs)
            how = "EXTRAPOLATED (not measured)"
            sde["extrapolation"] = (f"{method}; measured points (GMACs, s/step): "
                                    + ", ".join(f"({m / 1e9:.2f}, {t:.3f})" for m, t in points)
                                    + f"; target {sde_target}x{sde_target} = {target_macs / 1e9:.2f} GMACs")
        if per_step is not None:
            for sampler, calls in (("posterior", T), ("fast", fast)):
                rows.append({"what": f"{big} {sampler} sampler", "device": "cpu", "size": sde_target,
                             "network_calls": calls, "seconds": per_step * calls, "seconds_per_step": per_step,
                             "how": how})
        # 3. full sampling with the tiny UNet on CPU (measured), 4. official UNet on GPU (measured)
        jobs = [("tiny", full_size, "cpu")]
        if "cuda" in devices:
            jobs.append((big, sde_target, "cuda"))
        for pre, s, dev in jobs:
            for sampler in ("posterior", "fast"):
                log(f"irsde {pre} {sampler} {s}x{s} {dev} ...")
                r = check(f"irsde {pre} {sampler} {s} {dev}", C.run_isolated(
                    sde_worker, timeout, name=name, preset=pre, size=s, device=dev,
                    sde_params={**sde_process, "sampler": sampler}, steps=None, warmup_steps=1))
                if "error" in r:
                    continue
                rows.append({"what": f"{pre} {sampler} sampler", "device": dev, "size": s,
                             "network_calls": r["network_calls"], "seconds": r["seconds"],
                             "seconds_per_step": r["seconds_per_step"], "how": "measured (full sampling)"})
        res["irsde"] = sde

    md = _markdown(res)
    json_path, md_path = C.write_outputs(res, md, args.out)
    print(md)
    print(f"\nwrote {json_path} and {md_path}")
    return 1 if res["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
