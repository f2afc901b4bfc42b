"""Start a deeper backbone from a trained one ("growing"), to train on from there.

    python tools/grow.py SRC SPEC OUT
    # e.g. core/assets/default/backbone.safetensors specs/default.yaml runs/grown.safetensors

Builds SPEC's backbone, copies every tensor of SRC (same name, same shape) into it and saves it to OUT
as safetensors; the tensors SRC lacks must be whole new blocks, which keep their initialisation.
NAFNet's blocks are the identity at initialisation (their output scales ``beta`` and ``gamma`` start at
zero), so a NAFNet grown with more blocks computes exactly what SRC did, and training it
(`vlir train SPEC --set backbone.weights=OUT`) starts from SRC's quality instead of from scratch.
A tensor of SRC that SPEC's backbone does not have, or has with another shape, is an error.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from vlir.core import Pipeline
from vlir.core.io import CheckpointError, load_checkpoint, save_safetensors


def grow(src: str | Path, spec: str | Path, out: str | Path) -> list[str]:
    """Write SPEC's backbone with SRC's tensors to OUT; returns the names of the new tensors."""
    torch.manual_seed(0)  # the new blocks' initialisation, reproducibly
    backbone = Pipeline.from_spec(spec, build_losses=False).backbone
    own = backbone.state_dict()
    old = load_checkpoint(str(src))
    new = [k for k in own if k not in old]
    problems = {
        "not in the new backbone": [k for k in old if k not in own],
        "other shapes": [f"{k} {tuple(old[k].shape)} -> {tuple(own[k].shape)}"
                         for k in old if k in own and old[k].shape != own[k].shape],
        # a module with some tensors from SRC and some new ones is not a new block
        "modules only partly in the source": sorted({k.rsplit(".", 1)[0] for k in new}
                                                    & {k.rsplit(".", 1)[0] for k in old}),
    }
    found = [f"{what}: {', '.join(items[:5])}" for what, items in problems.items() if items]
    if found:
        raise CheckpointError(f"{src} cannot grow into the backbone of {spec} (growing only adds whole "
                              f"blocks): " + "; ".join(found))
    backbone.load_state_dict({**own, **old})  # copied in the backbone's dtype
    save_safetensors(backbone.state_dict(), out)
    return new


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        sys.exit(__doc__)
    new = grow(*argv)
    print(f"wrote {argv[2]}: {len(new)} new tensors, the rest from {argv[0]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
