"""``vlir restore`` / ``vlir classify`` on a tiny saved pipeline, the default-model lookup and the
classical baselines."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vlir.core.cli import main

TINY_SPEC = {
    "perceivers": [{"type": "daclip", "preset": "tiny",
                    "params": {"degradations": ["noisy", "jpeg-compressed", "blurry", "hazy"]}}],
    "backbone": {"type": "nafnet", "preset": "tiny"},
}


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory) -> Path:
    from vlir.core.pipeline import Pipeline

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny") / "pipeline"
    Pipeline.from_spec(TINY_SPEC).save(folder)
    return folder


def _rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x / max(w - 1, 1), y / max(h - 1, 1), 0.5 + 0.0 * x], axis=-1)
    return np.clip(base + 0.05 * rng.standard_normal((h, w, 3)), 0, 1)


def _save(path: Path, arr: np.ndarray, mode: str = "RGB") -> Path:
    from PIL import Image

    im = Image.fromarray((arr * 255).round().astype(np.uint8))
    if mode != "RGB":
        im = im.convert(mode)
    im.save(path)
    return path


def _save16(path: Path, arr: np.ndarray) -> Path:
    import cv2

    assert cv2.imwrite(str(path), np.ascontiguousarray((arr[..., ::-1] * 65535).round().astype(np.uint16)))
    return path


def _leftovers(folder: Path) -> list[str]:
    """Temporary or hidden files left in a folder (atomic writes leave none)."""
    return [p.name for p in folder.rglob("*") if p.name.startswith(".") or ".tmp" in p.name]


def restore(*argv: str) -> int:
    return main(["restore", "--no-progress", *map(str, argv)])


# -- restore: formats and names ---------------------------------------------------------------
def test_restore_keeps_names_formats_and_bit_depth(tiny_pipeline, tmp_path, capsys):
    import cv2
    from PIL import Image

    src = tmp_path / "in"
    src.mkdir()
    _save(src / "plain.png", _rgb(40, 48))
    _save(src / "photo.jpg", _rgb(33, 45, 1))
    _save(src / "scan.tif", _rgb(32, 32, 2))
    _save(src / "palette.bmp", _rgb(30, 20, 3), mode="P")
    _save(src / "alpha.png", _rgb(24, 24, 4), mode="RGBA")
    _save16(src / "deep.png", _rgb(36, 28, 5))
    out = tmp_path / "out"
    rc = restore(src, "-o", out, "--pipeline", tiny_pipeline)
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["plain.png", "photo.jpg", "scan.tif", "palette.bmp", "alpha.png", "deep.png"])
    for name in names:
        with Image.open(out / name) as a, Image.open(src / name) as b:
            assert a.size == b.size, name
            assert a.format == b.format, name
    deep = cv2.imread(str(out / "deep.png"), cv2.IMREAD_UNCHANGED)
    assert deep.dtype == np.uint16 and deep.shape == (36, 28, 3)
    plain = cv2.imread(str(out / "plain.png"), cv2.IMREAD_UNCHANGED)
    assert plain.dtype == np.uint8
    # one line per image with the detected degradation and its confidence
    for name in names:
        line = next(l for l in captured.out.splitlines() if l.startswith(str(src / name)))
        word, conf = line.split(": ")[-1].split(" [")[0].split(", ")[0].rsplit(" ", 1)
        assert word in TINY_SPEC["perceivers"][0]["params"]["degradations"]
        assert 0.0 < float(conf) <= 1.0
    assert "alpha" in next(l for l in captured.out.splitlines() if "alpha.png" in l)  # conversion is reported
    assert "restored 6 of 6" in captured.err
    assert _leftovers(out) == []


def test_restore_suffix_glob_and_refusal_to_overwrite(tiny_pipeline, tmp_path, capsys):
    src = tmp_path / "imgs"
    src.mkdir()
    a = _save(src / "a.png", _rgb(20, 20))
    _save(src / "b.png", _rgb(20, 20, 1))
    before = a.read_bytes()
    rc = restore(src, "-o", src, "--pipeline", tiny_pipeline)
    err = capsys.readouterr().err
    assert rc == 2
    assert "refusing to overwrite" in err and "--suffix" in err
    assert a.read_bytes() == before
    assert sorted(p.name for p in src.iterdir()) == ["a.png", "b.png"]
    rc = restore(str(src / "*.png"), "-o", src, "--suffix", "_restored", "--pipeline", tiny_pipeline)
    assert rc == 0, capsys.readouterr().err
    assert sorted(p.name for p in src.iterdir()) == ["a.png", "a_restored.png", "b.png", "b_restored.png"]
    assert a.read_bytes() == before


def test_recursive_keeps_subfolders_and_skips_earlier_outputs(tiny_pipeline, tmp_path, capsys):
    src = tmp_path / "photos"
    (src / "sub").mkdir(parents=True)
    _save(src / "a.png", _rgb(16, 16))
    _save(src / "sub" / "b.jpg", _rgb(16, 16, 1))
    out = src / "restored"
    for again in ((), ("--overwrite",)):  # the second run must not pick up the first run's outputs
        assert restore(src, "-o", out, "-r", "--pipeline", tiny_pipeline, *again) == 0
        err = capsys.readouterr().err
        assert "restored 2 of 2" in err
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == ["a.png", "sub/b.jpg"]


def test_restore_large_image_with_tiles(tiny_pipeline, tmp_path, capsys):
    from vlir.core.data.images import read_image

    img = _save(tmp_path / "big.png", _rgb(300, 300))
    rc = restore(img, "-o", tmp_path / "out", "--tile", "128", "--overlap", "16", "--pipeline", tiny_pipeline)
    assert rc == 0, capsys.readouterr().err
    out, info = read_image(tmp_path / "out" / "big.png")
    assert out.shape == (3, 300, 300) and info["bit_depth"] == 8
    assert torch.isfinite(out).all()
    rc = restore(img, "-o", tmp_path / "out2", "--tile", "64", "--overlap", "64", "--pipeline", tiny_pipeline)
    assert rc == 2 and "--overlap must be in [0, tile)" in capsys.readouterr().err
    assert not (tmp_path / "out2").exists()


def test_restore_self_ensemble(tiny_pipeline, tmp_path, capsys):
    from vlir.core.data.images import read_image
    from vlir.core.pipeline import Pipeline

    img = _save(tmp_path / "a.png", _rgb(40, 56))
    rc = restore(img, "-o", tmp_path / "x8", "--ensemble", "--pipeline", tiny_pipeline, "--device", "cpu")
    assert rc == 0, capsys.readouterr().err
    out, _ = read_image(tmp_path / "x8" / "a.png")
    pipe = Pipeline.load(tiny_pipeline).eval()
    expected, _ = pipe.restore(read_image(img)[0][None], ensemble=True)
    assert (out - expected[0]).abs().max() <= 0.5 / 255 + 1e-6  # the same image, up to 8-bit rounding


def test_threads_option(tiny_pipeline, tmp_path, capsys):
    img = _save(tmp_path / "a.png", _rgb(16, 16))
    before = torch.get_num_threads()
    try:
        assert restore(img, "-o", tmp_path / "t1", "--threads", "1", "--pipeline", tiny_pipeline) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    capsys.readouterr()
    commands = {"restore": [str(img), "-o", str(tmp_path / "t0"), "--pipeline", str(tiny_pipeline)],
                "classify": [str(img), "--pipeline", str(tiny_pipeline)], "demo": ["-o", str(tmp_path / "d0")],
                "eval": [str(tiny_pipeline), "--out", str(tmp_path / "e0")], "train": ["--out", str(tmp_path / "r0")]}
    for command, rest in commands.items():  # every subcommand refuses before doing anything
        for bad in ("0", "-1", "two"):
            with pytest.raises(SystemExit) as e:
                main([command, *rest, "--threads", bad])
            assert e.value.code == 2
            err = capsys.readouterr().err
            assert f"vlir {command}: error: argument --threads: expected a positive number of CPU threads, " \
                   f"got '{bad}'" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "t1"]  # nothing of the refused runs


# -- restore: failures --------------------------------------------------------------------------
def test_bad_files_are_reported_and_the_rest_go_on(tiny_pipeline, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    good = _save(src / "good.png", _rgb(32, 32))
    full = _save(tmp_path / "full.png", _rgb(64, 64)).read_bytes()
    (src / "truncated.png").write_bytes(full[: len(full) // 2])
    (src / "empty.png").write_bytes(b"")
    (src / "notes.jpg").write_text("not an image at all")
    out = tmp_path / "out"
    rc = restore(src, tmp_path / "missing.png", str(tmp_path / "nomatch*.png"), "-o", out,
                 "--pipeline", tiny_pipeline)
    err = capsys.readouterr().err
    assert rc == 1
    assert f"{src / 'empty.png'}: empty file (0 bytes)" in err
    assert f"{src / 'truncated.png'}:" in err and "truncated" in err.split(f"{src / 'truncated.png'}:")[1].splitlines()[0]
    assert f"{src / 'notes.jpg'}: not a recognised image format" in err
    assert f"{tmp_path / 'missing.png'}: no such file or folder" in err
    assert "nomatch*.png: pattern matches no image files" in err
    assert "restored 1 of 6" in err and "5 failed" in err
    assert sorted(p.name for p in out.iterdir()) == [good.name]
    assert _leftovers(out) == []


def test_duplicate_output_names_fail_one_file(tiny_pipeline, tmp_path, capsys):
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        _save(tmp_path / d / "x.png", _rgb(16, 16))
    rc = restore(tmp_path / "a" / "x.png", tmp_path / "b" / "x.png", "-o", tmp_path / "out",
                 "--pipeline", tiny_pipeline)
    err = capsys.readouterr().err
    assert rc == 1
    assert f"{tmp_path / 'b' / 'x.png'}: output {tmp_path / 'out' / 'x.png'} is already the output of" in err
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["x.png"]


def test_output_folder_that_cannot_be_created(tiny_pipeline, tmp_path, capsys):
    img = _save(tmp_path / "a.png", _rgb(16, 16))
    blocker = tmp_path / "file"
    blocker.write_text("a regular file")
    rc = restore(img, "-o", blocker / "out", "--pipeline", tiny_pipeline)
    err = capsys.readouterr().err
    assert rc == 2
    assert f"cannot create output folder {blocker / 'out'}" in err
    rc = restore(img, "-o", blocker, "--pipeline", tiny_pipeline)
    assert rc == 2 and "exists and is not a folder" in capsys.readouterr().err
    assert blocker.read_text() == "a regular file"


def test_read_only_output_folder(tiny_pipeline, tmp_path, capsys):
    img = _save(tmp_path / "a.png", _rgb(16, 16))
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o500)
    try:
        try:
            (out / "probe").write_text("x")
        except OSError:
            pass
        else:
            pytest.skip("permissions do not block writes here (running as root?)")
        rc = restore(img, "-o", out, "--pipeline", tiny_pipeline)
        err = capsys.readouterr().err
        assert rc == 2
        assert f"cannot write to output folder {out}" in err
        assert list(out.iterdir()) == []
    finally:
        out.chmod(0o700)


def test_unwritable_output_format_fails_cleanly(tiny_pipeline, tmp_path, capsys):
    """A write that fails half-way leaves no file: a 16-bit PNG is fine, a folder in the way is not."""
    img = _save(tmp_path / "a.png", _rgb(16, 16))
    out = tmp_path / "out"
    (out / "a.png").mkdir(parents=True)  # a folder where the output file should go
    rc = restore(img, "-o", out, "--pipeline", tiny_pipeline, "--overwrite")
    err = capsys.readouterr().err
    assert rc == 1 and f"{img}:" in err
    assert (out / "a.png").is_dir() and _leftovers(out) == []


# -- default model --------------------------------------------------------------------------------
def test_default_model_missing_is_a_clear_error(tmp_path, monkeypatch, capsys):
    from vlir.core import default

    monkeypatch.setenv(default.ENV, str(tmp_path / "nothing"))
    with pytest.raises(default.DefaultModelMissing, match="default model is not installed"):
        default.default_dir()
    assert not default.available()
    img = _save(tmp_path / "a.png", _rgb(16, 16))
    rc = restore(img, "-o", tmp_path / "out")
    err = capsys.readouterr().err
    assert rc == 2
    assert "default model is not installed" in err and f"vlir train {default.SPEC}" in err
    assert "--pipeline" in err
    assert not (tmp_path / "out").exists()  # checked before anything is written


def test_default_model_from_env(tiny_pipeline, tmp_path, monkeypatch, capsys):
    from vlir.core import default

    monkeypatch.setenv(default.ENV, str(tiny_pipeline))
    assert default.default_dir() == tiny_pipeline
    pipe = default.load_default()
    assert not pipe.training and "daclip" in pipe.perceivers
    img = _save(tmp_path / "a.png", _rgb(16, 16))
    assert restore(img, "-o", tmp_path / "out") == 0
    assert (tmp_path / "out" / "a.png").is_file()


def test_restore_from_a_spec_file(tmp_path, capsys):
    import yaml

    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"backbone": {"type": "nafnet", "preset": "tiny"}}))
    img = _save(tmp_path / "a.png", _rgb(20, 24))
    rc = restore(img, "-o", tmp_path / "out", "--spec", spec)
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "no perceiver output" in captured.out  # no perceiver: nothing to detect, still restored
    assert (tmp_path / "out" / "a.png").is_file()


# -- classify -------------------------------------------------------------------------------------
def test_classify_json(tiny_pipeline, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    _save(src / "a.png", _rgb(40, 40))
    _save(src / "b.jpg", _rgb(24, 32, 1))
    (src / "bad.png").write_bytes(b"")
    rc = main(["classify", "--no-progress", "--json", str(src), "--pipeline", str(tiny_pipeline)])
    captured = capsys.readouterr()
    assert rc == 1  # one file failed
    doc = json.loads(captured.out)
    assert [Path(r["path"]).name for r in doc["images"]] == ["a.png", "b.jpg"]
    assert doc["failed"] == [{"path": str(src / "bad.png"), "error": "empty file (0 bytes)"}]
    words = TINY_SPEC["perceivers"][0]["params"]["degradations"]
    for r in doc["images"]:
        probs = r["probabilities"]
        assert list(probs) == words
        assert sum(probs.values()) == pytest.approx(1.0, abs=1e-4)
        assert r["degradation"] == max(probs, key=probs.get)
        assert r["confidence"] == pytest.approx(max(probs.values()))
        assert r["perceivers"]["daclip"]["degradation"] == probs


def test_classify_into_a_closed_pipe_stops_quietly(tiny_pipeline, tmp_path):
    """`vlir classify --json | head -c 100`: the reader goes away early; no traceback, exit 141."""
    import subprocess
    import sys

    img = _save(tmp_path / "a.png", _rgb(40, 40))
    p = subprocess.Popen([sys.executable, "-m", "vlir.core.cli", "classify", "--no-progress", "--json", str(img),
                          "--pipeline", str(tiny_pipeline), "--device", "cpu"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()  # the reader is gone before anything is written
    err = p.stderr.read().decode()
    assert p.wait(timeout=300) == 141, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_classify_text_and_no_perceivers(tiny_pipeline, tmp_path, capsys):
    import yaml

    img = _save(tmp_path / "a.png", _rgb(20, 20))
    assert main(["classify", "--no-progress", str(img), "--pipeline", str(tiny_pipeline)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{img}: ") and "(" in line
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"backbone": {"type": "nafnet", "preset": "tiny"}}))
    assert main(["classify", "--no-progress", str(img), "--spec", str(spec)]) == 2
    assert "no perceivers" in capsys.readouterr().err


def test_restore_module_imports_no_torch():
    from conftest import imports_torch

    assert not imports_torch("vlir.core.restore", "vlir.core.demo", "vlir.core.default")


# -- classical baselines --------------------------------------------------------------------------
def _demo_crop() -> torch.Tensor:
    from vlir.core.data.images import read_image
    from vlir.core.demo import demo_image

    img, _ = read_image(demo_image())
    return img[:, 64:160, 64:160]


@pytest.mark.parametrize("degradation, params", [
    ("noise", {"sigma": 25.0}),
    ("blur", {"sigma": 1.5}),
    ("low_light", {}),
    ("haze", {}),
    ("rain", {}),
])
def test_baselines_improve_psnr(degradation, params):
    from vlir.core import baselines
    from vlir.core.metrics import psnr
    from vlir.core.registry import get_registry

    gt = _demo_crop()[None]
    deg = get_registry().build("degradation", degradation, params=params)
    lq = deg(gt, generator=torch.Generator().manual_seed(0))
    before = psnr(lq, gt)
    fns = baselines.baselines_for(degradation)
    assert fns
    best = max(psnr(baselines.apply(fn, lq), gt) for fn in fns.values())
    assert best > before, (degradation, before, best)


def test_baseline_shapes_and_ranges():
    from vlir.core import baselines

    x = _demo_crop()[:, :33, :47]
    for group in baselines.BASELINES.values():
        for fn in group.values():
            y = baselines.apply(fn, x)
            assert y.shape == x.shape and y.dtype == x.dtype
            assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    with pytest.raises(ValueError, match=r"\[3, H, W\]"):
        baselines.apply(baselines.identity, torch.zeros(4, 8, 8))


# -- benchmark script -------------------------------------------------------------------------------
def _benchmark(tmp_path: Path, images: int):
    """benchmarks/default_model.py as a module, and a folder of ``images`` copies of the demo image."""
    import importlib.util
    import shutil

    from vlir.core.demo import demo_image

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("bench_default_model", root / "benchmarks" / "default_model.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    data = tmp_path / "clean"
    data.mkdir()
    for i in range(images):
        shutil.copy(demo_image(), data / f"tiger{i}.png")
    return bench, data


def test_default_model_benchmark_script(tiny_pipeline, tmp_path, capsys):
    bench, data = _benchmark(tmp_path, 1)
    out = tmp_path / "res" / "dm.json"
    rc = bench.main(["--pipeline", str(tiny_pipeline), "--data", str(data), "--degradations", "noise", "haze",
                     "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    doc = json.loads(out.read_text())
    rows = {r["degradation"]: r for r in doc["rows"]}
    assert list(rows) == ["noise", "haze", "clean"]
    assert rows["noise"]["params"] == {"sigma": 25.0} and rows["noise"]["label"] == "noisy"
    assert set(rows["noise"]["baselines"]) == {"gaussian", "median", "bilateral"}
    assert rows["noise"]["accuracy"] in (0.0, 1.0)  # "noisy" is one of the tiny perceiver's classes
    assert rows["clean"]["input"]["psnr"] is None and rows["clean"]["accuracy"] is None
    assert 0 <= doc["classification_accuracy"] <= 1 and doc["ensemble"] is False
    md = out.with_suffix(".md").read_text()
    assert "| noise | sigma=25.0 | 1 |" in md and "dark_channel_prior" in md


def test_default_model_benchmark_with_a_clean_class(tmp_path, capsys):
    """A perceiver with a "clean" class: the clean row gets an accuracy, every row counts the images
    that came back unchanged (routed to an identity), and the degraded-rows accuracy leaves clean out."""
    from vlir.core.pipeline import Pipeline

    torch.manual_seed(0)
    folder = tmp_path / "pipeline"
    # the tiny random perceiver calls the demo image "noisy" whatever its degradation: make that class
    # the identity, so that the clean row's images come back unchanged
    Pipeline.from_spec({
        "perceivers": [{"type": "daclip", "preset": "tiny", "params": {"degradations": ["noisy", "clean"]}}],
        "backbone": {"type": "experts", "params": {"expert": "nafnet", "identity": [0], "expert_params": {
            "width": 8, "enc_blk_nums": [1], "middle_blk_num": 1, "dec_blk_nums": [1]}}},
        "condition": {"vector": "probs", "tokens": False},
        "data": {"degradations": [{"type": "noise"}, {"type": "clean"}]},
    }).save(folder)
    bench, data = _benchmark(tmp_path, 2)
    out = tmp_path / "dm.json"
    assert bench.main(["--pipeline", str(folder), "--data", str(data), "--out", str(out), "--no-baselines"]) == 0, \
        capsys.readouterr().err
    doc = json.loads(out.read_text())
    rows = {r["degradation"]: r for r in doc["rows"]}
    assert list(rows) == ["noise", "clean"]  # the trained "clean" type is the clean row, not a second one
    clean, noise = rows["clean"], rows["noise"]
    assert clean["predicted"] == {"noisy": 2} and noise["predicted"] == {"noisy": 2}
    assert clean["label"] == "clean" and clean["accuracy"] == 0.0
    assert clean["unchanged"] == 2 and clean["model"]["psnr"] is None  # identical: no finite PSNR
    assert noise["unchanged"] == 2 and noise["model"] == noise["input"]  # returned as they came
    assert doc["classification_accuracy"] == noise["accuracy"] == 1.0
    md = out.with_suffix(".md").read_text()
    assert "| clean | none | 2 | identical | identical |" in md
    assert f"| noise | sigma=25.0 | 2 | {noise['input']['psnr']:.2f} / {noise['input']['ssim']:.4f} | " \
           f"{noise['model']['psnr']:.2f} / {noise['model']['ssim']:.4f}<br>2 of 2 unchanged |" in md
