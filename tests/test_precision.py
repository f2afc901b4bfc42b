"""The precision policy (vlir.core.precision) and NAFNet's fp32 residual stream under bf16 autocast."""
from __future__ import annotations

import pytest
import torch

from vlir.core import precision as P
from vlir.core.registry import get_registry


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / (a.float() - b.float()).pow(2).mean()))


def test_autocast_dtype_rules():
    cpu = torch.device("cpu")
    assert P.autocast_dtype("fp32", cpu) is None
    assert P.autocast_dtype(False, cpu) is None
    assert P.autocast_dtype("bf16", cpu) is torch.bfloat16
    assert P.autocast_dtype(torch.bfloat16, cpu) is torch.bfloat16
    # auto on a CPU: bf16 exactly where the CPU has bf16 instructions; the trainer keeps fp32
    assert P.autocast_dtype("auto", cpu) is (torch.bfloat16 if P.cpu_has_fast_bf16() else None)
    assert P.autocast_dtype("auto", cpu, cpu_auto=False) is None
    with pytest.raises(P.PrecisionError, match=r"--precision: fp16 autocast needs a CUDA device, not cpu"):
        P.autocast_dtype("fp16", cpu)
    with pytest.raises(P.PrecisionError, match=r"--precision: unknown precision 'fp8'"):
        P.autocast_dtype("fp8", cpu)


def test_auto_only_for_components_declared_safe():
    reg = get_registry()
    nafnet = reg.build("backbone", "nafnet", preset="tiny")
    unet = reg.build("backbone", "conditional_unet", preset="tiny")
    assert nafnet.bf16_safe and not unet.bf16_safe
    fast = P.cpu_has_fast_bf16()
    assert P.for_module("auto", "cpu", nafnet).dtype is (torch.bfloat16 if fast else None)
    assert P.for_module("auto", "cpu", unet).dtype is None  # the diffusion UNet stays fp32 unless asked
    asked = P.for_module("bf16", "cpu", unet)
    assert asked.dtype is torch.bfloat16 and asked.channels_last and asked.name == "bf16+cl"
    experts = reg.build("backbone", "experts", params={"experts": 2, "expert_params": {"width": 8,
                        "enc_blk_nums": [1], "middle_blk_num": 1, "dec_blk_nums": [1]}})
    assert experts.bf16_safe


def _random_nafnet():
    from vlir.plugins.backbones.nafnet import NAFNet

    torch.manual_seed(0)
    net = NAFNet(width=16, enc_blk_nums=[1, 1, 2], middle_blk_num=2, dec_blk_nums=[1, 1, 1]).eval()
    with torch.no_grad():  # beta/gamma are zero at init (blocks = identity); make every block count
        for name, p in net.named_parameters():
            if name.endswith(("beta", "gamma")):
                p.normal_(0, 0.5)
    return net


@torch.no_grad()
def test_nafnet_bf16_keeps_residual_stream_fp32():
    net = _random_nafnet()
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    ref = net(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x)
    assert out.dtype == torch.float32  # the residual sums stay fp32
    # measured 57.2 dB (55.2 when beta/gamma were cast to bf16 and the stream stayed bf16)
    assert _psnr(out, ref) > 56.5


@torch.no_grad()
def test_nafblock_fp32_is_the_official_arithmetic():
    from vlir.plugins.backbones.nafnet import NAFBlock

    torch.manual_seed(0)
    blk = NAFBlock(8).eval()
    for p in (blk.beta, blk.gamma):
        p.normal_()
    x = torch.randn(2, 8, 9, 11)
    a, b = blk.conv2(blk.conv1(blk.norm1(x))).chunk(2, 1)
    t = a * b
    y = x + blk.conv3(t * blk.sca[1](t.mean((-2, -1), keepdim=True))) * blk.beta
    c, d = blk.conv4(blk.norm2(y)).chunk(2, 1)
    assert torch.equal(blk(x), y + blk.conv5(c * d) * blk.gamma)  # bit for bit


@torch.no_grad()
def test_resolve_plan_and_restore_dtype():
    from vlir.core import Pipeline

    pipe = Pipeline.from_spec({"backbone": {"type": "nafnet", "preset": "tiny"}}, build_losses=False).eval()
    lq = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    plan = P.resolve("bf16", "cpu", pipe)
    assert plan.backbone.dtype is torch.bfloat16
    w = pipe.backbone.intro.weight
    assert w.is_contiguous(memory_format=torch.channels_last)
    assert P.resolve(None, "cpu", pipe) == P.Plan()
    with pytest.raises(P.PrecisionError, match="--precision"):
        P.resolve("fp16", "cpu", pipe)
