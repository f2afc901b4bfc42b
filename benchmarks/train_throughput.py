"""Training throughput (optimisation steps per second) of tiny pipelines at patch 128.

Each configuration runs the trainer's step (forward through the pipeline's losses, backward,
gradient clipping, AdamW, EMA) on in-memory batches, with and without a tiny DA-CLIP perceiver.
CUDA is used when available (with the trainer's autocast). Results go to
``benchmarks/results/train_throughput.json``.

    python benchmarks/train_throughput.py --seconds 10 [--batch 4] [--device cpu] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import os
import time
from contextlib import nullcontext
from pathlib import Path

import sys

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
from vlir.core.pipeline import Pipeline
from vlir.core.train.ema import EMA
from vlir.core.train.trainer import Objective, amp_dtype

OUT = Path(__file__).resolve().parent / "results" / "train_throughput.json"

CONFIGS = [
    ("nafnet", None),
    ("nafnet", "daclip"),
    ("restormer", None),
    ("restormer", "daclip"),
]


def build(backbone: str, perceiver: str | None) -> Pipeline:
    spec = {"backbone": {"type": backbone, "preset": "tiny"}, "losses": [{"type": "l1"}]}
    if perceiver:
        spec["perceivers"] = [{"type": perceiver, "preset": "tiny"}]
    return Pipeline.from_spec(spec)


def measure(backbone: str, perceiver: str | None, device: torch.device, batch: int, patch: int,
            seconds: float, warmup: int) -> dict:
    torch.manual_seed(0)
    pipe = build(backbone, perceiver).to(device)
    pipe.eval()
    for p in pipe.perceivers.parameters():
        p.requires_grad_(False)
    pipe.backbone.train()
    params = [(n, p) for n, p in pipe.backbone.named_parameters() if p.requires_grad]
    opt = torch.optim.AdamW([p for _, p in params], lr=1e-4)
    ema = EMA(params, 0.999)
    objective = Objective(pipe, "restorer")
    amp = amp_dtype("auto", device)
    g = torch.Generator().manual_seed(0)
    batches = [{"lq": torch.rand(batch, 3, patch, patch, generator=g).to(device),
                "gt": torch.rand(batch, 3, patch, patch, generator=g).to(device)} for _ in range(4)]

    def step(i: int) -> None:
        with torch.autocast(device.type, dtype=amp) if amp is not None else nullcontext():
            loss, _ = objective(batches[i % len(batches)])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for _, p in params], 1.0)
        opt.step()
        ema.update()

    for i in range(warmup):
        step(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    n, t0 = 0, time.perf_counter()
    while True:
        step(n)
        n += 1
        if device.type == "cuda" and n % 5:
            continue
        if device.type == "cuda":
            torch.cuda.synchronize()
        if time.perf_counter() - t0 >= seconds and n >= 3:
            break
    dt = time.perf_counter() - t0
    return {"backbone": backbone, "preset": "tiny", "perceiver": perceiver and f"{perceiver} (tiny)",
            "backbone_params": sum(p.numel() for _, p in params), "steps": n, "seconds": round(dt, 3),
            "it_per_s": round(n / dt, 3), "images_per_s": round(n * batch / dt, 2),
            "amp": str(amp).replace("torch.", "") if amp is not None else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0, help="timed seconds per configuration")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--patch", type=int, default=128)
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    rows = []
    for backbone, perceiver in CONFIGS:
        r = measure(backbone, perceiver, device, args.batch, args.patch, args.seconds, args.warmup)
        print(f"{backbone:<10} {str(r['perceiver']):<14} {r['it_per_s']:8.3f} it/s  {r['images_per_s']:8.2f} img/s")
        rows.append(r)
    result = {
        "benchmark": "train_throughput", "what": "trainer step: losses forward, backward, clip, AdamW, EMA",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu: {C._cpu_model()}",
        "cpu_count": os.cpu_count(), "load_average": [round(x, 2) for x in os.getloadavg()],
        "torch": torch.__version__, "threads": torch.get_num_threads(), "batch": args.batch, "patch": args.patch,
        "seconds_per_config": args.seconds, "results": rows,
    }
    from vlir.core.io import atomic_write_text

    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
