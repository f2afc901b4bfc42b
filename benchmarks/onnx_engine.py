"""onnxruntime against torch: the same backbone exported by ``vlir export onnx``, timed side by side.

    python benchmarks/onnx_engine.py --quick            # tiny presets at 64x64 (seconds)
    python benchmarks/onnx_engine.py                    # official configs at 256x256, one thread
    python benchmarks/onnx_engine.py --backbones nafnet --size 512 --threads 4

One process: per backbone, random weights (moved off their init, so NAFNet's zero-initialised
``beta`` / ``gamma`` do not skip work), exported with :func:`vlir.core.export.export_net`, then
torch fp32 and onnxruntime (CPU) called in turn, call by call, on one image (batch 1,
``torch.no_grad``); each one's median wall time, the ratio onnxruntime / torch, the export time
and the largest output difference. Writes JSON (``--out``, default
``benchmarks/results/onnx_engine.json``) and a markdown table beside it.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

# (label, registry name, preset at the official config)
BACKBONES = [("restormer", "restormer", None), ("nafnet sidd-width32", "nafnet", "sidd-width32")]


def measure(name: str, preset: str | None, size: int, warmup: int, repeat: int, threads: int) -> dict[str, Any]:
    import torch

    from vlir.core.export import export_net
    from vlir.core.onnx_engine import OnnxBackbone
    from vlir.core.registry import get_registry

    torch.manual_seed(0)
    net = get_registry().build("backbone", name, preset=preset).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        info = export_net(net, name, Path(tmp), check=False)
        export_s = time.perf_counter() - t
        onnx_net = OnnxBackbone(tmp, info, threads=threads)
        x = torch.rand(1, 3, size, size)
        times: dict[str, list[float]] = {"torch": [], "onnxruntime": []}
        runs = {"torch": lambda: net(x), "onnxruntime": lambda: onnx_net(x)}
        with torch.no_grad():
            diff = float((runs["torch"]() - runs["onnxruntime"]()).abs().max())
            for _ in range(warmup):
                for fn in runs.values():
                    fn()
            for _ in range(repeat):  # interleaved: both see the same load
                for k, fn in runs.items():
                    times[k] += C.time_calls(fn, 0, 1)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"torch": C.summary(times["torch"]), "onnxruntime": C.summary(times["onnxruntime"]),
            "ratio": med["onnxruntime"] / med["torch"], "export_s": export_s, "max_abs_diff": diff}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(C.RESULTS / "onnx_engine.json"), help="JSON path (markdown beside it)")
    ap.add_argument("--quick", action="store_true", help="tiny presets, 64x64, 1 repeat")
    ap.add_argument("--size", type=int, help="image side (default 256; quick 64)")
    ap.add_argument("--repeat", type=int, help="timed calls of each engine (default 5; quick 1)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed calls of each engine first (default 1)")
    ap.add_argument("--threads", type=int, default=1, help="torch and onnxruntime CPU threads (default 1)")
    ap.add_argument("--backbones", nargs="+", metavar="NAME", help="registry names (default restormer nafnet)")
    args = ap.parse_args(argv)
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        print("onnx_engine: needs the onnx extra: pip install 'vlir[onnx]'", file=sys.stderr)
        return 2

    C.offline()
    q = args.quick
    size, repeat = args.size or (64 if q else 256), args.repeat or (1 if q else 5)
    C.set_threads(args.threads)
    machine = C.machine_info(args.threads)
    chosen = [b for b in BACKBONES if not args.backbones or b[1] in args.backbones]
    res: dict[str, Any] = {"benchmark": "onnx_engine", "mode": "quick" if q else "full", "machine": machine,
                           "settings": {"size": size, "repeat": repeat, "warmup": args.warmup,
                                        "threads": args.threads, "batch": 1, "dtype": "float32"},
                           "backbones": [], "errors": []}
    log, check = C.reporter(res, machine)
    rows = []
    for label, name, preset in chosen:
        preset = "tiny" if q else preset
        log(f"{label} ({preset or 'official'}) at {size}x{size}")
        try:
            r = measure(name, preset, size, args.warmup, repeat, args.threads)
        except Exception as e:  # noqa: BLE001 - recorded, the other backbones go on
            check(label, {"error": f"{type(e).__name__}: {e}"})
            continue
        res["backbones"].append({"backbone": label, "preset": preset, **r})
        rows.append([label, C.fmt(r["torch"]["median_ms"]), C.fmt(r["onnxruntime"]["median_ms"]),
                     f"{r['ratio']:.2f}", f"{r['export_s']:.0f}", f"{r['max_abs_diff']:.1e}"])
    md = [f"# onnxruntime against torch ({res['mode']}: {size}x{size}, batch 1, fp32, {args.threads} thread(s), "
          f"median of {repeat})", "",
          C.md_table(["backbone", "torch ms", "onnxruntime ms", "ratio", "export s", "max abs diff"], rows), "",
          *C.md_footer(res)]
    json_path, md_path = C.write_outputs(res, "\n".join(md), args.out)
    print("\n".join(md))
    print(f"wrote {json_path} and {md_path}", file=sys.stderr)
    return 1 if res["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
