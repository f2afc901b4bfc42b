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


def test_nafnet_residual_update_is_fused_only_across_dtypes():
    """NAFBlock's ``stream + x * scale``: a bf16 branch on an fp32 stream is one fused fp32 addcmul (the
    same sum to fp32 rounding, fp32 out); equal dtypes keep the plain expression, bit for bit."""
    from vlir.plugins.backbones.nafnet import _residual

    g = torch.Generator().manual_seed(0)
    stream, x, scale = torch.randn(1, 8, 5, 7, generator=g), torch.randn(1, 8, 5, 7, generator=g), torch.randn(1, 8, 1, 1, generator=g)
    low = x.bfloat16()
    fused = _residual(stream, low, scale)
    assert fused.dtype == torch.float32
    torch.testing.assert_close(fused, stream + low.float() * scale, rtol=0, atol=1e-6)
    assert torch.equal(_residual(stream, x, scale), stream + x * scale)


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


# -- the switch: Pipeline.restore(dtype=), vlir.load(dtype=), --precision -------------------------
TINY = {"perceivers": [{"type": "daclip", "preset": "tiny",
                        "params": {"degradations": ["noisy", "jpeg-compressed", "blurry", "hazy"]}}],
        "backbone": {"type": "nafnet", "preset": "tiny"}}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A saved tiny pipeline whose blocks all count (NAFNet's beta/gamma are zero at init)."""
    from vlir.core import Pipeline

    torch.manual_seed(0)
    pipe = Pipeline.from_spec(TINY, build_losses=False)
    with torch.no_grad():
        for p in pipe.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return pipe.save(tmp_path_factory.mktemp("precision") / "pipe")


def test_perceivers_that_route_the_backbone_stay_fp32():
    """Under bf16 the perceivers run in bf16, except where their class probabilities route the backbone
    (condition.vector: probs): then they decide which expert runs and stay fp32."""
    from vlir.core import Pipeline

    plain = Pipeline.from_spec(TINY, build_losses=False).eval()
    assert P.resolve("bf16", "cpu", plain).perceivers.dtype is torch.bfloat16
    routed = Pipeline.from_spec({**TINY, "backbone": {"type": "experts", "params": {"expert": "nafnet",
                                 "expert_params": {"width": 8, "enc_blk_nums": [1], "middle_blk_num": 1,
                                                   "dec_blk_nums": [1]}}},
                                 "condition": {"vector": "probs", "tokens": False}}, build_losses=False).eval()
    plan = P.resolve("bf16", "cpu", routed)
    assert plan.perceivers == P.FP32 and plan.backbone.dtype is torch.bfloat16


def _image(h=40, w=36, seed=0):
    return torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(seed))


def test_restore_dtype_bf16_close_to_fp32_and_fp32_unchanged(folder):
    import vlir

    pipe = vlir.load(folder)
    x = _image()
    ref, _ = pipe.restore(x)
    bf, perceptions = pipe.restore(x, dtype="bf16")
    assert bf.dtype == torch.float32 and bf.is_contiguous()
    assert all(t.dtype == torch.float32 for p in perceptions.values() for t in (p.class_probs, p.content))
    assert not torch.equal(bf, ref)  # bf16 really ran
    assert _psnr(bf, ref) > 40
    assert torch.equal(pipe.restore(x, dtype=torch.bfloat16)[0], bf)  # the torch dtype names the same
    # weights went channels-last for bf16 and come back: fp32 afterwards is fp32 bit for bit
    assert torch.equal(pipe.restore(x)[0], ref)
    assert torch.equal(pipe.restore(x, dtype="fp32")[0], ref)
    assert pipe.backbone.intro.weight.is_contiguous()
    auto = pipe.restore(x, dtype="auto")[0]
    if P.cpu_has_fast_bf16():  # the backbone (bf16-safe) in bf16; daclip is not declared safe: fp32
        assert not torch.equal(auto, ref) and _psnr(auto, ref) > 40
    else:
        assert torch.equal(auto, ref)
    tiled = pipe.restore(x, tile=16, overlap=4, dtype="bf16")[0]
    assert tiled.dtype == torch.float32 and _psnr(tiled, pipe.restore(x, tile=16, overlap=4)[0]) > 40
    with pytest.raises(P.PrecisionError, match="fp16 autocast needs a CUDA device"):
        pipe.restore(x, dtype="fp16")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", ["fp16", "bf16", "auto"])
def test_restore_on_cuda_in_half_precision(folder, dtype):
    import vlir

    pipe = vlir.load(folder, device="cuda")
    x = _image(64, 48, seed=5).cuda()
    ref, _ = pipe.restore(x)
    out, perceptions = pipe.restore(x, dtype=dtype)
    assert out.device.type == "cuda" and out.dtype == torch.float32
    assert all(t.dtype == torch.float32 for p in perceptions.values() for t in (p.class_probs, p.content))
    assert not torch.equal(out, ref)  # half precision really ran (auto: bf16 where supported)
    assert _psnr(out, ref) > 35
    cpu, _ = vlir.load(folder).restore(x.cpu())
    assert _psnr(ref.cpu(), cpu) > 60  # fp32 on the GPU is the CPU result
    assert torch.equal(pipe.restore(x)[0], ref)  # fp32 afterwards: unchanged


def test_load_dtype_sets_the_default_precision(folder):
    import vlir

    pipe = vlir.load(folder, dtype="bf16")
    assert pipe.precision == "bf16" and next(pipe.backbone.parameters()).dtype == torch.float32
    x = _image(seed=3)
    assert torch.equal(pipe.restore(x)[0], pipe.restore(x, dtype="bf16")[0])
    assert not torch.equal(pipe.restore(x)[0], pipe.restore(x, dtype="fp32")[0])
    with pytest.raises(P.PrecisionError, match=r"vlir.load\(dtype=...\): fp16 autocast needs a CUDA device"):
        vlir.load(folder, dtype="fp16")
    with pytest.raises(ValueError, match=r"dtype='int8'.*auto, fp32, bf16, fp16"):
        vlir.load(folder, dtype="int8")


def test_diffusion_unet_stays_fp32_under_auto():
    from vlir.core import Pipeline

    pipe = Pipeline.from_spec({"backbone": {"type": "conditional_unet", "preset": "tiny"},
                               "process": {"type": "irsde"}}, build_losses=False)
    assert P.resolve("auto", "cpu", pipe).backbone == P.FP32
    assert P.resolve("bf16", "cpu", pipe).backbone.dtype is torch.bfloat16


def test_cli_precision(folder, tmp_path):
    import numpy as np
    from PIL import Image

    from vlir.core.cli import main
    from vlir.core.data.images import read_image

    src = tmp_path / "in.png"
    Image.fromarray((_image(33, 30)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(src)
    outs = {}
    for prec in ("fp32", "bf16"):
        assert main(["restore", str(src), "-o", str(tmp_path / prec), "--pipeline", str(folder), "--device", "cpu",
                     "--precision", prec, "--no-progress"]) == 0
        outs[prec] = read_image(tmp_path / prec / "in.png")[0]
    assert _psnr(outs["bf16"], outs["fp32"]) > 35  # 8-bit outputs: a few values one step apart
    assert main(["classify", str(src), "--pipeline", str(folder), "--device", "cpu", "--precision", "bf16",
                 "--json"]) == 0
    assert main(["restore", str(src), "-o", str(tmp_path / "x"), "--pipeline", str(folder), "--device", "cpu",
                 "--precision", "fp16"]) == 2
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())
    import json

    data = tmp_path / "data"
    data.mkdir()
    (data / "in.png").write_bytes(src.read_bytes())
    assert main(["eval", str(folder), "--data", str(data), "--degradations", "noise", "--out", str(tmp_path / "e"),
                 "--device", "cpu", "--precision", "bf16", "--quiet", "--crops", "0"]) == 0
    assert json.loads((tmp_path / "e" / "results.json").read_text())["precision"] == "bf16"
    assert main(["eval", str(folder), "--data", str(data), "--out", str(tmp_path / "f"), "--device", "cpu",
                 "--precision", "fp16", "--quiet"]) == 2


def test_default_model_benchmark_precision(folder, tmp_path, capsys):
    import importlib.util
    import json
    import shutil
    from pathlib import Path

    from vlir.core.demo import demo_image

    spec = importlib.util.spec_from_file_location(
        "bench_default_model", Path(__file__).resolve().parents[1] / "benchmarks" / "default_model.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    data = tmp_path / "clean"
    data.mkdir()
    shutil.copy(demo_image(), data / "tiger.png")
    out = tmp_path / "dm.json"
    assert bench.main(["--pipeline", str(folder), "--data", str(data), "--degradations", "noise", "--no-baselines",
                       "--precision", "bf16", "--out", str(out)]) == 0, capsys.readouterr().err
    doc = json.loads(out.read_text())
    assert doc["precision"] == "bf16"
    noise = doc["rows"][0]["precision"]
    assert noise["name"] == "bf16" and noise["psnr_vs_fp32"] > 35 and noise["time_ratio"] > 0
    assert abs(noise["psnr_change"] - (noise["psnr"] - doc["rows"][0]["model"]["psnr"])) < 1e-3
    assert "bf16 − fp32 (dB)" in out.with_suffix(".md").read_text()
    assert bench.parse_args(["--precision", "bf16"]).out.endswith("default_model_bf16.json")


@pytest.mark.parametrize("name", ["nafnet", "restormer"])
@torch.no_grad()
def test_first_layer_reads_the_image_in_fp32(name):
    """Under bf16 autocast the layer reading the image gets it unrounded (its output equals the
    fp32 one), and without autocast the network is untouched."""
    params = {"nafnet": dict(width=8, enc_blk_nums=[1], middle_blk_num=1, dec_blk_nums=[1]),
              "restormer": dict(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 1, 1, 1])}[name]
    net = get_registry().build("backbone", name, params=params).eval()
    first = net.intro if name == "nafnet" else net.patch_embed
    seen = []
    hook = first.register_forward_hook(lambda m, i, o: seen.append((i[0].dtype, o)))
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ref = net(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        net(x)
    hook.remove()
    assert seen[0][0] == seen[1][0] == torch.float32
    assert torch.equal(seen[0][1], seen[1][1])
    assert torch.equal(net(x), ref)
