"""Store a trained pipeline as the built-in default model: its weights in fp16 (half the size; they are
read back into fp32 modules), spec and files as ``Pipeline.save`` writes them.

    python tools/bundle_default.py runs/default-v2/pipeline [core/assets/default]
"""
from __future__ import annotations

import sys
from pathlib import Path

from vlir.core import Pipeline

DEFAULT = Path(__file__).resolve().parents[1] / "core" / "assets" / "default"


def bundle(src: str, out: Path = DEFAULT) -> None:
    Pipeline.load(src).half().save(out)
    sizes = ", ".join(f"{p.name} {p.stat().st_size / 2**20:.1f} MiB" for p in sorted(Path(out).glob("*.safetensors")))
    print(f"bundled {src} as {out}: {sizes}")


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    bundle(sys.argv[1], Path(sys.argv[2]) if len(sys.argv) == 3 else DEFAULT)
