"""``vlir demo`` on a tiny saved pipeline, and its clear failure without the default model."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vlir.core.cli import main


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory) -> Path:
    from vlir.core.pipeline import Pipeline

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny") / "pipeline"
    spec = {
        "perceivers": [{"type": "daclip", "preset": "tiny", "params": {"degradations": ["noisy", "hazy", "rainy"]}}],
        "backbone": {"type": "nafnet", "preset": "tiny"},
        # the degradations a trained model would list: the demo shows exactly these
        "data": {"degradations": [{"type": "noise"}, {"type": "haze"}, {"type": "rain"}]},
    }
    Pipeline.from_spec(spec).save(folder)
    return folder


def test_bundled_demo_image():
    from PIL import Image

    from vlir.core.demo import demo_image

    path = demo_image()
    assert path.is_file(), "core/assets/demo.png is missing"
    assert path.stat().st_size < 400_000
    with Image.open(path) as im:
        assert im.size == (256, 256) and im.mode == "RGB"


def test_demo_writes_grid_and_numbers(tiny_pipeline, tmp_path, capsys):
    from PIL import Image

    out = tmp_path / "demo"
    rc = main(["demo", "--out", str(out), "--pipeline", str(tiny_pipeline), "--seed", "3"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    doc = json.loads((out / "demo.json").read_text())
    rows = doc["rows"]
    assert doc["image"] == "bundled: vlir/core/assets/demo.png"  # no machine-specific path
    assert [r["degradation"] for r in rows] == ["noise", "haze", "rain"]
    for r in rows:
        assert r["detected_class"] in ("noisy", "hazy", "rainy")
        assert 0 < r["confidence"] <= 1
        assert 5 < r["psnr_degraded"] < 60 and r["psnr_restored"] > 0
        line = next(l for l in captured.out.splitlines() if l.startswith(r["degradation"]))
        assert f"{r['psnr_degraded']:.2f} dB" in line and f"{r['psnr_restored']:.2f} dB" in line
        assert r["detected_class"] in line
    assert rows[0]["params"] == {"sigma": 25.0}  # the demo's fixed setting, not the training range
    with Image.open(out / "grid.png") as grid:
        w, h = grid.size
        assert grid.mode == "RGB"
        assert w >= 3 * 256 and h >= 3 * 256  # three columns, three rows of 256-px images
    assert sorted(p.name for p in out.iterdir()) == ["demo.json", "grid.png"]
    # seeded: a second run gives the same numbers
    assert main(["demo", "--out", str(tmp_path / "again"), "--pipeline", str(tiny_pipeline), "--seed", "3"]) == 0
    capsys.readouterr()
    again = json.loads((tmp_path / "again" / "demo.json").read_text())["rows"]
    assert [r["psnr_degraded"] for r in again] == [r["psnr_degraded"] for r in rows]
    assert [r["psnr_restored"] for r in again] == pytest.approx([r["psnr_restored"] for r in rows])


def test_demo_degradations_without_a_data_section():
    from vlir.core.demo import DEMO_DEGRADATIONS, demo_degradations

    rows = demo_degradations(None)
    names = [n for n, _ in rows]
    assert names == list(DEMO_DEGRADATIONS)
    assert {"noise", "jpeg", "blur", "low_light", "haze", "rain"} <= set(names)


def test_demo_without_default_model(tmp_path, monkeypatch, capsys):
    from vlir.core import default

    monkeypatch.setenv(default.ENV, str(tmp_path / "no-model"))
    rc = main(["demo", "--out", str(tmp_path / "demo")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "vlir demo: error: the demo restores with the built-in default model" in err
    assert f"vlir train {default.SPEC}" in err
    assert not (tmp_path / "demo").exists()


def test_demo_output_is_a_file(tiny_pipeline, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["demo", "--out", str(blocker), "--pipeline", str(tiny_pipeline)]) == 2
    assert "exists and is not a folder" in capsys.readouterr().err


def test_assemble_default_takes_each_expert_from_its_stage(tmp_path):
    """tools/assemble_default.py: perceiver + restorer runs, the experts the noise / jpeg / haze stages trained,
    and the JPEG expert's CBSD432 fine-tune where there is one."""
    import subprocess
    import sys

    from safetensors.torch import load_file, save_file

    from conftest import ROOT
    from vlir.core import Pipeline

    torch.manual_seed(0)  # v1's shapes (specs/default.yaml), random weights
    shipped = Pipeline.from_spec(ROOT / "specs" / "default.yaml", build_losses=False).save(tmp_path / "v1")
    backbone = {k: v.float() for k, v in load_file(str(shipped / "backbone.safetensors")).items()}
    runs = tmp_path / "runs"
    for stage in ("perceiver", "restorer", "noise", "jpeg", "haze"):
        (runs / f"default-{stage}" / "pipeline").mkdir(parents=True)
    perceiver = {k: v.float() for k, v in load_file(str(shipped / "perceiver.daclip.safetensors")).items()}
    save_file(perceiver, str(runs / "default-perceiver/pipeline/perceiver.daclip.safetensors"))
    # the restorer run's JPEG expert may have another shape (a later stage replaced it): never read
    stale = {k: torch.zeros(1) if k.startswith("nets.1.") else v for k, v in backbone.items()}
    save_file(stale, str(runs / "default-restorer/pipeline/backbone.safetensors"))
    for stage, trained in (("noise", 0), ("jpeg", 1), ("haze", 4)):  # a stage's run changes its own expert only
        sd = {k: v + 0.125 if k.startswith(f"nets.{trained}.") else v for k, v in backbone.items()}
        save_file(sd, str(runs / f"default-{stage}/pipeline/backbone.safetensors"))
    out = tmp_path / "assembled"
    subprocess.run([sys.executable, str(ROOT / "tools" / "assemble_default.py"), str(runs), str(out)],
                   check=True, cwd=tmp_path, capture_output=True)
    got = load_file(str(out / "backbone.safetensors"))
    for k, v in backbone.items():
        shift = 0.125 if k.startswith(("nets.0.", "nets.1.", "nets.4.")) else 0.0
        torch.testing.assert_close(got[k].float(), (v + shift).half().float())
    assert (out / "spec.yaml").is_file() and (out / "perceiver.daclip.safetensors").is_file()

    # a CBSD432 fine-tune of the JPEG expert (default-jpeg-bsd), where one was run, replaces the jpeg stage's
    (runs / "default-jpeg-bsd" / "pipeline").mkdir(parents=True)
    sd = {k: v - 0.25 if k.startswith("nets.1.") else v for k, v in backbone.items()}
    save_file(sd, str(runs / "default-jpeg-bsd/pipeline/backbone.safetensors"))
    subprocess.run([sys.executable, str(ROOT / "tools" / "assemble_default.py"), str(runs), str(out)],
                   check=True, cwd=tmp_path, capture_output=True)
    got = load_file(str(out / "backbone.safetensors"))
    for k, v in backbone.items():
        shift = -0.25 if k.startswith("nets.1.") else 0.125 if k.startswith(("nets.0.", "nets.4.")) else 0.0
        torch.testing.assert_close(got[k].float(), (v + shift).half().float())


def test_bundle_default_stores_fp16_and_takes_perceivers_from_another_run(tmp_path):
    """tools/bundle_default.py: a pipeline in fp16; with --perceiver, the perceivers' weights from the
    other pipeline and everything else from the first."""
    import subprocess
    import sys

    from safetensors.torch import load_file

    from conftest import ROOT
    from vlir.core import Pipeline

    spec = {"perceivers": [{"type": "daclip", "preset": "tiny", "params": {"degradations": ["noisy", "hazy"]}}],
            "backbone": {"type": "nafnet", "preset": "tiny"}}
    torch.manual_seed(0)
    first = Pipeline.from_spec(spec, build_losses=False).save(tmp_path / "first")
    torch.manual_seed(1)
    second = Pipeline.from_spec(spec, build_losses=False).save(tmp_path / "second")
    out = tmp_path / "bundled"
    subprocess.run([sys.executable, str(ROOT / "tools" / "bundle_default.py"), str(first), str(out), "--perceiver",
                    str(second)], check=True, cwd=tmp_path, capture_output=True)
    for name, source in (("backbone.safetensors", first), ("perceiver.daclip.safetensors", second)):
        got, want = load_file(str(out / name)), load_file(str(source / name))
        assert got.keys() == want.keys()
        for k, v in want.items():
            assert got[k].dtype == (torch.float16 if v.is_floating_point() else v.dtype)
            torch.testing.assert_close(got[k], v.half() if v.is_floating_point() else v)
    Pipeline.load(out)  # loads back
    bad = tmp_path / "other"  # a pipeline with other perceivers is refused
    Pipeline.from_spec({"backbone": {"type": "nafnet", "preset": "tiny"}}, build_losses=False).save(bad)
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "bundle_default.py"), str(first), str(out), "--perceiver",
                        str(bad)], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode != 0 and "perceivers" in r.stderr


def test_extra_images_tool_copies_lossless_photos(tmp_path):
    """tools/extra_images.py: scikit-image's PNG photos, readable by vlir's data loader, no JPEG sources."""
    import subprocess
    import sys

    from conftest import ROOT
    from vlir.core.data.datasets import list_images
    from vlir.core.data.images import read_image

    pytest.importorskip("skimage")
    out = tmp_path / "extra"
    subprocess.run([sys.executable, str(ROOT / "tools" / "extra_images.py"), str(out)], check=True,
                   capture_output=True)
    files = list_images(out, recursive=False)
    assert len(files) == 9 and all(f.suffix == ".png" for f in files)
    assert "coffee.png" not in {f.name for f in files}  # the demo image's source stays held out
    img, _ = read_image(out / "astronaut.png")
    assert img.shape == (3, 512, 512)


def _tool(name):
    """Import tools/NAME.py (a script folder, not a package)."""
    import importlib.util

    from conftest import ROOT

    spec_file = importlib.util.spec_from_file_location(f"{name}_tool", ROOT / "tools" / f"{name}.py")
    tool = importlib.util.module_from_spec(spec_file)
    spec_file.loader.exec_module(tool)
    return tool


def test_cbsd432_tool_copies_the_first_images_and_refuses_test_images(tmp_path, capsys):
    """tools/cbsd432.py: the first N by name; a test image (same name, or the same picture under another
    name, format and orientation) is an error and nothing is copied."""
    from PIL import Image

    tool = _tool("cbsd432")
    rng = np.random.default_rng(0)

    def photo():  # smooth random picture, 60x40
        small = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
        return Image.fromarray(small).resize((60, 40), Image.Resampling.BICUBIC)

    test, src = tmp_path / "test", tmp_path / "src"
    test.mkdir(), src.mkdir()
    shown = photo()
    shown.save(test / "101085.png")
    photo().save(test / "101087.png")
    for name in ("100007", "100039", "100075"):
        photo().save(src / f"{name}.jpg", quality=95)
    assert tool.main([str(src), str(tmp_path / "out"), "--count", "2", "--test", str(test)]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["100007.jpg", "100039.jpg"]

    shown.transpose(Image.Transpose.ROTATE_270).save(src / "0001.jpg", quality=95)  # first by name
    photo().save(src / "101087.bmp")
    assert tool.main([str(src), str(tmp_path / "bad"), "--count", "10", "--test", str(test)]) == 1
    err = capsys.readouterr().err
    assert "0001.jpg looks like test image 101085.png" in err
    assert "101087.bmp has the name of test image 101087.png" in err
    assert "100007.jpg" not in err and not (tmp_path / "bad").exists()


def test_grow_tool_adds_identity_blocks_and_refuses_to_shrink(tmp_path):
    """tools/grow.py: a NAFNet grown with more blocks computes what the source did; no other changes."""
    import yaml

    from vlir.core.io import CheckpointError, load_checkpoint, save_safetensors
    from vlir.core.pipeline import Pipeline

    tool = _tool("grow")

    def spec(name, **params):
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({"backbone": {"type": "nafnet", "params": {
            "width": 8, "enc_blk_nums": [1, 1], "middle_blk_num": 1, "dec_blk_nums": [1, 1], **params}}}))
        return path

    torch.manual_seed(0)
    small = Pipeline.from_spec(spec("small"), build_losses=False).backbone.eval()
    with torch.no_grad():  # a trained network: its blocks are no longer the identity
        for p in small.parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_safetensors(small.state_dict(), tmp_path / "small.safetensors")
    deep = spec("deep", enc_blk_nums=[1, 2], middle_blk_num=2, dec_blk_nums=[2, 1])
    new = tool.grow(tmp_path / "small.safetensors", deep, tmp_path / "deep.safetensors")
    assert new and all(k.startswith(("encoders.1.1.", "middle_blks.1.", "decoders.0.1.")) for k in new)
    grown = Pipeline.from_spec(deep, build_losses=False).backbone.eval()
    grown.load_state_dict(load_checkpoint(str(tmp_path / "deep.safetensors")))
    assert sum(p.numel() for p in grown.parameters()) > sum(p.numel() for p in small.parameters())
    x = torch.rand(1, 3, 24, 32)
    with torch.no_grad():
        torch.testing.assert_close(grown(x), small(x), rtol=0, atol=1e-6)

    with pytest.raises(CheckpointError, match="not in the new backbone: decoders.0.1.beta"):
        tool.grow(tmp_path / "deep.safetensors", spec("shallow"), tmp_path / "back.safetensors")
    wide = r"wide.yaml .*other shapes: decoders.0.0.beta \(1, 16, 1, 1\) -> \(1, 32, 1, 1\)"
    with pytest.raises(CheckpointError, match=wide):
        tool.grow(tmp_path / "small.safetensors", spec("wide", width=16), tmp_path / "wide.safetensors")
    assert not (tmp_path / "back.safetensors").exists() and not (tmp_path / "wide.safetensors").exists()


def test_demo_leaves_out_the_clean_class():
    from types import SimpleNamespace as NS

    from vlir.core.demo import demo_degradations

    data = NS(degradations=[NS(type="noise", params={}), NS(type="clean", params={})])
    assert [n for n, _ in demo_degradations(NS(spec=NS(data=data)))] == ["noise"]


def test_demo_restores_step_by_step_where_the_pipeline_chains(tmp_path, capsys):
    """A pipeline fed by a multi-label perceiver chains in `vlir demo` as in `vlir restore`: each row
    has the steps taken, and a row left as it is keeps its input's PSNR."""
    from vlir.core.pipeline import Pipeline

    torch.manual_seed(0)
    spec = {"perceivers": [{"type": "daclip", "preset": "tiny",
                            "params": {"degradations": ["noisy", "hazy", "clean"], "objective": "multilabel"}}],
            "backbone": {"type": "experts", "params": {"expert_params": {"width": 8, "enc_blk_nums": [1],
                                                                          "middle_blk_num": 1, "dec_blk_nums": [1]},
                                                       "identity": ["clean"]}},
            "condition": {"vector": "probs", "tokens": False},
            "data": {"degradations": [{"type": "noise"}, {"type": "haze"}]}}
    folder = Pipeline.from_spec(spec, build_losses=False).save(tmp_path / "ml")
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--pipeline", str(folder)]) == 0
    assert "[path]" in capsys.readouterr().out
    rows = json.loads((out / "demo.json").read_text())["rows"]
    assert [r["degradation"] for r in rows] == ["noise", "haze"]
    for r in rows:
        assert isinstance(r["path"], str) and r["path"]
        if r["path"].startswith("clean") or " undone " in r["path"]:
            assert r["psnr_restored"] == pytest.approx(r["psnr_degraded"])
