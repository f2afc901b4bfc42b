"""Pipelines: build, run, save, load in a fresh process; safe and atomic files."""
from __future__ import annotations

import pickle

import pytest
import torch

from conftest import ROOT, run_python
from vlir.core import Pipeline
from vlir.core.io import CheckpointError, atomic_path, load_checkpoint, save_safetensors
from vlir.core.train.objective import training_losses

SPEC = {
    "perceivers": [{"type": "daclip", "preset": "tiny"}],
    "backbone": {"type": "nafnet", "preset": "tiny"},
    "losses": [{"type": "l1"}, {"type": "charbonnier", "weight": 0.5}],
}


def test_pipeline_runs_and_trains():
    torch.manual_seed(0)
    pipe = Pipeline.from_spec(SPEC)
    assert list(pipe.perceivers) == ["daclip"] and pipe.feed == "daclip"
    lq, gt = torch.rand(2, 3, 24, 20), torch.rand(2, 3, 24, 20)
    out = pipe(lq)
    assert out.shape == lq.shape
    total, logs = training_losses(pipe, {"lq": lq, "gt": gt})
    assert set(logs) == {"l1", "charbonnier", "loss"}
    assert abs(logs["loss"] - (logs["l1"] + 0.5 * logs["charbonnier"])) < 1e-5
    total.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in pipe.backbone.parameters())


def test_missing_loss_input_is_named():
    pipe = Pipeline.from_spec({"backbone": {"type": "nafnet", "preset": "tiny"},
                               "losses": [{"type": "l1"}]})
    with pytest.raises(KeyError, match="loss 'l1' needs inputs \\['gt'\\]"):
        training_losses(pipe, {"lq": torch.rand(1, 3, 8, 8)})


def test_saved_pipeline_loads_in_a_fresh_process(tmp_path):
    torch.manual_seed(0)
    pipe = Pipeline.from_spec(SPEC).eval()
    with torch.no_grad():  # make the zero-initialised links matter
        for p in pipe.parameters():
            p.add_(0.01 * torch.randn_like(p))
    folder = pipe.save(tmp_path / "pipe")
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["backbone.safetensors", "perceiver.daclip.safetensors", "spec.yaml"]
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        torch.save(pipe(x), tmp_path / "y.pt")
    text = (folder / "spec.yaml").read_text()
    assert "versions:" in text and "provider: vlir" in text
    r = run_python(f"""
        import torch
        from vlir.core import Pipeline
        pipe = Pipeline.load({str(folder)!r}).eval()
        x = torch.load({str(tmp_path / 'x.pt')!r}, weights_only=True)
        y = torch.load({str(tmp_path / 'y.pt')!r}, weights_only=True)
        with torch.no_grad():
            print("EQUAL", torch.equal(pipe(x), y))
    """)
    assert r.returncode == 0, r.stderr
    assert "EQUAL True" in r.stdout


def test_load_reports_a_missing_component_file(tmp_path):
    folder = Pipeline.from_spec({"backbone": {"type": "nafnet", "preset": "tiny"}}).save(tmp_path / "p")
    (folder / "backbone.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="missing backbone.safetensors"):
        Pipeline.load(folder)
    with pytest.raises(FileNotFoundError, match="not a vlir pipeline folder"):
        Pipeline.load(tmp_path)


class _Evil:
    def __reduce__(self):
        import os
        return (os.system, ("touch /tmp/vlir-pwned",))


def test_checkpoints_never_execute_pickled_code(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"params": _Evil()}, f)
    torch.save({"params": {"w": torch.zeros(1)}, "x": _Evil()}, tmp_path / "evil2.pth")
    for p in (path, tmp_path / "evil2.pth"):
        with pytest.raises(CheckpointError, match="cannot be read safely"):
            load_checkpoint(p)
    import os
    assert not os.path.exists("/tmp/vlir-pwned")


def test_official_numpy_scalars_are_allowed(tmp_path):
    import numpy as np
    torch.save({"epoch": np.int64(3), "lr": np.float64(0.1), "params": {"w": torch.ones(2)}}, tmp_path / "c.pth")
    obj = load_checkpoint(tmp_path / "c.pth")
    assert float(obj["lr"]) == 0.1 and torch.equal(obj["params"]["w"], torch.ones(2))


def test_atomic_writes_keep_old_files_on_failure(tmp_path):
    target = tmp_path / "w.safetensors"
    save_safetensors({"a": torch.ones(3)}, target)
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert torch.equal(load_checkpoint(target)["a"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]


def test_example_backbone_installed_like_a_user_would(tmp_path):
    """pip-install examples/vlir-example-backbone (offline) and use it from a spec."""
    import subprocess
    import sys

    site = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                        "-q", "--target", str(site), str(ROOT / "examples" / "vlir-example-backbone")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    spec = tmp_path / "spec.yaml"
    spec.write_text("perceivers:\n  - {type: daclip, preset: tiny}\nbackbone: {type: tinyres, preset: wide}\n"
                    "losses:\n  - {type: l1}\n")
    r = run_python(f"""
        import torch
        from vlir.core import Pipeline, get_registry
        e = get_registry().get("backbone", "tinyres")
        print("PROVIDER", e.provider, e.version)
        pipe = Pipeline.from_spec({str(spec)!r})
        print("COND_DIM", pipe.backbone.params.cond_dim)
        lq = torch.rand(2, 3, 16, 16)
        from vlir.core.train.objective import training_losses
        total, logs = training_losses(pipe, {{"lq": lq, "gt": lq}})
        total.backward()
        pipe.save({str(tmp_path / 'out')!r})
        again = Pipeline.load({str(tmp_path / 'out')!r})
        print("SAME", torch.equal(pipe.eval()(lq), again.eval()(lq)))
    """, site)
    assert r.returncode == 0, r.stderr
    assert "PROVIDER vlir-example-backbone 0.1.0" in r.stdout
    assert "COND_DIM 32" in r.stdout and "SAME True" in r.stdout
    r = run_python("from vlir.core.cli import main; main(['components', 'tiny*'])", site)
    assert "tinyres" in r.stdout and "vlir-example-backbone" in r.stdout


def _symmetries(x: torch.Tensor) -> list[tuple]:
    """The eight flips / quarter turns as (forward, inverse) pairs, written independently."""
    pairs = []
    for flip in (False, True):
        for k in range(4):
            fwd = (lambda t, k=k, flip=flip: torch.rot90(t.flip(-1) if flip else t, k, (2, 3)))
            inv = (lambda t, k=k, flip=flip: (lambda u: u.flip(-1) if flip else u)(torch.rot90(t, -k, (2, 3))))
            pairs.append((fwd, inv))
    return pairs


def test_self_ensemble_averages_the_eight_symmetries():
    from vlir.core.metrics import psnr

    torch.manual_seed(0)
    pipe = Pipeline.from_spec({"perceivers": [{"type": "daclip", "preset": "tiny"}],
                               "backbone": {"type": "nafnet", "preset": "tiny"}}).eval()
    with torch.no_grad():
        for p in pipe.backbone.parameters():
            p.add_(0.02 * torch.randn_like(p))  # not equivariant: the eight passes differ
    calls, shapes = [], []
    pipe.perceivers["daclip"].register_forward_hook(lambda *a: calls.append(1))
    pipe.backbone.register_forward_hook(lambda m, args, out: shapes.append(tuple(args[0].shape[-2:])))
    lq = torch.rand(1, 3, 37, 53, generator=torch.Generator().manual_seed(1))
    # edge-replicated to 48 x 64: every flip and turn keeps 16-pixel (JPEG block) boundaries on the grid
    padded = torch.cat([lq, lq[..., -1:].expand(-1, -1, -1, 11)], -1)
    padded = torch.cat([padded, padded[..., -1:, :].expand(-1, -1, 11, -1)], -2)
    with torch.no_grad():
        cond = pipe.condition(pipe.perceive(lq))
        outs = [inv(pipe.backbone(fwd(padded), cond))[..., :37, :53] for fwd, inv in _symmetries(lq)]
    calls.clear(), shapes.clear()
    plain, _ = pipe.restore(lq)
    ens, perceptions = pipe.restore(lq, ensemble=True)
    assert len(calls) == 2  # the perceiver saw each image once, not once per symmetry
    assert pipe.ensemble_symmetries(perceptions) == tuple(range(8))  # its random guess has no direction
    assert shapes == [(37, 53)] + [(48, 64), (64, 48)] * 4
    assert set(perceptions) == {"daclip"} and ens.shape == lq.shape
    assert torch.allclose(ens, torch.stack(outs).mean(0).clamp(0, 1), atol=1e-5)
    assert not torch.allclose(ens, plain, atol=1e-3)
    with torch.no_grad():
        assert torch.equal(plain, pipe.backbone(lq, cond).clamp(0, 1))  # without ensemble: no padding
    tiled, _ = pipe.restore(lq, ensemble=True, tile=32, overlap=8)  # tiling inside each pass
    assert psnr(tiled[0], ens[0]) >= 50


def test_self_ensemble_keeps_the_direction_of_rain_and_haze():
    from vlir.core.conditioning import Perception

    def seen(names, probs):
        return {"p": Perception(class_names=names, class_probs=torch.tensor(probs))}

    names = ["noisy", "rainy", "hazy", "snowy"]  # snowy: no registered degradation has that label
    pipe = Pipeline.from_spec({"backbone": {"type": "nafnet", "preset": "tiny"}}).eval()
    assert pipe.ensemble_symmetries(seen(names, [[0.7, 0.1, 0.1, 0.1]])) == tuple(range(8))
    assert pipe.ensemble_symmetries(seen(names, [[0.1, 0.7, 0.1, 0.1]])) == (0, 2, 4, 6)  # flips, no turns
    assert pipe.ensemble_symmetries(seen(names, [[0.1, 0.1, 0.7, 0.1]])) == (0, 4)  # left-right mirror only
    assert pipe.ensemble_symmetries(seen(names, [[0.1, 0.7, 0.1, 0.1], [0.1, 0.1, 0.7, 0.1]])) == (0, 4)
    assert pipe.ensemble_symmetries(seen(names, [[0.1, 0.1, 0.1, 0.7]])) == tuple(range(8))
    assert pipe.ensemble_symmetries({}) == tuple(range(8))
    # no classifier: the degradations the pipeline was trained on decide
    trained = Pipeline.from_spec({"backbone": {"type": "nafnet", "preset": "tiny"},
                                  "data": {"layout": "synthetic", "train": ["x"],
                                           "degradations": [{"type": "noise"}, {"type": "rain"}]}}).eval()
    assert trained.ensemble_symmetries({}) == (0, 2, 4, 6)

    # a rain-trained pipeline restores the image, its half turn and its two flips, never a quarter turn
    passes = []
    trained.backbone.register_forward_hook(lambda m, args, out: passes.append(args[0].clone()))
    lq = torch.rand(1, 3, 20, 40, generator=torch.Generator().manual_seed(2))
    out, _ = trained.restore(lq, ensemble=True)
    assert out.shape == lq.shape and [tuple(x.shape[-2:]) for x in passes] == [(32, 48)] * 4
    padded = torch.nn.functional.pad(lq, (0, 8, 0, 12), mode="replicate")
    for x, want in zip(passes, (padded, padded.flip(-1, -2), padded.flip(-1), padded.flip(-2))):
        assert torch.equal(x, want)
