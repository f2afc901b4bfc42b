"""Start-up: ``Pipeline.load`` builds on the meta device and takes the files' tensors, DA-CLIP's
plain ViT CLIP is built without importing open_clip; every output stays the same bit for bit."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from vlir.core.default import available

TINY = {"perceivers": [{"type": "daclip", "preset": "tiny",
                        "params": {"degradations": ["noisy", "jpeg-compressed", "blurry"]}}],
        "backbone": {"type": "nafnet", "preset": "tiny"}}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    from vlir.core import Pipeline

    torch.manual_seed(0)
    pipe = Pipeline.from_spec(TINY, build_losses=False).eval()
    with torch.no_grad():
        for p in pipe.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return pipe, pipe.save(tmp_path_factory.mktemp("startup") / "pipe")


def _copied(folder):
    """The pipeline of ``folder`` loaded the way it was before: built for real, weights copied in."""
    from vlir.core import Pipeline
    from vlir.core.io import load_checkpoint
    from vlir.core.spec import load_spec, read_yaml

    raw = read_yaml(folder / "spec.yaml")
    for comp in [*(raw.get("perceivers") or []), raw.get("backbone"), raw.get("process")]:
        if isinstance(comp, dict):
            comp.pop("weights", None)
    pipe = Pipeline(load_spec(raw), build_losses=False, load_weights=False, skip_pretrained=True)
    states = {n: (load_checkpoint(folder / f"{n}.safetensors"), n) for n, _ in pipe.named_components()
              if (folder / f"{n}.safetensors").is_file()}
    assert pipe._fill(states)
    return pipe.eval()


def _all_tensors(module):
    """Parameters and saved buffers (open_clip's text mask is a buffer the lite CLIP makes when used)."""
    return module.state_dict(keep_vars=True)


@pytest.mark.parametrize("model", ["vlir-tiny", "vlir-small-p8"])
def test_lite_clip_is_open_clip_bit_for_bit(model):
    from vlir.plugins.perceivers import _clip, _clip_lite

    torch.manual_seed(0)
    ref, ref_tok = _clip.create_clip(model)
    ref.eval()
    assert _clip_lite.supports(_clip.model_config(model))
    lite, tok = _clip.create_clip(model, device="meta", lite=True)
    assert isinstance(lite, _clip_lite.CLIP)
    sd = ref.state_dict()
    assert {k: v.shape for k, v in lite.state_dict().items()} == {k: v.shape for k, v in sd.items()}
    lite.load_state_dict({k: v.clone() for k, v in sd.items()}, assign=True)
    lite.eval()
    texts = ["noisy", "jpeg-compressed", "low-light", "A photo of a cat, rainy & hazy!"]
    assert torch.equal(tok(texts), ref_tok(texts)) and tok.context_length == ref_tok.context_length
    size = _clip.preprocess_cfg(ref)
    assert _clip.preprocess_cfg(lite) == size
    x = _clip.preprocess(torch.rand(2, 3, 40, 50, generator=torch.Generator().manual_seed(1)), *size)
    ids = ref_tok(texts)
    with torch.no_grad():
        for autocast in (False, True):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                assert torch.equal(lite.encode_image(x), ref.encode_image(x))
                assert torch.equal(lite.encode_text(ids, normalize=True), ref.encode_text(ids, normalize=True))
                a, b = lite.visual, ref.visual
                assert torch.equal(a._pool(a.transformer(a._embeds(x)))[0], b._pool(b.transformer(b._embeds(x)))[0])


def test_supports_only_the_plain_architecture():
    from vlir.plugins.perceivers import _clip_lite

    cfg = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8},
           "text_cfg": {"width": 32, "heads": 2, "layers": 1}}
    assert _clip_lite.supports(cfg)
    assert not _clip_lite.supports({**cfg, "quick_gelu": True})
    assert not _clip_lite.supports({**cfg, "vision_cfg": {**cfg["vision_cfg"], "timm_model_name": "vit"}})
    assert not _clip_lite.supports({**cfg, "text_cfg": {**cfg["text_cfg"], "hf_model_name": "bert"}})


def test_load_takes_the_files_tensors_and_restores_the_same(saved):
    from vlir.core import Pipeline
    from vlir.plugins.perceivers._clip_lite import CLIP

    pipe, folder = saved
    loaded = Pipeline.load(folder)
    assert isinstance(loaded.perceivers["daclip"].clip, CLIP)
    copied = _copied(folder)
    new, old = _all_tensors(loaded), _all_tensors(copied)
    assert new.keys() == old.keys()
    for k in old:
        assert not new[k].is_meta and new[k].dtype == old[k].dtype and torch.equal(new[k], old[k]), k
        assert new[k].requires_grad == old[k].requires_grad, k
    x = torch.rand(1, 3, 40, 36, generator=torch.Generator().manual_seed(2))
    out, per = loaded.restore(x)
    ref, ref_per = copied.restore(x)
    assert torch.equal(out, ref) and torch.equal(out, pipe.restore(x)[0])
    assert torch.equal(per["daclip"].class_probs, ref_per["daclip"].class_probs)
    assert torch.equal(loaded.restore(x, dtype="bf16")[0], copied.restore(x, dtype="bf16")[0])


def test_load_casts_half_files_to_the_modules_dtype(saved, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    from vlir.core import Pipeline

    _, folder = saved
    half = tmp_path / "half"
    shutil.copytree(folder, half)
    sd = load_file(half / "backbone.safetensors")
    save_file({k: v.half() for k, v in sd.items()}, half / "backbone.safetensors")
    w = Pipeline.load(half).backbone.intro.weight
    assert w.dtype == torch.float32 and torch.equal(w, sd["intro.weight"].half().float())


def test_components_that_cannot_be_filled_are_built(tmp_path):
    """A diffusion pipeline (the process computes its schedule when built): loaded as before."""
    from vlir.core import Pipeline

    torch.manual_seed(0)
    pipe = Pipeline.from_spec({"backbone": {"type": "conditional_unet", "preset": "tiny"},
                               "process": {"type": "irsde"}}, build_losses=False)
    loaded = Pipeline.load(pipe.save(tmp_path / "sde"))
    for k, v in _all_tensors(pipe).items():
        assert torch.equal(_all_tensors(loaded)[k], v), k


def test_load_imports_neither_open_clip_nor_dynamo(saved):
    _, folder = saved
    code = ("import sys; from vlir.core import Pipeline; p = Pipeline.load(sys.argv[1]); "
            "import torch; p.restore(torch.rand(1, 3, 24, 24)); "
            "print(sorted(m for m in ('open_clip', 'torch._dynamo', 'torchvision') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.skipif(not available(), reason="the built-in default model is not installed")
def test_default_model_loads_bit_for_bit():
    from vlir.core.default import default_dir, load_default

    x = torch.rand(1, 3, 64, 80, generator=torch.Generator().manual_seed(3))
    new, old = load_default(), _copied(default_dir())
    assert all(torch.equal(a, b) for a, b in zip(_all_tensors(new).values(), _all_tensors(old).values()))
    assert torch.equal(new.restore(x)[0], old.restore(x)[0])


def test_startup_benchmark_helpers(tmp_path):
    """benchmarks/startup.py runs a tree from its sources through a folder of links, and reads
    ``-X importtime`` logs (the full benchmark needs a base worktree and minutes: run by hand)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root / "benchmarks"))
    try:
        import startup
    finally:
        sys.path.pop(0)
    path = startup.link_tree(root, tmp_path / "links")
    code = "import vlir, vlir.core, vlir.plugins; print(vlir.core.__file__, vlir.plugins.__file__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(path), "PATH": ""}, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    core, plugins = out.stdout.split()
    assert Path(core).resolve() == root / "core" / "__init__.py"
    assert Path(plugins).resolve() == root / "plugins" / "__init__.py"
    log = ("import time:       500 |       1500 |   torch._C\n"
           "import time:      1000 |    2500000 | torch\n"
           "import time:       700 |    1200000 |     open_clip\n")
    assert startup.import_seconds(log, "torch") == 2.5 and startup.import_seconds(log, "open_clip") == 1.2
    assert startup.import_seconds(log, "transformers") == 0.0
