"""Before/after of real photos: the first image of RNI15 (real noise, no reference) and of LOL
eval15 (real low light, with its reference), restored by pipelines in one step and step by step.

    python tools/real_photos.py docs/real-photos.jpg [--pipeline default --pipeline runs/x/pipeline]

The images are the first of each folder by name (not picked by their results). Each row: the
input, one step (`Pipeline.restore`), step by step (`restore_steps`, 3 steps at most, its path
written above it) and, for LOL, the reference with PSNR of each column against it.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("VLIR_SHARED", ROOT.parent / "shared"))
SETS = (("RNI15", "RNI15", None), ("LOL eval15", "LOL/eval15/low", "LOL/eval15/high"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="output image (.jpg or .png)")
    ap.add_argument("--pipeline", action="append", help="pipeline folder or 'default' (repeatable)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)

    import torch
    from PIL import Image, ImageDraw

    import vlir
    from vlir.core.data.datasets import list_images
    from vlir.core.data.images import read_image
    from vlir.core.demo import _font, _thumb
    from vlir.core.io import atomic_path
    from vlir.core.metrics import psnr

    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.pipeline or ["default"]
    font = _font(14)
    rows = []
    for title, lq_dir, gt_dir in SETS:
        files = list_images(SHARED / "data" / lq_dir)
        if not files:
            sys.exit(f"no images in {SHARED / 'data' / lq_dir}")
        lq, _ = read_image(files[0])
        gt = read_image(SHARED / "data" / gt_dir / files[0].name)[0] if gt_dir else None
        for name in names:
            pipe = vlir.load(name)
            with torch.inference_mode():
                one, _ = pipe.restore(lq[None])
            chain, _, paths = pipe.restore_steps(lq[None], steps=3)
            path = str(paths[0]).replace("→", "->")  # the default font has no arrow
            cells = [("input", lq), ("one step", one[0]), (f"step by step: {path}", chain[0])]
            if gt is not None:
                cells = [(f"{psnr(x, gt):.2f} dB  {t}", x) for t, x in cells] + [("reference", gt)]
            label = pipe.spec.name if name == "default" else f"{pipe.spec.name} ({name})"
            rows.append((f"{title} {files[0].name}  |  {label}", cells))
            print(rows[-1][0], " | ".join(t for t, _ in cells))

    pad, head = 8, 20
    thumbs = [[(t, _thumb(x)) for t, x in cells] for _, cells in rows]
    width = max(sum(im.width + pad for _, im in r) for r in thumbs) + pad
    heights = [max(im.height for _, im in r) for r in thumbs]
    grid = Image.new("RGB", (width, sum(h + 2 * head + pad for h in heights) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    y = pad
    for (title, _), r, h in zip(rows, thumbs, heights):
        draw.text((pad, y), title, fill=(0, 0, 0), font=font)
        x = pad
        for t, im in r:
            draw.text((x, y + head), t[:im.width // 7], fill=(0, 0, 0), font=font)  # ~7 px a letter
            grid.paste(im, (x, y + 2 * head))
            x += im.width + pad
        y += h + 2 * head + pad
    out = Path(args.out)
    with atomic_path(out) as tmp:
        grid.save(tmp, format="JPEG" if out.suffix.lower() in (".jpg", ".jpeg") else "PNG", quality=90)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
