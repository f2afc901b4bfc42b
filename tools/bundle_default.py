"""Store a trained pipeline as the built-in default model: its weights in fp16 (half the size; they are
read back into fp32 modules), spec and files as ``Pipeline.save`` writes them.

    python tools/bundle_default.py runs/default-v2/pipeline [core/assets/default]
    python tools/bundle_default.py core/assets/default --perceiver runs/v2-perceiver/pipeline

``--perceiver RUN`` takes the perceivers' weights from another pipeline of the same spec (a run of the
perceiver stage alone, ``vlir train SPEC --stages perceiver``) and the rest from the first one: the
restorer stages of ``specs/default-v2.yaml`` do not read the perceiver (they are conditioned on the
true class), so a new perceiver stage can join experts trained before.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from vlir.core import Pipeline

DEFAULT = Path(__file__).resolve().parents[1] / "core" / "assets" / "default"


def bundle(src: str, out: Path = DEFAULT, perceiver: str | None = None) -> None:
    pipe = Pipeline.load(src)
    if perceiver is not None:
        other = Pipeline.load(perceiver)
        if set(other.perceivers) != set(pipe.perceivers):
            raise SystemExit(f"{perceiver}: perceivers {sorted(other.perceivers)}, but {src} has "
                             f"{sorted(pipe.perceivers)}")
        for role, module in pipe.perceivers.items():
            module.load_state_dict(other.perceivers[role].state_dict())
    pipe.half().save(out)
    sizes = ", ".join(f"{p.name} {p.stat().st_size / 2**20:.1f} MiB" for p in sorted(Path(out).glob("*.safetensors")))
    print(f"bundled {src}{f' with the perceivers of {perceiver}' if perceiver else ''} as {out}: {sizes}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src", help="pipeline folder")
    p.add_argument("out", nargs="?", default=str(DEFAULT), help="where to write it (default: core/assets/default)")
    p.add_argument("--perceiver", help="pipeline folder whose perceivers' weights replace those of src")
    a = p.parse_args()
    bundle(a.src, Path(a.out), a.perceiver)
