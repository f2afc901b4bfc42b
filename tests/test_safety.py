"""Failure behaviour of the commands: each test feeds one bad input or fault and checks the exit
code, the message and that nothing was lost or left behind (issues 20 and 21)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from vlir.core import metrics
from vlir.core.cli import COMMANDS, Command, apply_sets, main, parse_set, resolve_device
from vlir.core.errors import CLIError, SpecError, Terminated, UserError
from vlir.core.inference import default_overlap
from vlir.core.io import CheckpointError, atomic_path, load_checkpoint, remove_stale_temp

NAFNET = {"backbone": {"type": "nafnet", "preset": "tiny"}}  # multi-pass tiles on a 4-pixel grid
RESTORMER = "backbone: {type: restormer, preset: tiny}\n"  # multi-pass tiles on an 8-pixel grid


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> Path:
    from vlir.core.pipeline import Pipeline

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("safety") / "pipeline"
    Pipeline.from_spec(NAFNET).save(folder)
    return folder


def _png(path: Path, h: int, w: int, seed: int = 0) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    arr = (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)
    Image.fromarray(arr).save(path)
    return path


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.startswith(".") or ".tmp" in p.name)


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def restore(*argv) -> int:
    return main(["restore", "--no-progress", *map(str, argv)])


# -- inference: one overlap rule -------------------------------------------------------------------
def test_overlap_rule():
    assert [default_overlap(t) for t in (8, 32, 100, 128, 1024)] == [2, 8, 25, 32, 32]
    assert default_overlap(32, unit=16) == 16  # a quarter tile rounded up to the model's grid
    assert default_overlap(16, unit=16) == 0  # a one-unit tile cannot overlap on the grid
    assert default_overlap(24, unit=8) == 8


@pytest.mark.parametrize("tile", ["8", "12", "32"])
def test_eval_with_a_tile_smaller_than_the_image(tmp_path, tile, capsys):
    """Restormer tiles on an 8-pixel grid: a quarter of --tile 12 rounded up to 8 was the whole
    tile ("overlap must be in [0, tile=8)"); now the rule fits the overlap to the grid."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(RESTORMER)
    _png(tmp_path / "data" / "a.png", 40, 44)
    out = tmp_path / "ev"
    rc = main(["eval", str(spec), "--data", str(tmp_path / "data"), "--degradations", "noise", "--tile", tile,
               "--out", str(out), "--quiet"])
    assert rc == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    assert results["tile"] == int(tile) and results["overall"]["n"] == 1 and results["overall"]["psnr"] > 0


def test_overlap_that_does_not_fit_the_grid_is_a_clear_error(tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text(RESTORMER)
    img = _png(tmp_path / "a.png", 40, 44)
    assert restore(img, "-o", tmp_path / "out", "--spec", spec, "--tile", "12", "--overlap", "3") == 2
    err = capsys.readouterr().err
    assert "--overlap 3 does not fit --tile 12" in err and "8-pixel units" in err and "Traceback" not in err
    assert restore(img, "-o", tmp_path / "out", "--spec", spec, "--tile", "12", "--overlap", "12") == 2
    assert "--overlap must be in [0, tile) = [0, 12), got 12" in capsys.readouterr().err
    assert _leftovers(tmp_path / "out") == [] and not (tmp_path / "out" / "a.png").exists()


# -- metrics: one table -----------------------------------------------------------------------------
def test_validation_values_from_the_table():
    g = torch.Generator().manual_seed(0)
    gt = torch.rand(3, 3, 16, 16, generator=g)
    pred = (gt + 0.05 * torch.randn(3, 3, 16, 16, generator=g)).clamp(0, 1)
    lq = (gt + 0.2 * torch.randn(3, 3, 16, 16, generator=g)).clamp(0, 1)
    values = metrics.validation_values(pred, gt, lq)
    assert set(values) == {"psnr", "psnr_y", "input_psnr", "input_psnr_y"}
    assert torch.allclose(values["psnr"], metrics.psnr_torch(pred, gt))
    assert torch.allclose(values["input_psnr_y"], metrics.psnr_torch(lq, gt, y_channel=True))
    assert (values["psnr"] > values["input_psnr"]).all()


def test_a_new_metric_row_reaches_eval_csv_html_and_json(pipeline, tmp_path, monkeypatch):
    from vlir.core.evaluate import build_sets, evaluate, parse_degradations
    from vlir.core.pipeline import Pipeline

    def mae(img, ref, crop_border=0, y_channel=False):
        return float((img - ref).abs().mean())

    row = metrics.Metric("mae", mae, y_channel=False, higher_is_better=False, fmt=".5f", label="MAE")
    monkeypatch.setattr(metrics, "TABLE", (*metrics.TABLE, row))
    _png(tmp_path / "data" / "a.png", 24, 24)
    sets = build_sets([tmp_path / "data"], parse_degradations("noise"))
    out = tmp_path / "ev"
    results = evaluate(Pipeline.open(pipeline), sets, out, progress=False)
    (image,) = results["images"]
    assert results["overall"]["mae"] == image["mae"] > 0 and results["overall"]["input_mae"] == image["input_mae"] > 0
    for name in ("per_image.csv", "summary.csv"):
        header = (out / name).read_text().splitlines()[0].split(",")
        assert "mae" in header and "input_mae" in header
    html = (out / "report.html").read_text()
    assert metrics.Metric("sharp", lambda img: float(img.std()), False, True, ".3f", "sharpness",
                          reference=False)(torch.ones(1, 3, 8, 8), None) == 0.0  # a no-reference row
    assert "<th>input MAE</th><th>MAE</th>" in html
    assert f"{results['overall']['mae']:.5f}" in html


def test_eval_keeps_a_1x1_image_with_ssim_marked_na(pipeline, tmp_path, capsys):
    _png(tmp_path / "data" / "tiny.png", 1, 1)
    _png(tmp_path / "data" / "ok.png", 24, 24, seed=1)
    out = tmp_path / "ev"
    stale = out / f".summary.csv.{_dead_pid()}-abcd1234.tmp.csv"  # of an earlier run killed mid-write
    out.mkdir()
    stale.write_bytes(b"")
    rc = main(["eval", str(pipeline), "--data", str(tmp_path / "data"), "--degradations", "noise",
               "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "tiny.png: 1x1 pixels is too small for SSIM, SSIM-Y: n/a for this image" in err
    results = json.loads((out / "results.json").read_text())
    rows = {Path(r["path"]).name: r for r in results["images"]}
    assert set(rows) == {"tiny.png", "ok.png"}  # nothing lost
    assert rows["tiny.png"]["ssim"] is None and rows["tiny.png"]["psnr"] is not None
    assert rows["tiny.png"]["n/a"] == "SSIM SSIM-Y"
    assert results["overall"]["n"] == 2 and results["overall"]["ssim"] == pytest.approx(rows["ok.png"]["ssim"])
    assert not stale.exists() and _leftovers(out) == []


# -- commands ---------------------------------------------------------------------------------------
def test_adding_a_command_is_one_record(tmp_path, monkeypatch, capsys):
    (tmp_path / "vlir_test_hello.py").write_text(textwrap.dedent("""
        def add_hello_arguments(p):
            p.add_argument("name")

        def run_hello(args):
            print(f"hello {args.name} on {args.device} with {args.threads} threads")
            return 0
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr("vlir.core.cli.COMMANDS", [*COMMANDS, Command("hello", "vlir_test_hello", "greet",
                                                                     ("device", "threads"))])
    n = torch.get_num_threads()
    try:
        assert main(["hello", "you", "--device", "cpu", "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(n)
    assert capsys.readouterr().out.strip() == "hello you on cpu with 1 threads"


def test_shared_options_and_one_device_resolver(pipeline, tmp_path, capsys):
    from vlir.core.cli import build_parser

    subparsers = next(a for a in build_parser()._actions if a.dest == "command").choices
    for cmd in COMMANDS:
        flags = {f for action in subparsers[cmd.name]._actions for f in action.option_strings}
        assert ("--device" in flags) == ("device" in cmd.options), cmd.name
        assert ("--threads" in flags) == ("threads" in cmd.options), cmd.name
        assert ({"--pipeline", "--spec"} <= flags) == ("model" in cmd.options), cmd.name
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in {"cuda", "mps", "cpu"}
    with pytest.raises(UserError, match="'gpu0' is not a device"):
        resolve_device("gpu0")
    img = _png(tmp_path / "a.png", 16, 16)
    assert restore(img, "-o", tmp_path / "out", "--pipeline", pipeline, "--device", "gpu0") == 2
    assert "vlir restore: error: --device 'gpu0' is not a device" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["eval", str(pipeline), "--device", "cuda"]) == 2
        assert "CUDA is not available here" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_one_user_error_type_and_one_set_parser():
    from vlir.core.default import DefaultModelMissing
    from vlir.core.inference import TilingError
    from vlir.core.registry import RegistryError
    from vlir.core.restore import RestoreError

    assert CLIError is UserError
    for err in (SpecError, RegistryError, CheckpointError, RestoreError, TilingError, DefaultModelMissing):
        assert issubclass(err, UserError), err
    assert parse_set("train.stages.0.lr=0.001") == (["train", "stages", "0", "lr"], 0.001)
    assert apply_sets({"a": [{"b": 1}]}, [parse_set("a.0.b=2"), parse_set("c.d=[1, 2]")]) == {
        "a": [{"b": 2}], "c": {"d": [1, 2]}}
    with pytest.raises(SpecError, match="'3' is not an index of a list of 1"):
        apply_sets({"a": [1]}, [parse_set("a.3=0")])
    import argparse

    with pytest.raises(argparse.ArgumentTypeError, match="not valid YAML"):
        parse_set("a=[1")


# -- restore keeps existing outputs ------------------------------------------------------------------
def test_restore_never_overwrites_without_overwrite(pipeline, tmp_path, capsys):
    src, out = tmp_path / "in", tmp_path / "out"
    _png(src / "a.png", 16, 16)
    _png(src / "b.png", 16, 16, seed=1)
    assert restore(src, "-o", out, "--pipeline", pipeline) == 0
    capsys.readouterr()
    (out / "a.png").write_bytes(b"mine")  # the user's own file under an output name
    before = (out / "b.png").read_bytes()
    assert restore(src, "-o", out, "--pipeline", pipeline) == 2
    err = capsys.readouterr().err
    assert "2 output file(s) already exist and are kept" in err and f"{out / 'a.png'}" in err
    assert f"{out / 'b.png'}" in err and "--overwrite" in err and "--skip-existing" in err
    assert (out / "a.png").read_bytes() == b"mine" and (out / "b.png").read_bytes() == before

    _png(src / "c.png", 16, 16, seed=2)
    assert restore(src, "-o", out, "--pipeline", pipeline, "--skip-existing") == 0
    err = capsys.readouterr().err
    assert "restored 1 of 1 image(s)" in err and "2 kept (already there)" in err
    assert (out / "a.png").read_bytes() == b"mine" and (out / "c.png").is_file()

    assert restore(src, "-o", out, "--pipeline", pipeline, "--skip-existing") == 0
    assert "nothing to restore: every output is already in" in capsys.readouterr().err

    assert restore(src, "-o", out, "--pipeline", pipeline, "--overwrite") == 0
    assert "restored 3 of 3" in capsys.readouterr().err
    assert (out / "a.png").read_bytes()[:4] == b"\x89PNG" and _leftovers(out) == []
    with pytest.raises(SystemExit) as e:  # one or the other
        restore(src, "-o", out, "--pipeline", pipeline, "--overwrite", "--skip-existing")
    assert e.value.code == 2


# -- small ones --------------------------------------------------------------------------------------
def test_stale_temp_files_are_removed_on_the_next_run(pipeline, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    dead = out / f".a.png.{_dead_pid()}-x1y2z3w4.tmp.png"  # a write killed with SIGKILL
    live = out / f".b.png.{os.getpid()}-abcdefgh.tmp.png"  # a write still going on
    old = out / ".c.png.k3j4h5g6.tmp.png"  # older vlir's naming, two hours old
    fresh_old = out / ".d.png.q1w2e3r4.tmp.png"  # the same, just written: kept
    mine = out / ".notes.tmp"  # not vlir's
    for p in (dead, live, old, fresh_old, mine):
        p.write_bytes(b"")
    os.utime(old, (0, os.path.getmtime(old) - 7200))
    assert restore(_png(tmp_path / "a.png", 16, 16), "-o", out, "--pipeline", pipeline) == 0
    assert not dead.exists() and not old.exists()
    assert live.exists() and fresh_old.exists() and mine.exists() and (out / "a.png").is_file()
    assert remove_stale_temp(tmp_path / "missing") == []


def test_sigterm_stops_cleanly_with_143(pipeline, tmp_path, monkeypatch, capsys):
    """SIGTERM during the second image's write: the first output is kept, the unfinished one is
    removed, exit 143; SIGTERM is a KeyboardInterrupt inside (Ctrl-C handlers run)."""
    import vlir.core.data.images as images

    real = images.write_image
    calls = []

    def write_image(path, img, **kw):
        calls.append(path)
        if len(calls) == 1:
            return real(path, img, **kw)
        with atomic_path(path) as tmp:
            tmp.write_bytes(b"half an image")
            os.kill(os.getpid(), signal.SIGTERM)
            raise AssertionError("SIGTERM did not interrupt")

    monkeypatch.setattr(images, "write_image", write_image)
    src, out = tmp_path / "in", tmp_path / "out"
    _png(src / "a.png", 16, 16)
    _png(src / "b.png", 16, 16, seed=1)
    assert issubclass(Terminated, KeyboardInterrupt)
    assert restore(src, "-o", out, "--pipeline", pipeline) == 143
    assert "vlir restore: terminated (SIGTERM)" in capsys.readouterr().err
    assert (out / "a.png").read_bytes()[:4] == b"\x89PNG" and not (out / "b.png").exists()
    assert _leftovers(out) == []
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored after the command


@pytest.mark.parametrize("q", ["1000", "0", "high"])
def test_quality_is_bounded(pipeline, tmp_path, q, capsys):
    with pytest.raises(SystemExit) as e:
        restore(_png(tmp_path / "a.png", 16, 16), "-o", tmp_path / "out", "--quality", q)
    assert e.value.code == 2
    assert f"expected a JPEG/WebP quality from 1 to 100, got '{q}'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("weights", ["/dev/zero", "folder"])
def test_weights_that_are_not_a_regular_file(tmp_path, weights, capsys):
    if weights == "folder":
        weights = str(tmp_path)
    elif not Path(weights).exists():
        pytest.skip("no /dev/zero here")
    kind = "a folder" if weights == str(tmp_path) else "a device"
    with pytest.raises(CheckpointError, match=f"is {kind}, not a regular file"):
        load_checkpoint(weights)
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"backbone: {{type: nafnet, preset: tiny, weights: {weights}}}\n")
    assert main(["spec", "validate", str(spec)]) == 2
    err = capsys.readouterr().err
    assert f"backbone.weights: {weights}: is {kind}, not a regular file" in err and "no such file" not in err
    assert main(["inspect", "--weights", weights]) == 2
    assert f"is {kind}, not a regular file" in capsys.readouterr().err


def test_cpu_out_of_memory_says_to_use_tile(tmp_path):
    """A whole-image restore under an address-space limit: PyTorch's CPU allocator fails ("can't
    allocate memory"); the message says to use --tile, and with --tile the same run fits."""
    spec = tmp_path / "spec.yaml"
    spec.write_text("backbone: {type: nafnet, preset: tiny}\n")
    img = _png(tmp_path / "big.png", 1024, 1024)
    script = textwrap.dedent(f"""
        import resource, sys
        from vlir.core.cli import main
        from vlir.core.default import open_pipeline

        open_pipeline(spec={str(spec)!r})  # every module imported before the limit
        size = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmSize:")) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (size + 200 * 2**20,) * 2)
        sys.exit(main(["restore", {str(img)!r}, "--spec", {str(spec)!r}, "--no-progress", *sys.argv[1:]]))
    """)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", script, "-o", str(tmp_path / "whole")], capture_output=True,
                       text=True, env=env, timeout=300)
    assert r.returncode == 1, r.stderr
    assert "can't allocate memory" in r.stderr and "use --tile 512 (or smaller) to bound memory" in r.stderr
    assert "Traceback" not in r.stderr and list((tmp_path / "whole").iterdir()) == []
    r = subprocess.run([sys.executable, "-c", script, "-o", str(tmp_path / "tiled"), "--tile", "256"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "tiled" / "big.png").is_file()


def test_images_over_the_pixel_limit_are_refused_before_the_model_loads(pipeline, tmp_path, capsys):
    import shutil
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    big = tmp_path / "big.png"  # a few hundred bytes declaring 12000 x 12000 pixels
    big.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 12000, 12000, 8, 2, 0, 0, 0))
                    + chunk(b"IDAT", zlib.compress(bytes(1 + 3 * 12000))) + chunk(b"IEND", b""))
    broken = tmp_path / "no-weights"  # a model that would fail to load: it must not be loaded at all
    broken.mkdir()
    shutil.copy(pipeline / "spec.yaml", broken / "spec.yaml")
    rc = restore(big, "-o", tmp_path / "out", "--pipeline", broken)
    err = capsys.readouterr().err
    assert rc == 1 and "12000x12000 pixels" in err and "--max-pixels" in err
    assert "missing" not in err and not list((tmp_path / "out").glob("*.png"))
