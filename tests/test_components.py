"""Every registered component, timm-style: build (tiny), forward, backward, save/load round trip."""
from __future__ import annotations

import warnings

import pytest
import torch

from vlir.core import Conditioning, Perception, Pipeline
from vlir.core.io import load_checkpoint, load_state_dict_checked, save_safetensors
from vlir.core.registry import Registry
from vlir.core.train.objective import training_losses

REG = Registry(autoload=False)  # the built-ins; third-party components are tested by their packages
ALL = [(e.kind, e.name) for e in REG.list()]
SIZE = (24, 20)  # odd-ish on purpose: not a multiple of 8 or 16
# params a test needs beyond the tiny preset (never weights from the network)
TEST_PARAMS = {("loss", "difficulty_adaptive_perceptual"): {"allow_random_vgg": True}}
# components holding frozen pretrained weights outside their state dict (loaded from a file, random
# in tests): the round trip compares two instances built from the same seed
SAME_SEED = {("loss", "difficulty_adaptive_perceptual")}
# losses that read a perceiver through the pipeline: which perceiver they need
LOSS_PERCEIVER = {"clip_quality": "quality_perceiver", "daclip_contrastive": "daclip",
                  "degradation_contrastive": "daclip"}


def build(kind, name, seed=0):
    torch.manual_seed(seed)
    presets = REG.presets(kind, name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return REG.build(kind, name, preset="tiny" if "tiny" in presets else None,
                         params=TEST_PARAMS.get((kind, name)))


def batch(n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    gt = torch.rand(n, 3, *SIZE, generator=g)
    lq = (gt + 0.2 * torch.randn(n, 3, *SIZE, generator=g)).clamp(0, 1)
    return {"lq": lq, "gt": gt, "medium": (gt + lq) / 2, "proxies": [(gt + lq) / 2],
            "proxy_masks": torch.ones(n, 1), "degradation": torch.tensor([4, 1])[:n],
            "degradation_name": ["noisy", "hazy"][:n], "caption": ["a photo of a cat", "a photo of a house"][:n]}


def tensors(out):
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, Perception):
        return [v for v in (out.content, out.degradation, out.class_probs, out.quality_probs, out.quality_score)
                if v is not None]
    raise TypeError(type(out))


def run(kind, name, m):
    """Forward a component on fixed inputs; returns its output tensors."""
    if kind == "loss":
        if name in LOSS_PERCEIVER or any(k in m.inputs for k in ("pipeline", "perception", "batch")):
            return None  # covered by test_pipeline_losses
        inputs = batch()
        if "restored" in m.inputs:
            inputs["restored"] = inputs["lq"].clone().requires_grad_(True)
        return [m(**{k: inputs[k] for k in m.inputs})]
    if kind == "degradation":
        return [m(batch()["gt"], generator=torch.Generator().manual_seed(0))]
    if kind == "process":
        unet = build("backbone", "conditional_unet").eval()
        return [m.sample(unet, batch()["lq"], steps=2, generator=torch.Generator().manual_seed(0))]
    torch.manual_seed(1)  # example inputs are random: the same for every call
    inputs = m.example_inputs(size=SIZE, batch=2)
    return tensors(m(**inputs))


@pytest.mark.parametrize("kind,name", ALL, ids=[f"{k}-{n}" for k, n in ALL])
def test_component(kind, name, tmp_path):
    m = build(kind, name)
    assert type(m).name == name and m.kind == kind
    outs = run(kind, name, m)
    if outs is None:
        pytest.skip(f"{name} reads a perceiver through the pipeline: see test_pipeline_losses")
    for o in outs:
        assert torch.isfinite(o).all(), f"{kind} {name}: non-finite output"
    if kind in ("backbone", "process"):
        assert outs[0].shape == (2, 3, *SIZE)
    if kind == "degradation":
        assert outs[0].shape == (2, 3, *SIZE) and 0 <= outs[0].min() and outs[0].max() <= 1
        again = run(kind, name, m)[0]
        assert torch.equal(outs[0], again), f"degradation {name} is not deterministic for a seed"
    # backward: trainable parameters (or the input, for losses) receive gradients
    trainable = [p for p in m.parameters() if p.requires_grad]
    if kind in ("backbone", "perceiver", "loss") and any(o.requires_grad for o in outs):
        sum(o.float().mean() for o in outs if o.requires_grad).backward()
        if trainable and kind != "loss":
            assert any(p.grad is not None for p in trainable), f"{kind} {name}: no gradient reached its parameters"
    # save / load round trip: a fresh instance (other random init) gives the same outputs
    file = tmp_path / "c.safetensors"
    save_safetensors(m.state_dict(), file)
    m2 = build(kind, name, seed=0 if (kind, name) in SAME_SEED else 123)
    load_state_dict_checked(m2, load_checkpoint(file), source=str(file))
    m.eval(), m2.eval()
    with torch.no_grad():
        a, b = run(kind, name, m), run(kind, name, m2)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


BACKBONES = [n for k, n in ALL if k == "backbone"]


@pytest.mark.parametrize("name", BACKBONES)
def test_backbone_accepts_conditioning(name):
    presets = REG.presets("backbone", name)
    cls = REG.load("backbone", name)
    params = {**presets.get("tiny", {}), **cls.condition_params(32, 32)}
    torch.manual_seed(0)
    m = REG.build("backbone", name, params=params)
    inputs = m.example_inputs(size=SIZE, batch=2)
    cond = Conditioning(tokens=torch.randn(2, 1, 32), vector=torch.randn(2, 32))
    out = m(**{**inputs, "cond": cond})
    assert out.shape == (2, 3, *SIZE)
    out.mean().backward()
    # unconditioned use keeps working
    assert m(**{**inputs, "cond": None}).shape == (2, 3, *SIZE)


@pytest.mark.parametrize("name", sorted(LOSS_PERCEIVER))
def test_pipeline_losses(name):
    """Losses that read a perceiver: built in a pipeline with that perceiver, value and gradient."""
    spec = {"perceivers": [{"type": LOSS_PERCEIVER[name], "preset": "tiny"}],
            "backbone": {"type": "nafnet", "preset": "tiny"},
            "losses": [{"type": name}]}
    torch.manual_seed(0)
    pipe = Pipeline.from_spec(spec)
    total, logs = training_losses(pipe, batch())
    assert torch.isfinite(total) and name in logs
    total.backward()
    assert any(p.grad is not None for p in pipe.parameters() if p.requires_grad)
