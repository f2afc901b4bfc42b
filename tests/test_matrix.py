"""Every perceiver feeds every backbone in a spec-built pipeline (forward, training step, save/load)."""
from __future__ import annotations

import pytest
import torch

from vlir.core import Pipeline
from vlir.core.registry import Registry
from vlir.core.train.objective import training_losses

REG = Registry(autoload=False)
PERCEIVERS = REG.names("perceiver")
BACKBONES = REG.names("backbone")


def spec_for(perceiver: str, backbone: str) -> dict:
    spec = {"perceivers": [{"type": perceiver, "preset": "tiny"}],
            "backbone": {"type": backbone, "preset": "tiny"}, "losses": [{"type": "l1"}]}
    if backbone == "conditional_unet":
        spec["process"] = {"type": "irsde", "params": {"T": 4, "fast_steps": 2}}
        spec["losses"] = []
    if backbone == "experts":  # routed by the perceiver's class probabilities; one expert per class
        spec["backbone"] = {"type": "experts", "params": {"expert_params": REG.presets("backbone", "experts")["tiny"]["expert_params"]}}
        spec["condition"] = {"vector": "quality" if perceiver == "quality_perceiver" else "probs"}
    return spec


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("perceiver", PERCEIVERS)
def test_perceiver_feeds_backbone(perceiver, backbone, tmp_path):
    torch.manual_seed(0)
    pipe = Pipeline.from_spec(spec_for(perceiver, backbone))
    g = torch.Generator().manual_seed(0)
    lq, gt = torch.rand(2, 3, 24, 20, generator=g), torch.rand(2, 3, 24, 20, generator=g)
    cond = pipe.condition(pipe.perceive(lq))
    assert cond is not None and (cond.vector is not None or cond.tokens is not None)
    total, logs = training_losses(pipe, {"lq": lq, "gt": gt, "degradation_name": ["noisy", "hazy"],
                                        "caption": ["a photo", "a photo"]}, generator=g)
    assert torch.isfinite(total)
    total.backward()
    assert any(p.grad is not None for p in pipe.backbone.parameters())
    pipe.eval()
    with torch.no_grad():
        out, perceptions = pipe.restore(lq, steps=2, generator=torch.Generator().manual_seed(1))
    assert out.shape == lq.shape and perceiver in perceptions
    folder = pipe.save(tmp_path / "p")
    again = Pipeline.load(folder).eval()
    with torch.no_grad():
        out2, _ = again.restore(lq, steps=2, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(out, out2)
