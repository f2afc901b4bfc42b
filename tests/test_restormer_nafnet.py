"""Restormer and NAFNet backbones: official layout, any size, checkpoints, conditioning."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from conftest import SHARED
from vlir.core.conditioning import Conditioning
from vlir.core.io import CheckpointError
from vlir.plugins.backbones.nafnet import NAFNet
from vlir.plugins.backbones.restormer import Restormer

REF = SHARED / "reference"
TINY = {
    Restormer: dict(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 1, 2, 2]),
    NAFNet: dict(width=8, enc_blk_nums=[1, 1], middle_blk_num=1, dec_blk_nums=[1, 1]),
}
BOTH = [Restormer, NAFNet]
GOPRO = dict(width=64, enc_blk_nums=[1, 1, 1, 28], middle_blk_num=1, dec_blk_nums=[1, 1, 1, 1])


def tiny(cls, **kw):
    torch.manual_seed(0)
    m = cls(**{**TINY[cls], **kw})
    # official NAFNet starts with beta = gamma = 0 (blocks are identities); make them act
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith((".beta", ".gamma")):
                p.normal_(0, 0.3)
    return m.eval()


def official_layout(name):
    rows = []
    for line in (REF / name).read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, shape = line.split("\t")
            rows.append((key, tuple(int(s) for s in shape.strip("()").split(",") if s.strip())))
    return rows


def layout(m):
    return [(k, tuple(v.shape)) for k, v in m.state_dict().items()]


def n_params(m):
    return sum(p.numel() for p in m.parameters())


# -- official configurations (meta device: no memory, instant) --------------------------------

@pytest.mark.parametrize("cls, kw, count, keys", [
    (Restormer, {}, 26_126_644, "restormer_default_keys.txt"),
    (Restormer, {"layer_norm": "BiasFree"}, 26_111_668, None),
    (NAFNet, {}, 29_159_715, "nafnet_sidd_width32_keys.txt"),
    (NAFNet, GOPRO, 67_888_835, "nafnet_gopro_width64_keys.txt"),
])
def test_official_param_count_and_layout(cls, kw, count, keys):
    with torch.device("meta"):
        m = cls(**kw)
    assert n_params(m) == count
    if keys is not None:
        if not (REF / keys).is_file():
            pytest.skip(f"reference key list {REF / keys} not found (../shared absent)")
        assert layout(m) == official_layout(keys)  # keys, shapes and order


def test_defaults_are_official_configs():
    r, n = Restormer.Params(), NAFNet.Params()
    assert (r.dim, r.num_blocks, r.num_refinement_blocks, r.heads) == (48, [4, 6, 6, 8], 4, [1, 2, 4, 8])
    assert (r.ffn_expansion_factor, r.bias, r.layer_norm, r.dual_pixel_task) == (2.66, False, "WithBias", False)
    assert (n.width, n.enc_blk_nums, n.middle_blk_num, n.dec_blk_nums, n.img_channel) == (32, [2, 2, 4, 8], 12,
                                                                                          [2, 2, 2, 2], 3)
    assert r.cond_dim is None and r.context_dim is None and n.cond_dim is None and n.context_dim is None


def test_registry_presets_are_valid_params():
    import vlir.core

    path = Path(vlir.core.__file__).parent / "registry.yaml"
    entries = yaml.safe_load(path.read_text())["backbone"]
    for name, cls in (("restormer", Restormer), ("nafnet", NAFNet)):
        for preset, values in (entries[name].get("presets") or {}).items():
            with torch.device("meta"):
                cls(**values)  # unknown fields would raise
    with torch.device("meta"):
        assert n_params(NAFNet(**entries["nafnet"]["presets"]["gopro-width64"])) == 67_888_835
        assert n_params(Restormer(**entries["restormer"]["presets"]["biasfree"])) == 26_111_668


def test_conditioning_layers_only_when_asked():
    with torch.device("meta"):
        plain = layout(NAFNet(**TINY[NAFNet]))
        cond = [k for k, _ in layout(NAFNet(**TINY[NAFNet], cond_dim=6, context_dim=10))]
    assert not any("film" in k or "xattn" in k or "cond_embed" in k for k, _ in plain)
    assert any(".film." in k for k in cond) and any("middle_blks.0.xattn." in k for k in cond)
    assert {"cond_dim": 5, "context_dim": 7} == Restormer.condition_params(5, 7) == NAFNet.condition_params(5, 7)


# -- sizes, layouts, precision ------------------------------------------------------------------

@pytest.mark.parametrize("cls", BOTH)
@pytest.mark.parametrize("size", [(37, 53), (1, 1), (16, 16), (9, 40)])
def test_any_size(cls, size):
    m = tiny(cls)
    x = torch.rand(2, 3, *size)
    with torch.no_grad():
        y = m(x)
    assert y.shape == x.shape and torch.isfinite(y).all()


@pytest.mark.parametrize("cls", BOTH)
def test_output_is_residual_to_input(cls):
    m = tiny(cls)
    with torch.no_grad():
        last = m.output if cls is Restormer else m.ending
        last.weight.zero_()
        if last.bias is not None:
            last.bias.zero_()
        x = torch.rand(1, 3, 21, 30)
        assert torch.equal(m(x), x)


def test_nafnet_pad_modes():
    m = tiny(NAFNet)
    x = torch.rand(1, 3, 21, 30)
    with torch.no_grad():
        outs = {mode: NAFNet(**{**TINY[NAFNet], "pad_mode": mode}).eval() for mode in ("reflect", "zeros")}
        for o in outs.values():
            o.load_state_dict(m.state_dict())
        assert not torch.allclose(outs["reflect"](x), outs["zeros"](x))
        x16 = x[..., :16, :24]  # multiples of 4 (two levels): no padding, modes agree
        assert torch.allclose(outs["reflect"](x16), outs["zeros"](x16), atol=1e-6)


@pytest.mark.parametrize("cls", BOTH)
def test_channels_last(cls):
    m = tiny(cls)
    x = torch.rand(1, 3, 24, 40)
    with torch.no_grad():
        a = m(x)
        b = m(x.to(memory_format=torch.channels_last))
        m2 = tiny(cls).to(memory_format=torch.channels_last)
        c = m2(x.to(memory_format=torch.channels_last))
    assert torch.allclose(a, b, atol=1e-5) and torch.allclose(a, c, atol=1e-5)


@pytest.mark.parametrize("cls", BOTH)
def test_autocast_bf16(cls):
    m = tiny(cls, cond_dim=6, context_dim=10)
    x = torch.rand(1, 3, 24, 40)
    cond = Conditioning(vector=torch.randn(1, 6), tokens=torch.randn(1, 3, 10))
    with torch.no_grad():
        ref = m(x, cond)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = m(x, cond)
    assert y.shape == ref.shape and torch.isfinite(y).all()
    assert (y.float() - ref).abs().mean() < 0.05 * ref.abs().mean() + 0.05


@pytest.mark.parametrize("cls", BOTH)
def test_example_inputs_run(cls):
    for kw in ({}, {"cond_dim": 4, "context_dim": 6}):
        m = tiny(cls, **kw)
        with torch.no_grad():
            y = m(**m.example_inputs((32, 32), batch=2))
        assert y.shape == (2, 3, 32, 32)


def test_restormer_dual_pixel_and_channels():
    m = tiny(Restormer, inp_channels=6, dual_pixel_task=True)
    with torch.no_grad():
        assert m(torch.rand(1, 6, 20, 20)).shape == (1, 3, 20, 20)
    with pytest.raises(ValueError, match=r"\[B, 6, H, W\]"):
        m(torch.rand(1, 3, 20, 20))


def test_bad_configs_raise():
    with pytest.raises(ValueError, match="heads"):
        Restormer(dim=6, heads=[1, 5, 2, 2])
    with pytest.raises(ValueError, match="same length"):
        NAFNet(width=8, enc_blk_nums=[1, 1], dec_blk_nums=[1])
    with pytest.raises(Exception, match="layer_norm"):
        Restormer(layer_norm="Other")


# -- official checkpoints -----------------------------------------------------------------------

@pytest.mark.parametrize("cls", BOTH)
@pytest.mark.parametrize("key", ["params", "params_ema"])
def test_loads_official_checkpoint_format(cls, key, tmp_path):
    src = tiny(cls)
    sd = {f"module.{k}": v.clone() for k, v in src.state_dict().items()}
    path = tmp_path / "net.pth"
    torch.save({key: sd}, path)
    dst = cls(**TINY[cls])
    dst.load_weights(str(path))  # strict
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v), k
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(dst.eval()(x), src(x))


@pytest.mark.parametrize("cls", BOTH)
def test_checkpoint_errors_name_the_key(cls, tmp_path):
    sd = dict(tiny(cls).state_dict())
    k_shape = next(k for k in sd if k.endswith("weight") and sd[k].dim() == 4)
    bad = dict(sd)
    bad[k_shape] = torch.zeros(1, 1, 1, 1)
    torch.save({"params": bad}, tmp_path / "shape.pth")
    with pytest.raises(CheckpointError, match=k_shape.replace(".", r"\.")):
        cls(**TINY[cls]).load_weights(str(tmp_path / "shape.pth"))
    k_miss = list(sd)[-1]
    missing = {k: v for k, v in sd.items() if k != k_miss}
    torch.save({"params": missing}, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match=r"missing keys.*" + k_miss.replace(".", r"\.")):
        cls(**TINY[cls]).load_weights(str(tmp_path / "missing.pth"))


def test_conditioned_model_loads_plain_checkpoint_non_strict(tmp_path):
    torch.save({"params": tiny(NAFNet).state_dict()}, tmp_path / "plain.pth")
    m = NAFNet(**TINY[NAFNet], cond_dim=4)
    with pytest.raises(CheckpointError, match="missing keys"):
        m.load_weights(str(tmp_path / "plain.pth"))
    m.load_weights(str(tmp_path / "plain.pth"), strict=False)


# -- conditioning -------------------------------------------------------------------------------

def _cond(batch=2):
    g = torch.Generator().manual_seed(5)
    return Conditioning(vector=torch.randn(batch, 6, generator=g), tokens=torch.randn(batch, 3, 10, generator=g))


@pytest.mark.parametrize("cls", BOTH)
def test_zero_init_conditioning_is_identity(cls):
    plain = tiny(cls)
    m = cls(**TINY[cls], cond_dim=6, context_dim=10).eval()
    missing, unexpected = m.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all(("film" in k or "xattn" in k or "cond_embed" in k) for k in missing)
    x = torch.rand(2, 3, 20, 24)
    with torch.no_grad():
        ref = plain(x)
        assert torch.equal(m(x, _cond()), ref)
        assert torch.equal(m(x), ref)  # no cond: conditioning layers skipped
        assert torch.equal(m(x, Conditioning(vector=_cond().vector)), ref)
        assert torch.equal(m(x, Conditioning(tokens=_cond().tokens)), ref)
        assert torch.equal(m(x, Conditioning(tokens=_cond().tokens[:1], vector=_cond().vector[:1])), ref)


@pytest.mark.parametrize("cls", BOTH)
def test_conditioning_trains(cls):
    m = tiny(cls, cond_dim=6, context_dim=10).train()
    names = [n for n, _ in m.named_parameters() if "film" in n or "xattn" in n or "cond_embed" in n]
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    x, gt, cond = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16), _cond()
    grads = []
    for _ in range(2):
        opt.zero_grad()
        (m(x, cond) - gt).abs().mean().backward()
        grads.append({n: p.grad for n, p in m.named_parameters()})
        opt.step()
    # first step: FiLM and cross-attention output layers get gradients at once
    first = [n for n in names if ".film." in n or ".xattn.out." in n]
    assert first and all(grads[0][n] is not None and grads[0][n].abs().sum() > 0 for n in first)
    # after one step every conditioning parameter gets a gradient
    assert all(grads[1][n] is not None and grads[1][n].abs().sum() > 0 for n in names), names
    with torch.no_grad():
        m.eval()
        assert not torch.allclose(m(x, cond), m(x))


@pytest.mark.parametrize("cls", BOTH)
def test_bad_conditioning_shapes_raise(cls):
    m = tiny(cls, cond_dim=6, context_dim=10)
    x = torch.rand(2, 3, 16, 16)
    with pytest.raises(ValueError, match="cond_dim=6"):
        m(x, Conditioning(vector=torch.randn(2, 5)))
    with pytest.raises(ValueError, match="context_dim=10"):
        m(x, Conditioning(tokens=torch.randn(2, 3, 11)))
    # an unconditioned backbone ignores conditioning
    with torch.no_grad():
        tiny(cls)(x, Conditioning(vector=torch.randn(2, 5)))
