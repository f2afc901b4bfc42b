"""Copy CBSD432 images into a training folder, after checking that none of them is a test image.

    python tools/cbsd432.py SRC OUT [--count 400] [--test ../shared/data/CBSD68]

CBSD432 is BSD500 less the 68 images of CBSD68: the field's usual colour training set for CBSD68
(DnCNN, FFDNet). ../shared has no copy; one is in the public repository Magauiya/Extended_SURE
(`Dataset/CBSD432`, the original BSDS500 JPEGs, 481x321). The default model's JPEG expert was last
fine-tuned on the first 400 of them by name (400: what fitted, with the code, into the 64 MiB that travel
to the lent GPU machine); `tools/train_default.sh` runs that stage when `CBSD432=OUT` is set.

An image whose name (without extension) is a test image's, or whose 48x32 grey thumbnail (landscape)
is within 2 grey levels (mean absolute difference) of a test image's, is an error: nothing is copied.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from vlir.core.data.datasets import list_images

NEAR = 2.0  # grey levels: the nearest distinct CBSD432 / CBSD68 pair is about 10 apart


def thumbnail(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        im = im.convert("L")
        if im.width < im.height:
            im = im.transpose(Image.Transpose.ROTATE_90)
        return np.asarray(im.resize((48, 32), Image.Resampling.BILINEAR), dtype=np.float32)


def overlaps(train: list[Path], test: list[Path]) -> list[str]:
    """Each training image that is (by name or by its thumbnail) one of the test images."""
    names = {p.stem: p for p in test}
    thumbs = np.stack([thumbnail(p) for p in test]) if test else np.zeros((0, 32, 48), np.float32)
    found = []
    for p in train:
        if p.stem in names:
            found.append(f"{p.name} has the name of test image {names[p.stem].name}")
            continue
        if len(thumbs):
            diff = np.abs(thumbs - thumbnail(p)).mean(axis=(1, 2))
            k = int(diff.argmin())
            if diff[k] < NEAR:
                found.append(f"{p.name} looks like test image {test[k].name} (mean difference {diff[k]:.2f})")
    return found


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("src", type=Path, help="folder of CBSD432 images (e.g. Extended_SURE/Dataset/CBSD432)")
    ap.add_argument("out", type=Path, help="training folder to write")
    ap.add_argument("--count", type=int, default=400, help="the first N images by name (default 400)")
    ap.add_argument("--test", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/CBSD68",
                    help="test images that must not be trained on (default ../shared/data/CBSD68)")
    args = ap.parse_args(argv)
    try:
        chosen = list_images(args.src, recursive=False)[:args.count]
        test = list_images(args.test, recursive=False)
    except FileNotFoundError as e:
        raise SystemExit(str(e)) from None
    if not chosen:
        raise SystemExit(f"{args.src}: no images")
    found = overlaps(chosen, test)
    if found:
        print(f"{len(found)} of the images are test images of {args.test}; nothing copied:", file=sys.stderr)
        print("\n".join("  " + f for f in found), file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    for p in chosen:
        shutil.copyfile(p, args.out / p.name)
    print(f"copied {len(chosen)} images to {args.out}; none is one of the {len(test)} in {args.test}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
