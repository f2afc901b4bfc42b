"""Official fidelity: NAFNet's zero padding and test-time local pooling (NAFNetLocal / TLC),
Restormer's bias-free norm, and the default model keeping the padding it was trained with."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vlir.core.registry import get_registry
from vlir.core.spec import load_spec
from vlir.core.tiling import tiled_forward
from vlir.plugins.backbones._blocks import LayerNorm2d
from vlir.plugins.backbones.nafnet import LocalPool, NAFNet

TINY = dict(width=8, enc_blk_nums=[1, 1, 1], middle_blk_num=1, dec_blk_nums=[1, 1, 1])  # pads to 8


def active(m):
    """Random weights with the residual scales switched on (official init leaves them at 0)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith((".beta", ".gamma")):
                p.normal_(0, 0.5)
    return m.eval()


@pytest.mark.parametrize("preset", ["sidd-width32", "gopro-width64"])
def test_official_presets_pad_with_zeros(preset):
    params = get_registry().resolve_params("backbone", "nafnet", preset=preset)
    assert params.pad_mode == "zeros"
    assert params.tlc == (preset == "gopro-width64")  # options/test/GoPro/NAFNet-width64.yml: NAFNetLocal


@pytest.mark.parametrize("size", [(13, 21), (37, 53), (8, 16)])
def test_nafnet_equals_zero_padded_reference(size):
    # official NAFNet.check_image_size: F.pad(x, (0, pad_w, 0, pad_h)) with zeros, run, crop
    m = active(NAFNet(**TINY))
    x = torch.rand(2, 3, *size)
    h, w = size
    xp = F.pad(x, (0, -w % 8, 0, -h % 8))
    with torch.no_grad():
        ref = m(xp)[..., :h, :w]  # xp is a multiple of 8: the network pads nothing
        out = m(x)
        refl = NAFNet(**TINY, pad_mode="reflect").eval()
        refl.load_state_dict(m.state_dict())
        other = refl(x)
    assert torch.allclose(out, ref, atol=1e-6)
    if xp.shape != x.shape:
        assert (other - ref).abs().max() > 1e-3  # the padding matters at these sizes


def slow_tlc(x: torch.Tensor, k: int) -> torch.Tensor:
    """TLC pooling pixel by pixel: the mean over a k x k window (clipped to the map) placed as
    near centred on the pixel as fits, its start clamped to the map (= replicate padding of the
    valid window means, the pad split evenly with the extra pixel after)."""
    h, w = x.shape[-2:]
    kh, kw = min(h, k), min(w, k)
    lead_h, lead_w = (kh - 1) // 2, (kw - 1) // 2  # pixels before the centre of a window
    out = torch.empty_like(x)
    for i in range(h):
        for j in range(w):
            y0 = min(max(i - lead_h, 0), h - kh)
            x0 = min(max(j - lead_w, 0), w - kw)
            out[..., i, j] = x[..., y0:y0 + kh, x0:x0 + kw].double().mean((-2, -1)).to(x.dtype)
    return out


@pytest.mark.parametrize("size, k", [((9, 14), 4), ((12, 7), 5), ((6, 20), 8), ((5, 5), 5)])
def test_local_pool_equals_direct_tlc(size, k):
    x = torch.randn(2, 3, *size) + 2.0
    out = LocalPool(k)(x)
    assert torch.allclose(out.expand_as(x), slow_tlc(x, k), atol=1e-5)


def test_nafnet_local_windows_and_small_images():
    m = active(NAFNet(**TINY, tlc=True, tlc_base_size=24))
    plain = NAFNet(**TINY).eval()
    plain.load_state_dict(m.state_dict())  # TLC adds no weights
    kernels = [blk.sca[0].kernel for level in (*m.encoders, m.middle_blks, *m.decoders) for blk in level]
    assert kernels == [24, 12, 6, 3, 6, 12, 24]  # base / stride of each level
    assert m.tile_passes == 0
    with torch.no_grad():
        small = torch.rand(1, 3, 20, 24)  # no larger than the window: global pooling, as plain NAFNet
        assert torch.allclose(m(small), plain(small), atol=1e-6)
        big = torch.rand(1, 3, 45, 70)
        assert (m(big) - plain(big)).abs().max() > 1e-4

        # whole network against one whose pools are the direct per-pixel loop
        ref = NAFNet(**TINY).eval()
        ref.load_state_dict(m.state_dict())
        for a, b in zip((*m.encoders, m.middle_blks, *m.decoders), (*ref.encoders, ref.middle_blks, *ref.decoders)):
            for blk_a, blk_b in zip(a, b):
                blk_b.sca[0] = _Slow(blk_a.sca[0].kernel)
        assert torch.allclose(m(big), ref(big), atol=1e-5)


class _Slow(torch.nn.Module):
    def __init__(self, k):
        super().__init__()
        self.k = k

    def forward(self, x):
        return slow_tlc(x, self.k)


def test_nafnet_local_tiles_pool_within_each_tile():
    # with an overlap wider than half the window plus the receptive field, tiles agree closely
    m = active(NAFNet(**TINY, tlc=True, tlc_base_size=16))
    x = torch.rand(1, 3, 64, 80)
    with torch.no_grad():
        whole = m(x)
        tiled = tiled_forward(m, x, tile=56, overlap=40, multiple_of=m.multiple_of, passes=m.tile_passes)
    assert (tiled - whole).abs().max() < 1e-3  # 1.2e-4 measured; 1e-2 with overlap 8


@pytest.mark.parametrize("bias", [False, True])
def test_layer_norm_equals_official_formula(bias):
    # official Restormer LayerNorm on a (B, HW, C) view; BiasFree divides x, not x - mean
    torch.manual_seed(0)
    norm = LayerNorm2d(12, eps=1e-5, bias=bias)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        if bias:
            norm.bias.uniform_(-1, 1)
    x = torch.randn(2, 12, 7, 9) * 3 + 1.5
    t = x.double().flatten(2).transpose(1, 2)
    var = t.var(-1, keepdim=True, unbiased=False)
    w = norm.weight.double()
    ref = (t - t.mean(-1, keepdim=True)) / (var + 1e-5).sqrt() * w + norm.bias.double() if bias \
        else t / (var + 1e-5).sqrt() * w
    ref = ref.transpose(1, 2).reshape(x.shape)
    with torch.no_grad():
        for inp in (x, x.to(memory_format=torch.channels_last)):
            assert torch.allclose(norm(inp).double(), ref, atol=2e-6)


def test_default_model_keeps_reflection_padding():
    # the default model's experts were trained with reflection padding: its saved spec says so
    root = Path(__file__).resolve().parents[1]
    for path in (root / "core/assets/default/spec.yaml", root / "specs/default.yaml"):
        spec = load_spec(path)
        m = get_registry().build("backbone", "experts", params=spec.backbone.params)
        assert {n.pad_mode for n in m.nets if isinstance(n, NAFNet)} == {"reflect"}, path
