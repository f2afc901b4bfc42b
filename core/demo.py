"""``vlir demo``: degrade a bundled image with each degradation, restore it, write a grid.

The bundled image ``assets/demo.png`` is a 256x256 crop of scikit-image's "coffee" photo
(Rachel Michetti, CC0; see ``assets/README.md``), not used to train the default model. Rows of the grid:
one degradation each; columns: degraded, restored, clean. Each image is restored as ``vlir restore``
restores it (step by step where the pipeline chains by default, :func:`vlir.core.chain.default_steps`).
PSNR before/after, the detected degradation and the steps taken are printed and written to
``demo.json``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .restore import RestoreError, describe, load_pipeline, summarize

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .pipeline import Pipeline

# degradation type -> the settings shown in the demo and measured by benchmarks/default_model.py
# (fixed values, seeded draws; noise: the CBSD68 sigma 25 protocol)
DEMO_DEGRADATIONS: dict[str, dict[str, Any]] = {
    "noise": {"sigma": 25.0},
    "jpeg": {"quality": 20},
    "blur": {"sigma": 2.0},
    "motion_blur": {"length": 15.0, "angle": 30.0},
    "low_light": {"gamma": 2.0, "scale": 0.3, "shot": 0.002, "read": 0.002},
    "haze": {"beta": 1.2, "airlight": 0.85},
    "rain": {},
}
CELL = 256  # displayed size of the longer side of each image


def demo_image() -> Path:
    return Path(__file__).resolve().parent / "assets" / "demo.png"


def demo_degradations(pipe: "Pipeline | None" = None) -> list[tuple[str, dict[str, Any]]]:
    """(type, params) per row: the pipeline's training degradations when its spec lists them
    (with the demo settings for known types; not ``clean``, the identity), else every demo degradation."""
    from .registry import get_registry

    reg = getattr(pipe, "registry", None) or get_registry()
    known = {e.name for e in reg.list("degradation")}
    data = getattr(getattr(pipe, "spec", None), "data", None)
    rows: list[tuple[str, dict[str, Any]]] = []
    if data is not None and data.degradations:
        for d in data.degradations:
            if d.type in known and d.type != "clean" and d.type not in [r[0] for r in rows]:  # clean: nothing to show
                rows.append((d.type, DEMO_DEGRADATIONS.get(d.type, dict(d.params))))
    if not rows:
        rows = [(t, p) for t, p in DEMO_DEGRADATIONS.items() if t in known]
    return rows


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="vlir-demo", metavar="DIR", help="output folder (default: ./vlir-demo)")
    p.add_argument("--image", metavar="FILE", help="clean image to degrade (default: the bundled demo image)")
    p.add_argument("--seed", type=int, default=0, help="seed of the degradations (default 0)")
    p.add_argument("--tile", type=int, metavar="N", help="run the backbone on N x N tiles")


def run_demo(args: argparse.Namespace) -> int:
    from .default import DefaultModelMissing

    try:
        return _demo(args)
    except DefaultModelMissing as e:
        raise RestoreError(f"the demo restores with the built-in default model, which is not available: {e}") from e


def _label(draw, xy, text, font) -> None:
    draw.text(xy, text, fill=(0, 0, 0), font=font)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed bitmap font
        return ImageFont.load_default()


def _thumb(img: "torch.Tensor"):
    from PIL import Image

    arr = (img.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0).round().astype("uint8")
    im = Image.fromarray(arr)
    if max(im.size) > CELL:
        im.thumbnail((CELL, CELL), Image.Resampling.LANCZOS)
    return im


def make_grid(rows: list[dict[str, Any]], clean: "torch.Tensor"):
    """A PIL image: header with column names, then per row a caption line and three images."""
    from PIL import Image, ImageDraw

    font, small = _font(16), _font(13)
    ct = _thumb(clean)
    w, h = ct.size
    pad, head, cap = 8, 28, 22
    width = 3 * w + 4 * pad
    height = head + len(rows) * (cap + h + pad) + pad
    grid = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for j, title in enumerate(("degraded", "restored", "clean")):
        _label(draw, (pad + j * (w + pad), 6), title, font)
    y = head
    for row in rows:
        text = (f"{row['degradation']}: PSNR {row['psnr_degraded']:.2f} -> {row['psnr_restored']:.2f} dB"
                f"  |  detected: {row['detected']}")
        _label(draw, (pad, y + 3), text, small)
        y += cap
        for j, im in enumerate((_thumb(row["lq"]), _thumb(row["restored"]), ct)):
            grid.paste(im, (pad + j * (w + pad), y))
        y += h + pad
    return grid


def _demo(args: argparse.Namespace) -> int:
    import torch

    from .chain import default_steps, restore_auto
    from .data.images import read_image
    from .io import atomic_path, atomic_write_text, remove_stale_temp
    from .metrics import psnr

    image = Path(args.image).expanduser() if args.image else demo_image()
    if not image.is_file():
        raise RestoreError(f"demo image {image} not found" + ("" if args.image else " (the installation is incomplete)"))
    out = Path(args.out).expanduser()
    if out.exists() and not out.is_dir():
        raise RestoreError(f"output folder {out} exists and is not a folder")
    pipe = load_pipeline(args)
    clean, _ = read_image(image)
    device = pipe.device
    reg = pipe.registry
    rows = []
    print(f"{'degradation':<12} {'PSNR degraded':>13} {'PSNR restored':>13}  detected"
          + ("  [path]" if default_steps(pipe) is not None else ""))
    for i, (name, params) in enumerate(demo_degradations(pipe)):
        deg = reg.build("degradation", {"type": name, "params": params})
        gen = torch.Generator().manual_seed(args.seed + i)
        with torch.no_grad():
            lq = deg(clean[None], generator=gen).clamp(0, 1)
        sgen = torch.Generator(device=device).manual_seed(args.seed) if pipe.process is not None else None
        with torch.inference_mode():  # as `vlir restore` does it: step by step where the pipeline chains
            restored, perceptions, paths = restore_auto(pipe, lq.to(device), tile=args.tile, generator=sgen)
        done = str(paths[0]) if paths is not None else None
        restored = restored[0].float().cpu()
        s = summarize(perceptions)
        row = {"degradation": name, "params": params, "psnr_degraded": psnr(lq[0], clean),
               "psnr_restored": psnr(restored, clean), "detected": describe(s),
               "detected_class": s.get("degradation"), "confidence": s.get("confidence"), "path": done,
               "lq": lq[0], "restored": restored}
        rows.append(row)
        print(f"{name:<12} {row['psnr_degraded']:>10.2f} dB {row['psnr_restored']:>10.2f} dB  {row['detected']}"
              + (f"  [{done}]" if done else ""))
    try:
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_temp(out)
        grid = make_grid(rows, clean)
        with atomic_path(out / "grid.png") as tmp:
            grid.save(tmp, format="PNG")
        summary = [{k: v for k, v in r.items() if k not in ("lq", "restored")} for r in rows]
        shown = str(image) if args.image else "bundled: vlir/core/assets/demo.png"  # no machine-specific path
        atomic_write_text(out / "demo.json", json.dumps({"image": shown, "rows": summary}, indent=2) + "\n")
    except OSError as e:
        raise RestoreError(f"cannot write to {out}: {e.strerror or e}") from e
    print(f"wrote {out / 'grid.png'} and {out / 'demo.json'}")
    return 0
