"""DA-CLIP conditional UNet: official layout, checkpoint loading, conditioning, odd sizes."""
from __future__ import annotations

import pytest
import torch

from conftest import SHARED
from vlir.core.conditioning import Conditioning
from vlir.plugins.backbones.conditional_unet import ConditionalUNet

TINY = {"nf": 32, "ch_mult": [1, 1, 1, 2]}
KEYS = SHARED / "reference" / "daclip_conditional_unet_keys.txt"


pytestmark = pytest.mark.usefixtures("no_mkldnn")


def _cond(batch: int, dim: int = 512, seed: int = 0) -> Conditioning:
    g = torch.Generator().manual_seed(seed)
    return Conditioning(tokens=torch.randn(batch, 1, dim, generator=g), vector=torch.randn(batch, dim, generator=g))


def _randomise(model: torch.nn.Module, seed: int = 0) -> None:
    """Non-zero weights everywhere (the spatial transformers' proj_out starts at zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            scale = p[0].numel() ** -0.5 if p.dim() > 1 else 0.1
            p.copy_(torch.randn(p.shape, generator=g) * scale)


def test_default_matches_official_layout():
    with torch.device("meta"):
        model = ConditionalUNet()
    assert model.diffusion
    assert sum(p.numel() for p in model.parameters()) == 48_975_747
    if not KEYS.is_file():
        pytest.skip(f"reference key list not found at {KEYS}")
    expected = []
    for line in KEYS.read_text().splitlines():
        if line and not line.startswith("#"):
            key, shape = line.split("\t")
            expected.append((key, shape))
    mine = [(k, str(tuple(v.shape))) for k, v in model.state_dict().items()]
    assert mine == expected


def test_strict_load_of_flat_official_checkpoint(tmp_path):
    src = ConditionalUNet(**TINY)
    _randomise(src)
    path = tmp_path / "universal-ir.pth"
    torch.save({"module." + k: v for k, v in src.state_dict().items()}, path)  # official format: flat, DDP prefix
    dst = ConditionalUNet(**TINY)
    dst.load_weights(str(path))
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v), k
    # a checkpoint of another width fails with a clear error
    other = tmp_path / "other.pth"
    torch.save(ConditionalUNet(nf=64, ch_mult=[1, 1, 1, 1]).state_dict(), other)
    with pytest.raises(Exception, match="init_conv.weight"):
        dst.load_weights(str(other))


def test_forward_backward_and_conditioning():
    model = ConditionalUNet(**TINY)
    _randomise(model)
    g = torch.Generator().manual_seed(1)
    lq = torch.rand(2, 3, 32, 32, generator=g)
    x = lq + 0.1 * torch.randn(lq.shape, generator=g)
    t = torch.tensor([3, 70])
    cond = _cond(2)
    out = model(lq, cond, x=x, t=t)
    assert out.shape == lq.shape and torch.isfinite(out).all()
    out.square().mean().backward()
    for name in ("prompt", "text_mlp.0.weight", "init_conv.weight",
                 "downs.3.2.fn.fn.transformer_blocks.0.attn2.to_k.weight",
                 "mid_attn.fn.fn.transformer_blocks.0.attn2.to_v.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name

    with torch.no_grad():
        # both conditioning inputs change the prediction; so do x and t
        base = model(lq, cond, x=x, t=t)
        other = _cond(2, seed=5)
        assert not torch.allclose(base, model(lq, Conditioning(tokens=other.tokens, vector=cond.vector), x=x, t=t))
        assert not torch.allclose(base, model(lq, Conditioning(tokens=cond.tokens, vector=other.vector), x=x, t=t))
        assert not torch.allclose(base, model(lq, cond, x=lq, t=t))
        assert not torch.allclose(base, model(lq, cond, x=x, t=torch.tensor([50, 50])))
        # defaults: x = lq, t = 0; an int t is broadcast; [B, D] tokens mean one token
        assert torch.allclose(model(lq, cond), model(lq, cond, x=lq, t=torch.zeros(2, dtype=torch.long)))
        assert torch.allclose(model(lq, cond, x=x, t=50), model(lq, cond, x=x, t=torch.tensor([50, 50])))
        flat = Conditioning(tokens=cond.tokens[:, 0], vector=cond.vector)
        assert torch.allclose(base, model(lq, flat, x=x, t=t))
        # per-sample independence: a batch equals its parts
        first = model(lq[:1], Conditioning(tokens=cond.tokens[:1], vector=cond.vector[:1]), x=x[:1], t=t[:1])
        assert torch.allclose(base[:1], first, atol=1e-5)
        # without conditioning (or with missing fields) it still runs
        for c in (None, Conditioning(), Conditioning(vector=cond.vector), Conditioning(tokens=cond.tokens)):
            y = model(lq, c, x=x, t=t)
            assert y.shape == lq.shape and torch.isfinite(y).all()
    with pytest.raises(ValueError, match="cond.vector"):
        model(lq, Conditioning(vector=torch.randn(2, 7)))
    with pytest.raises(ValueError, match="cond.tokens"):
        model(lq, Conditioning(tokens=torch.randn(2, 1, 7)))


@pytest.mark.parametrize("size", [(37, 53), (1, 1), (5, 17), (16, 16)])
def test_any_size(size):
    model = ConditionalUNet(**TINY)
    _randomise(model)
    lq = torch.rand(1, 3, *size)
    with torch.no_grad():
        out = model(lq, _cond(1), x=lq + 0.05, t=10)
    assert out.shape == lq.shape and torch.isfinite(out).all()


def test_unconditioned_configs_and_condition_params():
    assert ConditionalUNet.condition_params(512, 512) == {"context_dim": 512}
    assert ConditionalUNet.condition_params(None, 512) == {"context_dim": 512}
    assert ConditionalUNet.condition_params(512, None) == {"context_dim": 512}
    assert ConditionalUNet.condition_params(None, None) == {}
    assert ConditionalUNet.condition_params(3, 64) == {"context_dim": 64, "degra_dim": 3}
    mixed = ConditionalUNet(**TINY, **ConditionalUNet.condition_params(3, 64))
    lq = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        y = mixed(lq, Conditioning(tokens=torch.randn(1, 4, 64), vector=torch.randn(1, 3)), t=5)
    assert y.shape == lq.shape

    plain = ConditionalUNet(**TINY, context_dim=None)
    keys = plain.state_dict().keys()
    assert not any(k.startswith(("prompt", "text_mlp")) or "transformer_blocks" in k for k in keys)
    with torch.no_grad():
        assert plain(lq, _cond(1), t=5).shape == lq.shape  # conditioning is ignored

    with pytest.raises(ValueError, match="multiple of 32"):
        ConditionalUNet(nf=16, ch_mult=[1, 1, 1, 2])
    with pytest.raises(ValueError, match="upscale"):
        ConditionalUNet(**TINY, upscale=2)


def test_example_inputs_run():
    model = ConditionalUNet(**TINY)
    with torch.no_grad():
        out = model(**model.example_inputs((24, 40), batch=2))
    assert out.shape == (2, 3, 24, 40)


def test_bfloat16_model_runs():
    model = ConditionalUNet(**TINY).to(torch.bfloat16)
    lq = torch.rand(1, 3, 16, 16, dtype=torch.bfloat16)
    with torch.no_grad():
        out = model(lq, _cond(1).to(torch.bfloat16), x=lq, t=10)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
