"""Copy scikit-image's bundled photos (installed with basicsr) into a folder of training images.

    python tools/extra_images.py runs/extra

The default model's JPEG expert was last fine-tuned with these nine lossless PNGs added to its
training folders (specs/default.yaml). JPEG-sourced images (rocket, retina, hubble) are left out:
their artifacts would be learnt as content; so is "coffee", the source of vlir's demo image.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

NAMES = ["astronaut", "chelsea", "motorcycle_left", "motorcycle_right", "ihc",  # colour
         "camera", "brick", "grass", "gravel"]                                  # grey


def copy_images(out: str) -> list[Path]:
    import skimage

    src = Path(skimage.__file__).parent / "data"
    missing = [n for n in NAMES if not (src / f"{n}.png").is_file()]
    if missing:
        raise SystemExit(f"scikit-image {skimage.__version__} at {src} lacks {', '.join(missing)}.png")
    dst = Path(out)
    dst.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copyfile(src / f"{n}.png", dst / f"{n}.png")) for n in NAMES]


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    print(f"wrote {len(copy_images(sys.argv[1]))} images to {sys.argv[1]}")
