"""A picture of every registered degradation on one photo (seeded), with its class word.

    python tools/degradation_gallery.py docs/degradations.jpg [--image PHOTO] [--size 256]

Each tile is the photo degraded by one registered degradation with its default params (presets as
extra tiles, e.g. ``rain_streaks:heavy``); a mix tile lists the class words it drew.
"""
from __future__ import annotations

import argparse

import torch


def gallery(out: str, image: str | None = None, size: int = 256, seed: int = 0) -> list[str]:
    from PIL import Image, ImageDraw

    from vlir.core.data.images import read_image, write_image
    from vlir.core.registry import get_registry
    from vlir.core.demo import demo_image

    x = read_image(image or demo_image())[0][None]
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bicubic", antialias=True).clamp(0, 1)
    reg = get_registry()
    tiles: list[tuple[str, torch.Tensor]] = [("input", x[0])]
    for entry in reg.list("degradation"):
        for preset in [None, *sorted(entry.presets)]:
            params = entry.presets.get(preset, {}) if preset else {}
            d = reg.load("degradation", entry.name)(**params)
            g = torch.Generator().manual_seed(seed)
            if hasattr(d, "compose"):
                y, labels = d.compose(x, g)
                caption = f"{entry.name}: {' + '.join(labels[0])}"
            else:
                y = d(x, generator=g)
                caption = f"{entry.name}{':' + preset if preset else ''} ({d.label})"
            tiles.append((caption, y[0]))
    cols = 5
    rows = (len(tiles) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * size, rows * (size + 18)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (caption, t) in enumerate(tiles):
        arr = (t.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype("uint8")
        r, c = divmod(i, cols)
        sheet.paste(Image.fromarray(arr), (c * size, r * (size + 18) + 18))
        draw.text((c * size + 4, r * (size + 18) + 3), caption[:44], fill="black")
    arr = torch.from_numpy(__import__("numpy").asarray(sheet).copy()).permute(2, 0, 1).float() / 255
    write_image(out, arr, quality=90)
    return [c for c, _ in tiles]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--image")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    print("\n".join(gallery(a.out, a.image, a.size, a.seed)))


if __name__ == "__main__":
    main()
