"""Training throughput (optimisation steps per second) of tiny pipelines at patch 128.

Each configuration runs the trainer's step (forward through the pipeline's losses, backward,
gradient clipping, AdamW, EMA) on in-memory batches, with and without a tiny DA-CLIP perceiver.
CUDA is used when available. ``--variants`` picks the trainer's precision / memory-format settings
to compare (``auto``: ``train.amp: auto``, i.e. autocast on CUDA only; ``fp32``; ``bf16``: autocast
also on a CPU; ``+cl``: ``train.channels_last``). Results go to
``benchmarks/results/train_throughput.json``.

    python benchmarks/train_throughput.py --seconds 10 [--batch 4] [--device cpu] [--threads 1]
    python benchmarks/train_throughput.py --configs jpeg-expert --variants fp32,bf16,fp32+cl,bf16+cl \
        --batch 8 --threads 2 --out benchmarks/results/train_throughput_cpu.json
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
from vlir.core.train.objective import Objective
from vlir.core.train.trainer import amp_dtype

OUT = Path(__file__).resolve().parent / "results" / "train_throughput.json"

# name: (backbone, its preset or params, perceiver)
EXPERT = {"width": 32, "enc_blk_nums": [1, 1, 1, 1], "middle_blk_num": 1, "dec_blk_nums": [1, 1, 1, 1]}
CONFIGS = {
    "nafnet": ("nafnet", "tiny", None),
    "nafnet+daclip": ("nafnet", "tiny", "daclip"),
    "restormer": ("restormer", "tiny", None),
    "restormer+daclip": ("restormer", "tiny", "daclip"),
    "jpeg-expert": ("nafnet", EXPERT, None),  # the default JPEG expert before tools/grow.py (4.4M)
}
VARIANTS = {"auto": ("auto", False), "fp32": ("off", False), "bf16": ("bf16", False),
            "auto+cl": ("auto", True), "fp32+cl": ("off", True), "bf16+cl": ("bf16", True)}


def build(backbone: str, preset: str | dict, perceiver: str | None) -> Pipeline:
    spec = {"backbone": {"type": backbone, **({"preset": preset} if isinstance(preset, str) else {"params": preset})},
            "losses": [{"type": "l1"}]}
    if perceiver:
        spec["perceivers"] = [{"type": perceiver, "preset": "tiny"}]
    return Pipeline.from_spec(spec)


def measure(name: str, variant: str, device: torch.device, batch: int, patch: int,
            seconds: float, warmup: int) -> dict:
    backbone, preset, perceiver = CONFIGS[name]
    amp_setting, channels_last = VARIANTS[variant]
    torch.manual_seed(0)
    pipe = build(backbone, preset, perceiver).to(device)
    if channels_last:
        pipe.to(memory_format=torch.channels_last)
    pipe.eval()
    for p in pipe.perceivers.parameters():
        p.requires_grad_(False)
    pipe.backbone.train()
    params = [(n, p) for n, p in pipe.backbone.named_parameters() if p.requires_grad]
    opt = torch.optim.AdamW([p for _, p in params], lr=1e-4)
    ema = EMA(params, 0.999)
    objective = Objective(pipe, "restorer")
    amp = amp_dtype(amp_setting, device)
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
    return {"config": name, "variant": variant, "backbone": backbone,
            "preset": preset if isinstance(preset, str) else None, "params": None if isinstance(preset, str) else preset,
            "perceiver": perceiver and f"{perceiver} (tiny)", "channels_last": channels_last,
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
    ap.add_argument("--configs", default="nafnet,nafnet+daclip,restormer,restormer+daclip",
                    help=f"comma-separated, of: {', '.join(CONFIGS)}")
    ap.add_argument("--variants", default="auto", help=f"comma-separated, of: {', '.join(VARIANTS)}")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    configs, variants = args.configs.split(","), args.variants.split(",")
    for value, known, what in ((configs, CONFIGS, "--configs"), (variants, VARIANTS, "--variants")):
        if bad := [v for v in value if v not in known]:
            ap.error(f"{what}: unknown {', '.join(bad)}; expected some of: {', '.join(known)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    rows = []
    for name in configs:
        for variant in variants:
            r = measure(name, variant, device, args.batch, args.patch, args.seconds, args.warmup)
            print(f"{name:<17} {variant:<8} {r['it_per_s']:8.3f} it/s  {r['images_per_s']:8.2f} img/s")
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
