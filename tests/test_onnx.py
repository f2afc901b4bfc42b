"""ONNX export (``vlir export onnx``) and the onnxruntime engine (``vlir restore --engine onnx``)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import imports_torch
from vlir.core.cli import main

pytest.importorskip("onnx", reason="ONNX export needs the onnx extra")
ort = pytest.importorskip("onnxruntime", reason="the ONNX engine needs onnxruntime")

ATOL = 1e-4  # fp32 graphs against torch


def _pipeline(backbone: dict, perceivers: list | None = None, seed: int = 0):
    """A tiny pipeline with every backbone weight moved off its init (NAFNet's zero-init
    ``beta`` / ``gamma`` would make most of the network a no-op)."""
    from vlir.core.pipeline import Pipeline

    torch.manual_seed(seed)
    pipe = Pipeline.from_spec({"perceivers": perceivers or [], "backbone": backbone}, build_losses=False).eval()
    with torch.no_grad():
        for p in pipe.backbone.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return pipe


BACKBONES = {
    "restormer": {"type": "restormer", "preset": "tiny"},
    "restormer-biasfree": {"type": "restormer", "preset": "tiny", "params": {"layer_norm": "BiasFree"}},
    "nafnet": {"type": "nafnet", "preset": "tiny"},
    "nafnet-reflect": {"type": "nafnet", "preset": "tiny", "params": {"pad_mode": "reflect"}},
    "nafnet-conditioned": {"type": "nafnet", "preset": "tiny", "params": {"cond_dim": 4, "context_dim": 16}},
}


@pytest.fixture(scope="module", params=sorted(BACKBONES))
def exported(request, tmp_path_factory):
    from vlir.core.export import export_backbone

    pipe = _pipeline(BACKBONES[request.param])
    out = tmp_path_factory.mktemp(request.param)
    info = export_backbone(pipe, out, check=False)
    return request.param, pipe.backbone, out, info


def _cond(name: str, batch: int):
    from vlir.core.conditioning import Conditioning

    if name != "nafnet-conditioned":
        return None
    g = torch.Generator().manual_seed(1)
    return Conditioning(vector=torch.rand(batch, 4, generator=g), tokens=torch.randn(batch, 5, 16, generator=g))


def test_graphs_have_dynamic_batch_height_width(exported):
    import onnx

    name, _, out, info = exported
    graph = onnx.load(str(out / info["file"])).graph
    lq = next(i for i in graph.input if i.name == "lq")
    dims = [d.dim_param or d.dim_value for d in lq.type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    assert [i["name"] for i in info["inputs"]] == ["lq", *(["vector", "tokens"] if "conditioned" in name else [])]
    assert info["multiple_of"] > 1 and info["tile_passes"] == 1 and info["tiling"]["layout"]


def test_exported_backbone_matches_torch_at_two_sizes(exported):
    """The whole-image graph, fed by onnxruntime directly (no vlir code between), at sizes that
    are not multiples of the backbone's padding unit: the graph pads and crops itself."""
    name, backbone, out, info = exported
    sess = ort.InferenceSession(str(out / info["file"]), providers=["CPUExecutionProvider"])
    m = info["multiple_of"]
    for batch, (h, w) in ((1, (2 * m + 5, 3 * m + 1)), (2, (4 * m, m + 3))):
        lq = torch.rand(batch, 3, h, w, generator=torch.Generator().manual_seed(h))
        cond = _cond(name, batch)
        with torch.no_grad():
            ref = backbone(lq, cond).numpy()
        feeds = {"lq": lq.numpy()}
        if cond is not None:
            feeds.update(vector=cond.vector.numpy(), tokens=cond.tokens.numpy())
        got = sess.run(["restored"], feeds)[0]
        assert got.shape == ref.shape == (batch, 3, h, w)
        assert np.abs(got - ref).max() < ATOL, (name, h, w)


def test_tiled_onnx_equals_tiled_torch(exported):
    """Tiles with shared reductions (Restormer's attention, NAFNet's pooling over the image):
    the tile graphs give what torch gives; without the sharing the tiles differ visibly."""
    from vlir.core.onnx_engine import OnnxBackbone
    from vlir.core.tiling import tiled_forward

    name, backbone, out, info = exported
    onnx_b = OnnxBackbone(out, info, threads=1)
    x = torch.rand(1, 3, 53, 70, generator=torch.Generator().manual_seed(3))
    cond = _cond(name, 1)
    kw = dict(tile=32, overlap=8, multiple_of=backbone.multiple_of, pad_mode=backbone.pad_mode)
    with torch.no_grad():
        ref = tiled_forward(lambda t: backbone(t, cond), x, passes=1, **kw)
        got = tiled_forward(lambda t: onnx_b(t, cond), x, passes=1, **kw)
        alone = tiled_forward(lambda t: onnx_b(t, cond), x, passes=0, **kw)
        whole = onnx_b(x, cond)
    assert (got - ref).abs().max() < ATOL
    assert (alone - ref).abs().max() > 10 * ATOL  # the test sees whether sums are shared
    assert (whole - backbone(x, cond)).abs().max() < ATOL


def test_export_checks_every_graph(tmp_path):
    from vlir.core.export import export_onnx

    out = export_onnx(_pipeline(BACKBONES["nafnet"]), tmp_path / "exp")
    meta = json.loads((out / "onnx.json").read_text())
    assert meta["format"] == "vlir-onnx" and meta["pipeline"] == "spec.yaml"
    assert 0 <= meta["backbone"]["max_abs_diff"] < ATOL
    assert (out / "spec.yaml").is_file() and (out / "backbone.safetensors").is_file()


def test_experts_export_each_expert(tmp_path):
    from vlir.core.conditioning import Conditioning
    from vlir.core.export import export_onnx
    from vlir.core.onnx_engine import load_onnx_pipeline

    pipe = _pipeline({"type": "experts", "preset": "tiny", "params": {"identity": [1], "experts": 3}})
    out = export_onnx(pipe, tmp_path / "exp", check=False)
    meta = json.loads((out / "onnx.json").read_text())
    assert sorted(meta["backbone"]["nets"]) == ["0", "2"]
    onnx_pipe = load_onnx_pipeline(out)
    x = torch.rand(3, 3, 24, 40, generator=torch.Generator().manual_seed(5))
    cond = Conditioning(vector=torch.eye(3))  # one image to each expert (1: identity)
    with torch.no_grad():
        assert (onnx_pipe.backbone(x, cond) - pipe.backbone(x, cond)).abs().max() < ATOL


@pytest.mark.parametrize("spec, words", [
    ({"backbone": {"type": "conditional_unet", "preset": "tiny"}, "process": {"type": "irsde"}},
     ["process 'irsde'", "diffusion"]),
    ({"backbone": {"type": "nafnet", "preset": "tiny", "params": {"tlc": True}}}, ["tlc", "tlc: false"]),
])
def test_unsupported_parts_are_refused(spec, words, tmp_path, capsys):
    from vlir.core.spec import load_spec

    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(load_spec(spec).to_yaml())
    assert main(["export", "onnx", str(spec_file), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vlir export: error:") and all(w in err for w in words), err
    assert not (tmp_path / "out" / "onnx.json").exists()


@pytest.mark.parametrize("perceiver", [
    {"type": "daclip", "preset": "tiny", "params": {"views": 2, "degradations": ["noisy", "blurry", "hazy"]}},
    {"type": "quality_perceiver", "preset": "tiny"},
    {"type": "lora_caption_aligner", "preset": "tiny"},
])
def test_perceiver_towers_run_on_onnxruntime(perceiver, tmp_path):
    """The image towers are the graph (any number of crops); the perceiver's own preprocessing,
    prompts and heads run around it, so its perception equals torch's."""
    from vlir.core.export import export_onnx
    from vlir.core.onnx_engine import OnnxTowers, load_onnx_pipeline

    pipe = _pipeline(BACKBONES["nafnet"], [perceiver])
    out = export_onnx(pipe, tmp_path / "exp")
    role = next(iter(pipe.perceivers))
    info = json.loads((out / "onnx.json").read_text())["perceivers"][role]
    assert info["engine"] == "onnxruntime" and info["max_abs_diff"] < ATOL
    assert info["inputs"][0]["shape"][0] == "crops"
    onnx_pipe = load_onnx_pipeline(out)
    assert isinstance(onnx_pipe.perceivers[role].encode_crops, OnnxTowers)
    x = torch.rand(3, 3, 70, 90, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref, got = pipe.perceivers[role](x), onnx_pipe.perceivers[role](x)
    for field in ("content", "degradation", "class_probs", "quality_probs", "quality_score"):
        a, b = getattr(ref, field), getattr(got, field)
        assert (a is None) == (b is None), field
        if a is not None:
            assert (a - b).abs().max() < ATOL, field


def test_export_module_is_light():
    assert not imports_torch("vlir.core.export")


# -- command line -----------------------------------------------------------------------------
def _png16(path: Path, h: int, w: int) -> Path:
    from vlir.core.data.images import write_image

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:h, 0:w]
    img = np.clip(np.stack([x / w, y / h, 0.5 + 0 * x]) + 0.05 * rng.standard_normal((3, h, w)), 0, 1)
    write_image(path, torch.from_numpy(img).float(), bit_depth=16)
    return path


def _read(path: Path) -> np.ndarray:
    from vlir.core.data.images import read_image

    return read_image(path)[0].numpy()


def test_cli_export_and_restore_through_onnxruntime(tmp_path, capsys):
    """A tiny pipeline (DA-CLIP perceiver feeding a conditioned Restormer): exported,
    then restored by both engines, whole and tiled, into 16-bit PNGs that agree to one level."""
    pipe = _pipeline({"type": "restormer", "preset": "tiny"},
                     [{"type": "daclip", "preset": "tiny", "params": {"degradations": ["noisy", "blurry"]}}])
    pipe.save(tmp_path / "pipe")
    img = _png16(tmp_path / "img.png", 45, 70)
    exp = tmp_path / "exp"
    assert main(["export", "onnx", str(tmp_path / "pipe"), "-o", str(exp)]) == 0
    meta = json.loads((exp / "onnx.json").read_text())
    assert meta["backbone"]["conditioning"] == ["vector", "tokens"]
    assert meta["perceivers"]["daclip"]["engine"] == "onnxruntime"
    for tile in ([], ["--tile", "32"]):
        outs = {}
        for engine in ("torch", "onnx"):
            o = tmp_path / f"{engine}{len(tile)}"
            assert main(["restore", str(img), "-o", str(o), "--pipeline", str(exp), "--engine", engine,
                         "--no-progress", *tile]) == 0
            outs[engine] = _read(o / "img.png")
        assert np.abs(outs["onnx"] - outs["torch"]).max() <= 1.5 / 65535, tile
    capsys.readouterr()
    assert main(["restore", str(img), "-o", str(tmp_path / "x"), "--pipeline", str(tmp_path / "pipe"),
                 "--engine", "onnx"]) == 2
    assert "not an ONNX export folder" in capsys.readouterr().err
    assert main(["restore", str(img), "-o", str(tmp_path / "x"), "--engine", "onnx"]) == 2
    assert "--engine onnx needs --pipeline DIR" in capsys.readouterr().err


def test_benchmark_quick(tmp_path):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from onnx_engine import main as bench

    out = tmp_path / "onnx_engine.json"
    assert bench(["--quick", "--backbones", "nafnet", "--size", "32", "--out", str(out)]) == 0
    (row,) = json.loads(out.read_text())["backbones"]
    assert row["max_abs_diff"] < ATOL and row["torch"]["median_ms"] > 0 and row["onnxruntime"]["median_ms"] > 0
    assert "| nafnet sidd-width32 |" in out.with_suffix(".md").read_text()


@pytest.mark.slow
def test_default_model_exports_and_restores_the_same(tmp_path):
    """The built-in default model (DA-CLIP perceiver routing NAFNet experts): every expert and the
    perceiver's towers on onnxruntime, whole and tiled, as torch restores."""
    from vlir.core.default import load_default
    from vlir.core.export import export_onnx
    from vlir.core.onnx_engine import load_onnx_pipeline

    pipe = load_default("cpu")
    out = export_onnx(pipe, tmp_path / "default", check=False)
    meta = json.loads((out / "onnx.json").read_text())
    assert len(meta["backbone"]["nets"]) == 6 and meta["perceivers"]["daclip"]["engine"] == "onnxruntime"
    onnx_pipe = load_onnx_pipeline(out)
    x = torch.rand(1, 3, 70, 90, generator=torch.Generator().manual_seed(4)) * 0.6 + 0.2
    for tile in (None, 32):
        ref, ref_p = pipe.restore(x, tile=tile)
        got, got_p = onnx_pipe.restore(x, tile=tile)
        assert (got - ref).abs().max() < ATOL, tile
        assert (got_p["daclip"].class_probs - ref_p["daclip"].class_probs).abs().max() < ATOL
