"""Join the runs of tools/train_default.sh into the default model's pipeline folder (fp16).

    python tools/assemble_default.py RUNS OUT      # e.g. runs core/assets/default

The perceiver comes from RUNS/default-perceiver, the experts from RUNS/default-restorer, except
those that a later stage (noise, jpeg, haze: stage.degradations) trained alone, which come from that
stage's run; the JPEG expert from RUNS/default-jpeg-bsd instead when that run exists (its fine-tune on
CBSD432, tools/train_default.sh with CBSD432 set).
"""
from __future__ import annotations

import sys
from pathlib import Path

from vlir.core import Pipeline
from vlir.core.io import load_checkpoint

SPEC = Path(__file__).resolve().parents[1] / "specs" / "default.yaml"
# run -> the class of the expert it trained; a later run replaces an earlier one's expert
EXPERT_STAGES = {"noise": "noisy", "jpeg": "jpeg-compressed", "haze": "hazy", "jpeg-bsd": "jpeg-compressed"}
OPTIONAL = {"jpeg-bsd"}  # needs data that ../shared lacks (tools/cbsd432.py)


def assemble(runs: str, out: str) -> None:
    pipe = Pipeline.from_spec(SPEC, build_losses=False)
    perceiver = pipe.perceivers["daclip"]
    perceiver.load_weights(f"{runs}/default-perceiver/pipeline/perceiver.daclip.safetensors")
    experts = pipe.backbone
    source = {k: f"{runs}/default-restorer" for k in range(len(experts.nets))}
    for stage, word in EXPERT_STAGES.items():
        if stage in OPTIONAL and not Path(f"{runs}/default-{stage}").is_dir():
            continue
        source[perceiver.class_names.index(word)] = f"{runs}/default-{stage}"
    files: dict[str, dict] = {}
    for k, run in source.items():  # each expert from the run that trained it last
        if run not in files:
            files[run] = load_checkpoint(f"{run}/pipeline/backbone.safetensors")
        sd = files[run]
        prefix = f"nets.{k}."
        experts.nets[k].load_state_dict({n[len(prefix):]: v for n, v in sd.items() if n.startswith(prefix)})
    pipe.half().save(out)
    print(f"assembled {out}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    assemble(sys.argv[1], sys.argv[2])
