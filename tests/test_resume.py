"""Resuming a run: changed specs, weights that don't fit, truncated checkpoints, logs written once,
stale temporary files, Ctrl-C / SIGTERM, and the training console."""
from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import ROOT
from test_trainer import Hook, assert_same, make_images, tiny_spec, weights
from vlir.core.io import CheckpointError
from vlir.core.spec import SpecError, load_spec
from vlir.core.train import checkpoint as ckpt
from vlir.core.train.console import Console, format_val
from vlir.core.train.trainer import Trainer


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return make_images(tmp_path_factory.mktemp("clean"))


class Killed(Exception):
    pass


def kill_at(n: int):
    def die(trainer, step, logs):
        if step == n:
            raise Killed()
    return die


def rows(run: Path, kind: str = "train") -> list[int]:
    return [r["step"] for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if r["kind"] == kind]


def has_row(run: Path, kind: str, step: int) -> bool:
    """Whether ``log.jsonl`` (being written by another process) has that row."""
    try:
        return step in rows(run, kind)
    except (OSError, ValueError):
        return False


def stopped_run(images: Path, out: Path, **train) -> dict:
    """A run of 6 steps stopped after 3 (checkpoint at step 3); returns its raw spec."""
    raw = tiny_spec(images, **train)
    Trainer(load_spec({**raw, "train": {**raw["train"], "max_steps_this_run": 3}}), out, progress=False).fit()
    assert [s for s, _ in ckpt.list_checkpoints(out / "checkpoints")] == [3]
    return raw


# -- a changed spec ------------------------------------------------------------------------------
def test_a_changed_spec_is_refused_naming_the_fields(tmp_path, images, capsys):
    from vlir.core.cli import main

    out = tmp_path / "run"
    raw = stopped_run(images, out)
    run_yaml = (out / "run.yaml").read_text()
    log_before = (out / "log.jsonl").read_text()
    changed = {**raw, "train": {**raw["train"], "lr": 5e-3}, "data": {**raw["data"], "patch_size": 24}}
    with pytest.raises(SpecError) as e:
        Trainer(load_spec(changed), out, resume=out, progress=False)
    text = str(e.value)
    assert "the spec differs from the checkpoint's" in text and "--allow-spec-change" in text
    assert "train.lr: 0.001 in the checkpoint's spec, 0.005 now" in text and "data.patch_size: 32" in text
    assert "max_steps_this_run" not in text  # how long a run goes on is no change of the spec
    assert main(["train", "--resume", str(out), "--quiet", "--set", "train.lr=0.005"]) == 2
    err = capsys.readouterr().err
    assert "train.lr: 0.001 in the checkpoint's spec, 0.005 now" in err and "Traceback" not in err
    assert (out / "run.yaml").read_text() == run_yaml and (out / "log.jsonl").read_text() == log_before
    # the run's own spec resumes; with --allow-spec-change the new values are used, logged and kept
    assert main(["train", "--resume", str(out), "--quiet", "--allow-spec-change", "--set", "train.lr=0.005"]) == 0
    change = [r for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if r["kind"] == "spec_change"]
    assert len(change) == 1 and change[0]["step"] == 3
    assert change[0]["changes"] == [{"path": "train.lr", "was": "0.001", "now": "0.005"}]
    assert yaml.safe_load((out / "run.yaml").read_text())["train"]["lr"] == 0.005
    assert main(["train", str(ROOT / "specs" / "tiny-smoke.yaml"), "--allow-spec-change", "--out",
                 str(tmp_path / "x")]) == 2  # only with --resume


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "specs").glob("*.yaml")))
def test_a_run_resumes_from_its_own_run_yaml_unchanged(name):
    """run.yaml (``to_yaml``) reads back as the same spec: explicit nulls such as daclip-unet's
    ``train.grad_clip: null`` (no clipping) are kept, not replaced by the default on resume."""
    from vlir.core.train.resume import spec_changes

    written = load_spec(ROOT / "specs" / name).to_yaml()
    assert spec_changes(written, load_spec(yaml.safe_load(written)).to_yaml()) == []
    if name == "daclip-unet.yaml":
        assert load_spec(yaml.safe_load(written)).train.grad_clip is None


def test_weights_that_do_not_fit_name_the_tensors(tmp_path, images):
    out = tmp_path / "run"
    raw = stopped_run(images, out)
    wider = {**raw, "backbone": {**raw["backbone"], "params": {"width": 16}}}
    with pytest.raises(CheckpointError) as e:
        Trainer(load_spec(wider), out, resume=out, progress=False, allow_spec_change=True)
    text = str(e.value)
    assert "do not fit the modules this spec builds" in text and "size mismatch" not in text
    assert "\n  backbone.intro.weight: checkpoint (8, 3, 3, 3), model (16, 3, 3, 3)\n" in text
    assert text.rstrip().endswith("more")  # the first ten tensors, then how many more
    deeper = {**raw, "backbone": {**raw["backbone"], "params": {"middle_blk_num": 2}}}
    with pytest.raises(CheckpointError, match=r"backbone\.middle_blks\.1\.[\w.]+: not in the checkpoint"):
        Trainer(load_spec(deeper), out, resume=out, progress=False, allow_spec_change=True)


# -- a truncated checkpoint, logs, temporary files ------------------------------------------------
def test_a_truncated_newest_checkpoint_falls_back_and_logs_are_written_once(tmp_path, images, caplog):
    spec = load_spec(tiny_spec(images, save_every=2, log_every=1, keep_checkpoints=5))
    full = Trainer(spec, tmp_path / "full", progress=False).fit()
    run = tmp_path / "run"
    with Hook(kill_at(6)), pytest.raises(Killed):  # dies in step 6, after the rows of step 5
        Trainer(spec, run, progress=False).fit()
    assert rows(run) == [1, 2, 3, 4, 5] and rows(run, "val") == [3]
    newest = run / "checkpoints" / "step_00000004.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # a copy cut short
    with pytest.raises(CheckpointError) as e:
        Trainer(spec, run, resume=newest, progress=False)  # a file named explicitly: no fallback
    assert "step_00000004.pt: not a readable checkpoint" in str(e.value) and "truncated" in str(e.value)
    assert "weights_only" not in str(e.value) and "central directory" in str(e.value)
    # hidden temporary files of writes cut short (SIGKILL, power loss) in the run's folders
    stale = [run / ".run.yaml.k3j2.tmp.yaml", run / "checkpoints" / ".step_00000006.pt.x1y2.tmp.pt",
             run / "pipeline" / ".backbone.safetensors.q9.tmp.safetensors"]
    for p in stale:
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(b"")
    keep = run / "checkpoints" / "notes.tmp"
    keep.write_text("mine")
    with caplog.at_level(logging.INFO, logger="vlir.train"):
        trainer = Trainer(spec, run, resume=run, progress=False)
        assert trainer.resumed_from.name == "step_00000002.pt" and trainer.step == 2
        out = trainer.fit()
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("skipping" in m and "step_00000004.pt" in m and "resuming from step_00000002.pt" in m for m in warned)
    assert not any("weights_only" in m for m in warned)
    assert not any(p.exists() for p in stale) and keep.read_text() == "mine"
    assert_same(weights(full), weights(out))
    assert rows(run) == rows(tmp_path / "full") == [1, 2, 3, 4, 5, 6]  # steps 3-5 not written twice
    assert rows(run, "val") == [3, 6]


def test_no_readable_checkpoint_lists_them(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (folder / "step_00000002.pt").write_bytes(b"")
    (folder / "step_00000004.pt").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(CheckpointError) as e:
        ckpt.load_newest(tmp_path)
    text = str(e.value)
    assert "no readable checkpoint" in text and "step_00000002.pt: empty file" in text
    assert "step_00000004.pt: not a readable checkpoint" in text and "weights_only" not in text


# -- Ctrl-C and SIGTERM -------------------------------------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_checkpoints_and_stops(tmp_path, images, sig):
    spec = load_spec(tiny_spec(images, iterations=4, save_every=100, ema=0.5))
    full = Trainer(spec, tmp_path / "full", progress=False).fit()
    before = signal.getsignal(sig)

    def send(trainer, step, logs):
        if step == 2:
            os.kill(os.getpid(), sig)
    with Hook(send):
        trainer = Trainer(spec, tmp_path / "run", progress=False)
        assert trainer.fit() is None
    assert trainer.stop_signal == sig.name and trainer.signals.exit_code == 128 + sig
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "run" / "checkpoints")] == [2]
    assert signal.getsignal(sig) == before  # handlers are put back
    out = Trainer(spec, tmp_path / "run", resume=tmp_path / "run", progress=False).fit()
    assert_same(weights(full), weights(out))


def test_cli_sigterm_stops_with_a_checkpoint_and_plain_lines(tmp_path, images):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(tiny_spec(images, iterations=100000, log_every=1, val_every=2, save_every=100000)))
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.Popen([sys.executable, "-m", "vlir.core.cli", "train", str(spec), "--out", str(out),
                          "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=env, cwd=ROOT)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and p.poll() is None:
            if has_row(out, "val", 2):
                break
            time.sleep(0.2)
        assert p.poll() is None, p.communicate()
        p.send_signal(signal.SIGTERM)
        stdout, stderr = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 143, stderr[-3000:]
    step = ckpt.load(ckpt.resolve(out))["step"]
    assert step >= 2 and "stopped (SIGTERM)" in stderr and f"at step {step}" in stderr
    assert "\r" not in stdout  # no progress bar when stdout is no terminal
    lines = stdout.splitlines()
    assert lines[0] == "stage 1/1 restorer: 100000 steps"
    assert any(line.startswith("stage 1/1 restorer step 1/100000 (total 1): loss ") for line in lines)
    val = [line for line in lines if line.startswith("validation at step 2: PSNR ")]
    assert len(val) == 1 and "dB (input " in val[0] and "; blurry " in val[0] and ", noisy " in val[0]


# -- the console ---------------------------------------------------------------------------------
class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_console_bar_on_a_terminal_lines_elsewhere():
    values = {"psnr": 27.314, "input_psnr": 22.1, "psnr/noisy": 25.9, "psnr/blurry": 28.72}
    assert format_val(values) == "PSNR 27.31 dB (input 22.10 dB); blurry 28.72, noisy 25.90"
    assert format_val({"loss": 0.5, "accuracy": 0.75}) == "accuracy 0.75, loss 0.5"
    term, pipe = Terminal(), io.StringIO()
    for stream in (term, pipe):
        c = Console("auto", stream)
        c.start_stage("stage 1/1 restorer", 3, 0)
        for s in (1, 2, 3):
            c.step({"loss": 0.1, "lr": 1e-3})
            c.train(s, s, 3, {"loss": 0.1, "lr": 1e-3, "steps_per_s": 2.0})
        c.validation(3, values)
        c.end_stage()
    assert Console("auto", term).mode == "bar" and "\r" in term.getvalue()
    assert "validation at step 3: PSNR 27.31 dB" in term.getvalue()
    assert Console("auto", pipe).mode == "lines" and "\r" not in pipe.getvalue()
    assert pipe.getvalue().splitlines() == [
        "stage 1/1 restorer: 3 steps",
        *[f"stage 1/1 restorer step {s}/3 (total {s}): loss 0.1, lr 0.001, 2 steps/s" for s in (1, 2, 3)],
        "validation at step 3: PSNR 27.31 dB (input 22.10 dB); blurry 28.72, noisy 25.90"]
    quiet = io.StringIO()
    c = Console(False, quiet)
    c.start_stage("s", 1, 0)
    c.validation(1, values)
    assert c.mode == "off" and quiet.getvalue() == ""
    with pytest.raises(ValueError, match="progress"):
        Console("loud", quiet)


def test_validation_is_printed_per_degradation(tmp_path, images, capsys):
    Trainer(load_spec(tiny_spec(images, iterations=2, val_every=2)), tmp_path / "r", progress="lines").fit()
    out = capsys.readouterr().out
    val = [line for line in out.splitlines() if line.startswith("validation at step 2: PSNR ")]
    assert len(val) == 1 and "; blurry " in val[0] and ", noisy " in val[0]
    assert torch.isfinite(torch.tensor(float(val[0].split("PSNR ")[1].split(" dB")[0])))
