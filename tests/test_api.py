"""The Python API: vlir.load / Pipeline.from_pretrained and the image types Pipeline.restore accepts."""
from __future__ import annotations

import re
from importlib import metadata

import numpy as np
import pytest
import torch

from conftest import ROOT, imports_torch, run_python
from vlir.core import Pipeline
from vlir.core.default import available

TINY = {"perceivers": [{"type": "daclip", "preset": "tiny"}], "backbone": {"type": "nafnet", "preset": "tiny"}}
needs_default = pytest.mark.skipif(not available(), reason="the built-in default model is not installed")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A saved tiny pipeline whose restoration is not the identity."""
    torch.manual_seed(0)
    pipe = Pipeline.from_spec(TINY)
    with torch.no_grad():
        for p in pipe.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return pipe.save(tmp_path_factory.mktemp("api") / "pipe")


@pytest.fixture(scope="module")
def pipe(folder):
    import vlir

    return vlir.load(folder)


def image(h=24, w=20, seed=0) -> torch.Tensor:
    return torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(seed))


def test_import_vlir_is_light_and_has_a_version():
    assert not imports_torch("vlir")
    import vlir

    assert vlir.__version__ == metadata.version("vlir")
    assert callable(vlir.load) and vlir.Pipeline is Pipeline


def test_load_gives_eval_mode_without_gradients(folder, pipe):
    assert not pipe.training and not any(p.requires_grad for p in pipe.parameters())
    assert not Pipeline.load(folder).training  # Pipeline.load too
    again = Pipeline.from_pretrained(str(folder))
    x = image()
    torch.testing.assert_close(again.restore(x)[0], pipe.restore(x)[0], rtol=0, atol=0)
    with pytest.raises(FileNotFoundError, match="not 'default', a pipeline folder"):
        Pipeline.from_pretrained("no such thing")


@needs_default
def test_load_default():
    import vlir

    pipe = vlir.load("default")
    assert not pipe.training and "daclip" in pipe.perceivers


def test_pipe_call_returns_no_grad_fn_even_in_training_mode():
    torch.manual_seed(0)
    pipe = Pipeline.from_spec(TINY)  # built for training: train mode, parameters need grad
    assert pipe.training
    out = pipe(image())
    assert out.grad_fn is None and not out.requires_grad and out.shape == (1, 3, 24, 20)
    out.clamp_(0, 1)  # a plain tensor, not an inference one: in-place ops work


def test_restore_types_round_trip(pipe):
    from PIL import Image

    x = image()
    ref = pipe.restore(x)[0]  # the float batch path
    ref8 = (ref[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    arr8 = (x[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()

    out, perceptions = pipe.restore(arr8)  # numpy uint8 H x W x 3
    assert out.dtype == np.uint8 and out.shape == arr8.shape and "daclip" in perceptions
    expect8 = pipe.restore(torch.from_numpy(arr8).permute(2, 0, 1)[None].float() / 255)[0]
    expect8 = (expect8[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    np.testing.assert_array_equal(out, expect8)

    img = pipe.restore(Image.fromarray(arr8))[0]  # PIL in, PIL out
    assert isinstance(img, Image.Image) and img.mode == "RGB" and img.size == (20, 24)
    np.testing.assert_array_equal(np.asarray(img), expect8)
    rgba = Image.fromarray(np.dstack([arr8, np.full(arr8.shape[:2], 128, np.uint8)]), "RGBA")
    back = pipe.restore(rgba)[0]
    assert back.mode == "RGBA" and np.asarray(back)[..., 3].max() == 128
    assert pipe.restore(Image.fromarray(arr8[..., 0]))[0].mode == "L"

    f = pipe.restore(x[0].permute(1, 2, 0).numpy())[0]  # float32 array in [0, 1]
    assert f.dtype == np.float32
    np.testing.assert_allclose(f, ref[0].permute(1, 2, 0).numpy(), atol=1e-6)
    u16 = pipe.restore((x[0].permute(1, 2, 0).numpy() * 65535).round().astype(np.uint16))[0]
    assert u16.dtype == np.uint16 and abs(u16.astype(float) / 65535 - f).max() < 1e-3

    t8 = pipe.restore(torch.from_numpy(arr8).permute(2, 0, 1))[0]  # uint8 tensor 3 x H x W
    assert t8.dtype == torch.uint8 and t8.shape == (3, 24, 20)
    np.testing.assert_array_equal(t8.permute(1, 2, 0).numpy(), expect8)
    t3 = pipe.restore(x[0].double())[0]  # float64, no batch dimension
    assert t3.dtype == torch.float64 and t3.shape == (3, 24, 20)
    torch.testing.assert_close(t3.float(), ref[0], atol=1e-6, rtol=0)
    assert (ref8 >= 0).all()

    grey = pipe.restore(arr8[..., 0])[0]  # H x W grey
    assert grey.shape == (24, 20) and grey.dtype == np.uint8


def test_restore_a_list_of_sizes(pipe):
    a, b = image(24, 20, 1), image(17, 33, 2)
    outs, perceptions = pipe.restore([a[0], b[0]])
    assert [o.shape for o in outs] == [(3, 24, 20), (3, 17, 33)] and len(perceptions) == 2
    torch.testing.assert_close(outs[1], pipe.restore(b)[0][0], rtol=0, atol=0)


def test_out_of_range_and_bad_inputs_are_refused(pipe):
    x = image()
    with pytest.raises(ValueError, match=r"values must lie in \[0, 1\], got .*divide by 255"):
        pipe.restore(x * 255)  # a float tensor in 0..255 is not clamped silently
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        pipe.restore(x[0].permute(1, 2, 0).numpy() - 0.5)
    with pytest.raises(ValueError, match="NaN"):
        pipe.restore(torch.full((3, 8, 8), float("nan")))
    with pytest.raises(ValueError, match="int32 samples is not supported"):
        pipe.restore(np.zeros((8, 8, 3), np.int32))
    with pytest.raises(ValueError, match="H x W x 3"):
        pipe.restore(np.zeros((8, 8, 4), np.uint8))
    with pytest.raises(TypeError, match="expected a PIL image"):
        pipe.restore("photo.png")


def test_bf16_pipeline_takes_fp32_input(folder, pipe):
    import vlir

    bf = vlir.load(folder, dtype="bfloat16")
    assert next(bf.backbone.parameters()).dtype == torch.bfloat16
    x = image()
    out = bf.restore(x)[0]
    assert out.dtype == torch.float32  # the input's dtype
    assert (out - pipe.restore(x)[0]).abs().mean() < 0.02


def _hub_cache(tmp_path, folder, repo="someone/tiny-vlir", rev="0123456789abcdef0123456789abcdef01234567"):
    """A Hugging Face cache holding ``repo`` at ``rev`` (refs/main), in HF's own layout."""
    root = tmp_path / "hub" / f"models--{repo.replace('/', '--')}"
    snap = root / "snapshots" / rev
    snap.mkdir(parents=True)
    for f in folder.iterdir():
        (snap / f.name).write_bytes(f.read_bytes())
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(rev)
    return tmp_path / "hub"


def test_load_a_hub_repository_from_the_cache_offline(tmp_path, folder, pipe):
    cache = _hub_cache(tmp_path, folder)
    x = image()
    torch.save(x, tmp_path / "x.pt")
    torch.save(pipe.restore(x)[0], tmp_path / "y.pt")
    r = run_python(f"""
        import torch, vlir
        pipe = vlir.load("someone/tiny-vlir")
        x, y = (torch.load({str(tmp_path)!r} + f, weights_only=True) for f in ("/x.pt", "/y.pt"))
        print("EQUAL", torch.equal(pipe.restore(x)[0], y), pipe.training)
        try:
            vlir.load("someone/not-cached")
        except FileNotFoundError as e:
            print("MISSING", e)
    """, env={"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr
    assert "EQUAL True False" in r.stdout
    assert "MISSING vlir.load('someone/not-cached'): not in the Hugging Face cache" in r.stdout


@needs_default
def test_readme_python_example_runs(tmp_path):
    """The README's "Python API" example, run as written (a notebook-style check)."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Python API\n\n```python\n(.*?)```", text, re.S)
    assert block, "README has no Python API example"
    r = run_python(block.group(1))
    assert r.returncode == 0, r.stderr
    assert re.match(r"\S+ noisy 0\.\d+ uint8 \(256, 256, 3\)", r.stdout), r.stdout
