"""The spec-driven trainer: schedule, EMA, checkpoints, resume, DDP, stages and the CLI."""
from __future__ import annotations

import copy
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT
from vlir.core import Loss, hookimpl
from vlir.core.registry import get_registry
from vlir.core.sections import StageSpec, TrainSpec
from vlir.core.spec import SpecError, load_spec
from vlir.core.train import checkpoint as ckpt
from vlir.core.train.cli import apply_overrides, parse_override
from vlir.core.train.ema import EMA
from vlir.core.train.trainer import Trainer, lr_factor


def make_images(folder: Path, n: int = 6, size: int = 48, seed: int = 0) -> Path:
    """Smooth random colour images (PNG)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        coarse = (rng.random((4, 4, 3)) * 255).astype(np.uint8)
        img = Image.fromarray(coarse).resize((size, size + 8 * (i % 2)), Image.BICUBIC)
        img.save(folder / f"img{i:02d}.png")
    return folder


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return make_images(tmp_path_factory.mktemp("clean"))


def tiny_spec(images: Path, **train) -> dict:
    return {
        "backbone": {"type": "nafnet", "preset": "tiny"},
        "losses": [{"type": "l1"}],
        "data": {"train": [str(images)], "val": [str(images)], "patch_size": 32, "batch_size": 4,
                 "degradations": [{"type": "noise"}, {"type": "blur"}], "val_size": 32, "val_limit": 4},
        "train": {"iterations": 6, "lr": 1e-3, "warmup": 1, "log_every": 2, "val_every": 3, "save_every": 3,
                  **train},
    }


def weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update({f"{f.stem}/{k}": v for k, v in load_file(str(f)).items()})
    return out


def assert_same(a: dict, b: dict, atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    worst = max((x.float() - b[k].float()).abs().max().item() for k, x in a.items())
    assert worst <= atol, f"weights differ by up to {worst}"


class Hook:
    """A vlir hook plugin registered for one test."""

    def __init__(self, fn=None, epoch_fn=None):
        self.fn, self.epoch_fn = fn, epoch_fn
        self.steps: list[int] = []
        self.epochs: list[int] = []

    @hookimpl
    def vlir_train_step_end(self, trainer, step, logs):
        self.steps.append(step)
        if self.fn:
            self.fn(trainer, step, logs)

    @hookimpl
    def vlir_train_epoch_end(self, trainer, epoch, logs):
        self.epochs.append(epoch)
        if self.epoch_fn:
            self.epoch_fn(trainer, epoch, logs)

    def __enter__(self):
        get_registry().pm.register(self)
        return self

    def __exit__(self, *exc):
        get_registry().pm.unregister(self)


# -- pure parts ------------------------------------------------------------------------------
def test_schedule_stages_and_overrides():
    assert lr_factor(0, 10, 2, 0.0) == pytest.approx(0.5)
    assert lr_factor(1, 10, 2, 0.0) == pytest.approx(1.0)
    assert lr_factor(2, 10, 2, 0.0) == pytest.approx(1.0)
    assert lr_factor(10, 10, 2, 0.1) == pytest.approx(0.1)
    mid = lr_factor(6, 10, 2, 0.0)
    assert mid == pytest.approx(0.5)
    t = TrainSpec(lr=1e-3, ema=0.9, stages=[{"target": "perceiver:daclip", "lr": 1e-5, "ema": 0},
                                             {"target": "restorer", "unfreeze": ["daclip"]}])
    s1, s2 = t.resolved_stages()
    assert (s1.lr, s1.ema, s1.iterations) == (1e-5, 0, 1000) and (s2.lr, s2.ema) == (1e-3, 0.9)
    assert TrainSpec().resolved_stages()[0].target == "restorer"
    with pytest.raises(ValueError, match="restorer' or 'perceiver:<role>'"):
        StageSpec(target="backbone")
    with pytest.raises(ValueError, match="unfreeze is for restorer stages"):
        StageSpec(target="perceiver:x", unfreeze=["x"])
    raw = {"train": {"stages": [{"iterations": 5}]}, "data": {}}
    out = apply_overrides(raw, [parse_override("train.stages.0.lr=0.5"), parse_override("data.train=imgs"),
                                parse_override("eval.tile=64")])
    assert out == {"train": {"stages": [{"iterations": 5, "lr": 0.5}]}, "data": {"train": "imgs"},
                   "eval": {"tile": 64}}
    assert raw["train"]["stages"][0] == {"iterations": 5}  # the input is not changed
    with pytest.raises(SpecError, match="train.stages.3"):
        apply_overrides(raw, [parse_override("train.stages.3.lr=1")])
    assert load_spec(tiny_spec(Path("x"))).data.train == ["x"]


def test_ema_behaves():
    p = torch.nn.Parameter(torch.zeros(3))
    ema = EMA([("w", p)], decay=0.9)
    with torch.no_grad():
        p.fill_(1.0)
    expected = 0.0
    for n in range(3):  # warm-up: decay min(0.9, (1 + n) / (10 + n)) = 0.1, 0.18, 0.25
        assert ema.current_decay() == pytest.approx(min(0.9, (1 + n) / (10 + n)))
        ema.update()
        expected = expected * (1 + n) / (10 + n) + (1 - (1 + n) / (10 + n))
    assert torch.allclose(ema.shadow[0], torch.full((3,), expected))
    plain = EMA([("w", torch.nn.Parameter(torch.zeros(3)))], decay=0.9, warmup=False)
    with torch.no_grad():
        plain.params[0].fill_(1.0)
    for _ in range(3):
        plain.update()
    assert torch.allclose(plain.shadow[0], torch.full((3,), 1 - 0.9 ** 3))
    with ema.swapped():
        assert torch.allclose(p, torch.full((3,), expected))
    assert torch.equal(p.detach(), torch.ones(3))  # live weights are back
    state = ema.state_dict()
    other = EMA([("w", torch.nn.Parameter(torch.zeros(3)))], decay=0.9)
    other.load_state_dict(state)
    assert torch.equal(other.shadow[0], ema.shadow[0]) and other.updates == 3
    ema.copy_to()
    assert torch.allclose(p, torch.full((3,), expected))
    with pytest.raises(ValueError, match="decay"):
        EMA([("w", p)], decay=1.0)


def test_one_seeding_rule_and_plain_checkpoints(tmp_path):
    from vlir.core import seed
    from vlir.core.data.datasets import item_generator

    assert seed.mix(0, 3, 1) == seed.mix(0, 3, 1) and len({seed.mix(0, s, r) for s in range(4) for r in range(2)}) == 8
    assert 0 <= seed.mix(2 ** 70, -1) < 2 ** 63
    assert torch.equal(torch.rand(4, generator=seed.generator(5, 6)), torch.rand(4, generator=item_generator(5, 6)))
    seed.seed_everything(7)
    a = (torch.rand(2), np.random.rand(2), random.random())
    seed.seed_everything(7)
    assert torch.equal(a[0], torch.rand(2)) and np.array_equal(a[1], np.random.rand(2)) and a[2] == random.random()
    path = ckpt.save({"step": 1, "components": {"backbone": {"w": torch.ones(2)}}}, tmp_path, step=1)
    assert torch.load(path, weights_only=True)["format"] == "vlir-train"
    assert ckpt.load(path)["step"] == 1
    assert [p.name for _, p in ckpt.list_checkpoints(tmp_path)] == ["step_00000001.pt"]
    assert not any(p.name.endswith(".tmp.pt") or p.name.startswith(".") for p in tmp_path.iterdir())


# -- training runs ---------------------------------------------------------------------------
def test_kill_and_resume_ends_with_the_same_weights(tmp_path, images):
    spec = load_spec(tiny_spec(images, ema=0.5, keep_checkpoints=5))
    full = Trainer(spec, tmp_path / "full", progress=False).fit()
    # a run that dies at step 5; its newest checkpoint is step 3
    class Killed(Exception):
        pass

    def die(trainer, step, logs):
        if step == 5:
            raise Killed()
    with Hook(die), pytest.raises(Killed):
        Trainer(spec, tmp_path / "killed", progress=False).fit()
    found = [s for s, _ in ckpt.list_checkpoints(tmp_path / "killed" / "checkpoints")]
    assert found == [3] and not (tmp_path / "killed" / "pipeline").exists()
    with Hook() as hook:
        resumed = Trainer(spec, tmp_path / "killed", resume=tmp_path / "killed", progress=False)
        assert (resumed.step, resumed.stage_step) == (3, 3)
        out = resumed.fit()
    assert hook.steps == [4, 5, 6]
    assert_same(weights(full), weights(out))  # bit-identical
    # checkpoints are plain tensors and primitives
    state = torch.load(tmp_path / "killed" / "checkpoints" / "step_00000003.pt", weights_only=True)
    assert state["step"] == 3 and state["optimizer"]["state"] and state["ema"]["updates"] == 3
    assert state["data"]["position"] == 12 and "rng" not in state
    assert set(state["components"]) == {"backbone"}
    log_rows = [json.loads(line) for line in (tmp_path / "full" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log_rows if r["kind"] == "val"] == [3, 6]
    assert all(np.isfinite(r["psnr"]) for r in log_rows if r["kind"] == "val")
    assert list((tmp_path / "full" / "tb").glob("events.out.tfevents.*"))


class JitterL1(Loss):
    """L1 times a factor drawn from torch's global generator (as dropout or a third-party loss would)."""

    inputs = ("restored", "gt")

    def forward(self, restored, gt):
        return (1 + torch.rand(())) * (restored - gt).abs().mean()


class JitterPlugin:
    """Contributes ``jitter_l1``; with ``draw`` it also draws random numbers after every step."""

    def __init__(self, draw: bool):
        self.draw = draw

    @hookimpl
    def vlir_components(self):
        return [{"kind": "loss", "name": "jitter_l1", "target": JitterL1}]

    @hookimpl
    def vlir_train_step_end(self, trainer, step, logs):
        if self.draw:
            torch.rand(5), np.random.rand(5), random.random()


def test_random_draws_between_steps_change_nothing(tmp_path, images):
    """Each step seeds its own streams: what draws random numbers between steps (a hook, a
    validation pass, the order of set-up statements) leaves the weights as they were."""
    from vlir.core.registry import Registry

    raw = {**tiny_spec(images, iterations=3, val_every=100), "losses": [{"type": "jitter_l1"}]}
    out = {}
    for draw in (False, True):
        reg = Registry(plugins=[JitterPlugin(draw)])
        out[draw] = Trainer(load_spec(raw, reg), tmp_path / str(draw), registry=reg, progress=False).fit()
    assert_same(weights(out[False]), weights(out[True]))


def test_ema_weights_are_the_final_weights(tmp_path, images):
    seen = {}

    def grab(trainer, step, logs):
        if step == 4:
            seen["shadow"] = [s.cpu().clone() for s in trainer.ema.shadow]  # CUDA when present
            seen["live"] = [p.detach().cpu().clone() for p in trainer.ema.params]
            seen["names"] = list(trainer.ema.names)
    with Hook(grab):
        out = Trainer(load_spec(tiny_spec(images, iterations=4, ema=0.7)), tmp_path / "r", progress=False).fit()
    final = weights(out)
    for name, s, live in zip(seen["names"], seen["shadow"], seen["live"]):
        key = "backbone/" + name.split(".", 1)[1]
        assert torch.equal(final[key], s)
    assert any(not torch.equal(s, v) for s, v in zip(seen["shadow"], seen["live"]))


@pytest.mark.parametrize("amp, channels_last, dtype", [("auto", False, torch.float32),
                                                      ("bf16", True, torch.bfloat16)])
def test_cpu_autocast_and_channels_last(tmp_path, images, amp, channels_last, dtype):
    """On a CPU, amp=auto trains in float32; amp=bf16 autocasts the convolutions, channels_last keeps
    their weights channels-last while training, and the saved pipeline is ordinary (contiguous) files."""
    from vlir.core import Pipeline

    seen: dict = {}

    def grab(trainer, step, logs):
        if step == 1:
            convs = [m for m in trainer.pipeline.backbone.modules() if isinstance(m, torch.nn.Conv2d)]
            seen["layouts"] = {c.weight.is_contiguous(memory_format=torch.channels_last)  # (size-1 dims: both)
                               for c in convs if c.kernel_size != (1, 1) and c.weight.shape[1] > 1}
            # convs[0] reads the image in fp32 (plugins/backbones/_blocks.full_precision); the next runs in autocast
            convs[1].register_forward_hook(lambda m, i, o: seen.setdefault("dtypes", set()).add(o.dtype))
    with Hook(grab):
        out = Trainer(load_spec(tiny_spec(images, iterations=3, amp=amp, channels_last=channels_last)),
                      tmp_path / "r", device="cpu", progress=False).fit()
    assert seen["layouts"] == {channels_last}
    assert seen["dtypes"] == {dtype}  # steps 2-3 and validation
    saved = weights(out)
    assert all(v.is_contiguous() and torch.isfinite(v).all() for v in saved.values())
    back = Pipeline.load(out).eval()
    assert_same({f"backbone/{k}": v for k, v in back.backbone.state_dict().items()},
                {k: v for k, v in saved.items() if k.startswith("backbone/")})


def test_fp16_autocast_is_refused_on_a_cpu(tmp_path, images):
    with pytest.raises(SpecError, match=r"train\.amp.*fp16 autocast needs a CUDA device.*use bf16"):
        Trainer(load_spec(tiny_spec(images, amp="fp16")), tmp_path / "r", device="cpu", progress=False)


def test_stages_train_a_perceiver_then_the_restorer(tmp_path, images):
    raw = tiny_spec(images, iterations=2, ema=None)
    raw["perceivers"] = [{"type": "daclip", "preset": "tiny",
                          "params": {"degradations": ["noisy", "blurry"], "objective": "cross_entropy"}}]
    raw["data"]["degradations"] = [{"type": "noise", "params": {"sigma": 60}}, {"type": "blur", "params": {"sigma": 3}}]
    raw["data"]["batch_size"] = 6
    raw["train"].update(val_every=100, save_every=100, stages=[
        {"name": "perceiver", "target": "perceiver:daclip", "iterations": 30, "lr": 2e-3},
        {"name": "restorer", "target": "restorer", "iterations": 2}])
    spec = load_spec(raw)
    trainer = Trainer(spec, tmp_path / "r", device="cpu", progress=False)  # the fixed batches below are CPU tensors
    pipe = trainer.pipeline
    per = pipe.perceivers["daclip"]
    from vlir.core.train.data import build_dataset, collate

    ds = build_dataset(spec.data, "train", 32)
    fixed = [collate([ds[i] for i in range(k, k + 6)]) for k in (0, 6)]

    def objective() -> float:
        per.eval()
        with torch.no_grad():
            return float(np.mean([float(per.objective(b)["degradation"]) for b in fixed]))

    before = objective()
    start = copy.deepcopy(pipe.state_dict())
    snap = {}

    def grab(trainer, step, logs):
        if step == 30:
            snap.update(copy.deepcopy(trainer.pipeline.state_dict()))
    with Hook(grab, epoch_fn=lambda *a: None) as hook:
        out = trainer.fit()
    assert hook.steps == list(range(1, 33))
    assert hook.epochs == list(range((30 * 6) // len(ds))) + list(range((2 * 6) // len(ds)))
    end = pipe.state_dict()
    after = objective()
    assert after < before - 0.1, (before, after)

    def changed(a, b, prefix):
        keys = [k for k in a if k.startswith(prefix)]
        assert keys, prefix
        return any(not torch.equal(a[k], b[k]) for k in keys)
    # stage 1: only the controller (and logit scale) moved; CLIP and the backbone did not
    assert changed(start, snap, "perceivers.daclip.visual_control.")
    assert not changed(start, snap, "perceivers.daclip.clip.")
    assert not changed(start, snap, "backbone.")
    # stage 2: the backbone moved, the perceiver stayed frozen
    assert changed(snap, end, "backbone.")
    assert not changed(snap, end, "perceivers.daclip.")
    from vlir.core import Pipeline

    loaded = Pipeline.load(out)
    assert_same({k: v for k, v in loaded.state_dict().items()}, {k: v for k, v in end.items()})


def test_stop_at_a_stage_boundary_and_resume(tmp_path, images):
    raw = tiny_spec(images, iterations=2, ema=0.5)
    raw["perceivers"] = [{"type": "daclip", "preset": "tiny", "params": {"degradations": ["noisy", "blurry"]}}]
    raw["train"].update(save_every=100, stages=[{"target": "perceiver", "iterations": 2},
                                                {"target": "restorer", "iterations": 2}])
    spec = load_spec(raw)
    full = Trainer(spec, tmp_path / "full", progress=False).fit()
    stopped = load_spec(apply_overrides(raw, [(["train", "max_steps_this_run"], 2)]))
    assert Trainer(stopped, tmp_path / "part", progress=False).fit() is None
    state = ckpt.load(ckpt.resolve(tmp_path / "part"))
    assert (state["step"], state["stage"], state["stage_step"], state["optimizer"]) == (2, 1, 0, None)
    out = Trainer(spec, tmp_path / "part", resume=tmp_path / "part", progress=False).fit()
    assert_same(weights(full), weights(out))


def test_two_processes_match_one(tmp_path, images):
    raw = tiny_spec(images, iterations=4, ema=0.5, val_every=2, save_every=2)
    spec_file = tmp_path / "spec.yaml"
    import yaml

    spec_file.write_text(yaml.safe_dump(raw))
    one = Trainer(load_spec(raw), tmp_path / "one", device="cpu", progress=False).fit()  # as the two below
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
                        "-m", "vlir.core.cli", "train", str(spec_file), "--out", str(tmp_path / "two"),
                        "--quiet", "--device", "cpu"],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=400)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert_same(weights(one), weights(tmp_path / "two" / "pipeline"), atol=1e-5)
    rows = [json.loads(x) for x in (tmp_path / "two" / "log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in rows if x["kind"] == "train"] == [2, 4]  # rank 0 alone writes
    state = ckpt.load(ckpt.resolve(tmp_path / "two"))
    assert state["world"] == 2


def test_errors_name_the_spec_field(tmp_path, images):
    raw = tiny_spec(images)
    raw["train"]["stages"] = [{"target": "perceiver:nope"}]
    with pytest.raises(SpecError, match=r"train.stages\[0\].target: no perceiver for 'perceiver:nope'"):
        Trainer(load_spec(raw), tmp_path / "x", progress=False)
    raw = tiny_spec(tmp_path / "missing")
    with pytest.raises(SpecError, match=r"data.train\[0\]: no such folder"):
        Trainer(load_spec(raw), tmp_path / "y", progress=False).fit()
    raw = tiny_spec(images)
    del raw["data"]
    with pytest.raises(SpecError, match="data.train"):
        Trainer(load_spec(raw), tmp_path / "z", progress=False)


def test_a_stage_sees_its_own_degradations_and_augmentations(tmp_path, images):
    raw = tiny_spec(images)
    raw["data"]["degradations"] = [{"type": "noise"}, {"type": "blur"}]
    raw["data"]["augment"] = {"channels": True}
    raw["train"]["stages"] = [{"target": "restorer"},
                              {"target": "restorer", "degradations": ["blur"], "augment": {"rot90": True}}]
    trainer = Trainer(load_spec(raw), tmp_path / "r", progress=False)
    first, second = (trainer._stage_data(s) for s in trainer.stages)
    assert [d.type for d in first.degradations] == ["noise", "blur"] and first.augment.channels
    assert [d.type for d in second.degradations] == ["blur"]
    assert second.augment.rot90 and not second.augment.channels  # the stage's augment replaces the data's
    raw["train"]["stages"][1]["augment"] = {"flips": False}
    with pytest.raises(SpecError, match=r"train.stages\[1\].augment.flips"):
        load_spec(raw)


def test_a_stage_weighs_the_real_pairs_its_own_way(tmp_path, images):
    raw = tiny_spec(images)
    raw["data"]["pairs"] = [{"lq": str(images), "gt": str(images), "label": "noisy", "weight": 0.1},
                            {"lq": str(images), "gt": str(images), "label": "noisy", "weight": 0.3}]
    raw["train"]["stages"] = [{"target": "restorer"}, {"target": "restorer", "pairs_weight": 0.6}]
    trainer = Trainer(load_spec(raw), tmp_path / "r", progress=False)
    first, second = (trainer._stage_data(s) for s in trainer.stages)
    assert [p.weight for p in first.pairs] == [0.1, 0.3]
    assert [p.weight for p in second.pairs] == pytest.approx([0.15, 0.45])  # in proportion, summing to 0.6
    from vlir.core.train.data import build_dataset

    ds = build_dataset(second, "train", 16)
    assert ds.weights.tolist() == pytest.approx([0.4, 0.15, 0.45])  # the train folders get the rest
    raw["train"]["stages"][1]["pairs_weight"] = 1.0
    with pytest.raises(SpecError, match=r"train.stages\[1\].pairs_weight"):
        load_spec(raw)
    del raw["data"]["pairs"]
    raw["train"]["stages"][1]["pairs_weight"] = 0.5
    with pytest.raises(SpecError, match=r"train.stages\[1\].pairs_weight: the data has no pairs"):
        Trainer(load_spec(raw), tmp_path / "s", progress=False)


def test_held_out_pairs_are_validated_not_trained(tmp_path, images):
    from vlir.core.cli import main
    from vlir.core.train.data import build_dataset

    raw = tiny_spec(images, iterations=3)
    raw["data"]["pairs"] = [{"lq": str(images), "gt": str(images), "label": "blurry", "weight": 0.5, "hold_out": 2}]
    trainer = Trainer(load_spec(raw), tmp_path / "r", progress=False)
    train = build_dataset(trainer.data, "train", 16).datasets[1]
    assert [a.name for a, _ in train.pairs] == [f"img{i:02d}.png" for i in range(4)]
    held = trainer.held_data
    assert [a.name for a, _ in held.pairs] == ["img04.png", "img05.png"]
    assert held.index == 1 and held.label == "blurry"  # labelled in the run's classes (noisy, blurry)
    trainer.fit()
    rows = [json.loads(x) for x in (tmp_path / "r" / "log.jsonl").read_text().splitlines()]
    val = [x for x in rows if x["kind"] == "val"][-1]
    assert {"psnr", "psnr/noisy", "held/psnr", "held/psnr/blurry"} <= val.keys()
    assert val["held/input_psnr"] == 100.0 and val["input_psnr"] < 40  # the held items are the pairs (LQ = GT)
    # vlir eval scores the same split
    ev = tmp_path / "eval"
    assert main(["eval", str(tmp_path / "r" / "pipeline"), "--data", str(images), "--gt", str(images),
                 "--label", "blurry", "--held-out", "2", "--out", str(ev), "--quiet"]) == 0
    res = json.loads((ev / "results.json").read_text())
    assert res["overall"]["n"] == 2
    raw["data"]["pairs"][0]["hold_out"] = 6
    with pytest.raises(SpecError, match=r"data.pairs\[0\].hold_out: cannot hold out 6 of the 6"):
        Trainer(load_spec(raw), tmp_path / "s", progress=False).fit()


def test_cli_train_then_eval_writes_a_report(tmp_path, images):
    from vlir.core.cli import main

    out = tmp_path / "run"
    args = ["train", str(ROOT / "specs" / "tiny-smoke.yaml"), "--out", str(out), "--quiet",
            "--set", f"data.train={images}", "--set", f"data.val={images}",
            "--set", "train.stages.0.iterations=2", "--set", "train.stages.1.iterations=3",
            "--set", "train.val_every=3", "--set", "data.val_size=32"]
    assert main(args) == 0
    assert (out / "pipeline" / "spec.yaml").is_file() and (out / "run.yaml").is_file()
    assert main(args) == 2  # the folder has checkpoints: --resume or another --out
    assert main(["train", "--resume", str(out), "--quiet"]) == 0  # all done: re-saves the pipeline
    ev = tmp_path / "eval"
    assert main(["eval", str(out / "pipeline"), "--data", str(images), "--limit", "2", "--out", str(ev),
                 "--quiet", "--degradations", "noise:sigma=25,jpeg"]) == 0
    for name in ("results.json", "summary.csv", "per_image.csv", "report.html", "summary.png"):
        assert (ev / name).is_file(), name
    res = json.loads((ev / "results.json").read_text())
    assert set(res["per_degradation"]) == {"noisy", "jpeg-compressed"} and res["overall"]["n"] == 4
    assert res["classification"]["n"] == 4  # both words are classes of the spec's perceiver
    html = (ev / "report.html").read_text()
    crops = sorted(p.relative_to(ev).as_posix() for p in (ev / "crops").glob("*.png"))
    assert len(crops) == 12 and all(f"src='{c}'" in html for c in crops)


def test_cli_modules_do_not_import_torch():
    from conftest import imports_torch

    assert not imports_torch("vlir.core.train.cli", "vlir.core.evaluate")


def test_select_stages_keeps_named_stages_and_reports_unknown():
    from vlir.core.errors import SpecError
    from vlir.core.train.cli import select_stages

    raw = {"train": {"stages": [{"name": "perceiver", "target": "perceiver:daclip"}, {"target": "restorer"}]}}
    assert select_stages(raw, ["restorer"], "s.yaml")["train"]["stages"] == [{"target": "restorer"}]
    assert len(raw["train"]["stages"]) == 2  # the input is not modified
    with pytest.raises(SpecError, match="no stage named warmup; stages: perceiver, restorer"):
        select_stages(raw, ["warmup"], "s.yaml")
