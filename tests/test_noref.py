"""No-reference quality: NIQE equal to BasicSR's, the noise and sharpness estimates on known
inputs, and ``vlir eval --no-reference`` on real photos without ground truth."""
from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT, shared_path
from vlir.core import noref
from vlir.core.data.images import read_image

DEMO = ROOT / "core" / "assets" / "demo.png"  # a real photo (256x256), shipped with vlir


def _noisy(x: torch.Tensor, sigma: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (x + torch.randn(x.shape, generator=g) * sigma / 255).clamp(0, 1)


def _blurred(x: torch.Tensor, sigma: float = 2.0) -> torch.Tensor:
    from torchvision.transforms.functional import gaussian_blur

    return gaussian_blur(x[None], 9, sigma)[0]


def _basicsr_niqe(path: Path) -> float:
    import cv2
    from basicsr.metrics.niqe import calculate_niqe

    return calculate_niqe(cv2.imread(str(path)), crop_border=0)


def test_niqe_equals_basicsr_in_every_input_form():
    x, _ = read_image(DEMO)
    ref = _basicsr_niqe(DEMO)
    from PIL import Image

    pil = Image.open(DEMO).convert("RGB")
    u8 = np.asarray(pil)
    forms = {"PIL": pil, "tensor": x, "batch": x[None], "uint8": u8, "uint16": u8.astype(np.uint16) * 257,
             "float32": u8.astype(np.float32) / 255, "float64": u8 / 255.0, "half": x.half()}
    for name, img in forms.items():
        assert noref.niqe(img) == pytest.approx(ref, rel=1e-12, abs=1e-12), name
    # grey counts as three equal channels
    grey = u8[..., 1]
    assert noref.niqe(grey) == noref.niqe(np.stack([grey] * 3, -1))


def test_float_images_are_quantised_as_basicsr_tensor2img():
    from basicsr.utils.img_util import tensor2img

    x = torch.rand(3, 40, 50, generator=torch.Generator().manual_seed(0)) * 1.1 - 0.05  # overshoot is clipped
    assert np.array_equal(noref.rgb8(x), tensor2img(x, rgb2bgr=True, min_max=(0, 1))[..., ::-1])


@pytest.mark.parametrize("name", ["RNI15/Audrey_Hepburn.jpg", "RNI15/Dog.png", "Set5/baby_GT.bmp"])
def test_niqe_equals_basicsr_on_real_photos(name):
    path = shared_path("data", *name.split("/"))
    x, _ = read_image(path)
    assert noref.niqe(x) == pytest.approx(_basicsr_niqe(path), rel=1e-12)


def test_niqe_is_worse_for_blurred_and_noisy_photos():
    x, _ = read_image(DEMO)
    clean = noref.niqe(x)
    assert noref.niqe(_blurred(x)) > clean + 1
    assert noref.niqe(_noisy(x, 15)) > clean + 1
    assert noref.niqe(_noisy(x, 30)) > noref.niqe(_noisy(x, 10))


@pytest.mark.parametrize("sigma", [5.0, 15.0, 30.0])
def test_noise_sigma_of_gaussian_noise_on_grey(sigma):
    flat = torch.full((3, 128, 128), 0.5)
    assert noref.noise_sigma(flat) == 0.0
    assert noref.noise_sigma(_noisy(flat, sigma)) == pytest.approx(sigma, rel=0.03)


def test_noise_sigma_and_sharpness_on_a_photo():
    x, _ = read_image(DEMO)
    s = [noref.noise_sigma(_noisy(x, k)) for k in (0, 10, 25)]
    assert s[0] < s[1] < s[2] and s[2] == pytest.approx(25, rel=0.1)
    assert noref.noise_sigma(_blurred(x)) < s[0]  # blur removes what reads as noise
    sharp = noref.sharpness(x)
    assert noref.sharpness(_blurred(x, 1.0)) < sharp / 2 and noref.sharpness(_blurred(x, 2.0)) < sharp / 10
    assert noref.sharpness(_noisy(x, 15)) > sharp  # noise raises it: read it with noise_sigma


def test_sharpness_of_a_step_edge():
    img = np.zeros((40, 50, 3), np.uint8)
    img[:, 25:] = 255
    # Y goes from 16 to 235; the Laplacian is +-219 on the two columns beside the step, 0 elsewhere
    interior = 48
    assert noref.sharpness(img) == pytest.approx(2 * 219.0 ** 2 / interior)
    assert noref.sharpness(np.full((40, 50), 77, np.uint8)) == 0.0


def test_measure_crop_and_bad_input():
    x, _ = read_image(DEMO)
    whole, crop = noref.measure(x, crop=0), noref.measure(x, crop=200)
    assert whole["niqe"] == pytest.approx(noref.niqe(x))
    assert crop["niqe"] == pytest.approx(noref.niqe(x[:, 28:228, 28:228]))
    assert noref.measure(x, crop=4000) == whole  # a crop larger than the image is the whole image
    small = noref.measure(x[:, :100, :100])
    assert small["niqe"] is None and small["noise_sigma"] is not None  # too small for NIQE only
    with pytest.raises(noref.TooSmall, match="two whole 96x96 blocks"):
        noref.niqe(x[:, :100, :150])
    with pytest.raises(ValueError, match="divide 0-255 values by 255"):
        noref.niqe(x * 255)
    with pytest.raises(ValueError, match="finite"):
        noref.sharpness(torch.full((3, 8, 8), float("nan")))
    with pytest.raises(ValueError, match=r"tensor \[3, H, W\]"):
        noref.niqe(torch.zeros(4, 200, 200))
    with pytest.raises(ValueError, match="HxWx3"):
        noref.noise_sigma(np.zeros((8, 8, 4), np.uint8))
    with pytest.raises(ValueError, match="int32"):
        noref.noise_sigma(np.zeros((8, 8), np.int32))
    ba = noref.before_after(x, _blurred(x), crop=0)
    assert ba["input_niqe"] == whole["niqe"] and ba["sharpness"] < ba["input_sharpness"]
    assert list(ba) == [f"input_{n}" for n in noref.NAMES] + list(noref.NAMES)
    assert [m.name for m in noref.MEASURES] == ["niqe", "noise_sigma", "sharpness"]
    assert [m.higher_is_better for m in noref.MEASURES] == [False, False, True]


def _tiny_spec(tmp_path: Path) -> Path:
    import yaml

    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump({
        "perceivers": [{"type": "daclip", "preset": "tiny", "params": {"degradations": ["noisy", "blurry"]}}],
        "backbone": {"type": "nafnet", "preset": "tiny"}}))
    return spec


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    for name in ("Dog.png", "Audrey_Hepburn.jpg"):
        shutil.copy(shared_path("data", "RNI15", name), root / name)
    return root


def test_evaluate_real_photos_before_and_after(tmp_path, photos):
    from vlir.core import Pipeline
    from vlir.core.evaluate import evaluate, photo_sets

    torch.manual_seed(0)
    pipe = Pipeline.from_spec(_tiny_spec(tmp_path))
    sets = photo_sets([photos])
    assert [(s.name, len(s), s.reference) for s in sets] == [(photos.name, 2, False)]
    res = evaluate(pipe, sets, tmp_path / "ev", crops=2, crop_size=128, progress=False, noref_crop=256)
    assert res["reference"] is False and res["noref_crop"] == 256 and res["classification"] is None
    rows = res["images"]
    assert [Path(r["path"]).name for r in rows] == ["Audrey_Hepburn.jpg", "Dog.png"]
    for r in rows:  # before: the photo's own figures; after: those of its restoration
        x, _ = read_image(r["path"])
        before = noref.measure(x, crop=256)
        restored, _ = pipe.restore(x[None])
        after = noref.measure(restored.float().clamp(0, 1), crop=256)
        for n in noref.NAMES:
            assert r[f"input_{n}"] == pytest.approx(before[n]) and r[n] == pytest.approx(after[n], rel=1e-6)
        assert r["degradation"] == r["predicted"] in ("noisy", "blurry") and "psnr" not in r
    # per recognised degradation
    assert sum(v["n"] for v in res["per_degradation"].values()) == 2
    for label, v in res["per_degradation"].items():
        mine = [r["niqe"] for r in rows if r["predicted"] == label]
        assert v["niqe"] == pytest.approx(sum(mine) / len(mine))
    assert res["overall"]["input_niqe"] == pytest.approx(sum(r["input_niqe"] for r in rows) / 2)
    assert res["overall"]["psnr"] is None


def test_eval_command_no_reference_writes_niqe_per_image(tmp_path, photos):
    from vlir.core.cli import main

    out = tmp_path / "o"
    assert main(["eval", str(_tiny_spec(tmp_path)), "--data", str(photos), "--no-reference", "--out", str(out),
                 "--quiet", "--noref-crop", "256"]) == 0
    with open(out / "per_image.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and "psnr" not in rows[0]
    for r in rows:
        x, _ = read_image(r["path"])
        assert float(r["input_niqe"]) == pytest.approx(noref.measure(x, crop=256)["niqe"])
        assert float(r["niqe"]) > 0 and float(r["noise_sigma"]) >= 0 and float(r["sharpness"]) >= 0
    data = json.loads((out / "results.json").read_text())
    assert all(i["input_niqe"] and i["niqe"] for i in data["images"])
    with open(out / "summary.csv") as f:
        assert [s["scope"] for s in csv.DictReader(f)][-2:] == ["set", "all"]
    html = (out / "report.html").read_text()
    assert "No-reference quality per recognised degradation" in html
    links = re.findall(r"src='([^']+)'", html)
    assert len([x for x in links if x.startswith("crops/")]) == 4  # before and restored of each image
    assert all((out / x).is_file() for x in links)
    for r in rows:
        assert f"before: NIQE {float(r['input_niqe']):.2f}" in html and f"restored: NIQE {float(r['niqe']):.2f}" in html
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]
    with pytest.raises(SystemExit) as e:
        main(["eval", str(_tiny_spec(tmp_path)), "--data", str(photos), "--no-reference", "--noref-crop", "-1"])
    assert e.value.code == 2
    assert main(["eval", str(_tiny_spec(tmp_path)), "--data", str(tmp_path / "nowhere"), "--no-reference",
                 "--out", str(tmp_path / "p"), "--quiet"]) == 2
    assert main(["eval", str(_tiny_spec(tmp_path)), "--data", str(photos), "--noref-crop", "128",
                 "--out", str(tmp_path / "q"), "--quiet"]) == 2  # without --no-reference


@pytest.mark.slow
def test_default_model_lowers_niqe_and_noise_of_a_real_noisy_photo(tmp_path):
    from vlir.core.cli import main

    photo = tmp_path / "photos"
    photo.mkdir()
    # v2 reads 8 of RNI15's 15 photos as noisy (Frog at 1.00) and leaves Dog, which v1 denoised, as clean
    shutil.copy(shared_path("data", "RNI15", "Frog.png"), photo / "Frog.png")
    out = tmp_path / "o"
    assert main(["eval", str(ROOT / "core" / "assets" / "default"), "--data", str(photo), "--no-reference",
                 "--out", str(out), "--quiet", "--noref-crop", "256"]) == 0
    (row,) = json.loads((out / "results.json").read_text())["images"]
    assert row["predicted"] == "noisy"
    assert row["niqe"] < row["input_niqe"] - 2 and row["noise_sigma"] < row["input_noise_sigma"] - 3


def test_help_names_the_default_crop(capsys):
    from vlir.core.cli import main

    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    assert f"default: {noref.DEFAULT_CROP};" in " ".join(capsys.readouterr().out.split())


def test_photos_without_a_classifier_are_unrecognised(tmp_path):
    from vlir.core import Pipeline
    from vlir.core.evaluate import evaluate, photo_sets

    (tmp_path / "p").mkdir()
    shutil.copy(DEMO, tmp_path / "p" / "demo.png")
    (tmp_path / "p" / "broken.png").write_bytes(b"not a png")  # skipped with a warning
    torch.manual_seed(0)
    pipe = Pipeline.from_spec({"backbone": {"type": "nafnet", "preset": "tiny"}})
    res = evaluate(pipe, photo_sets([tmp_path / "p"]), tmp_path / "ev", crops=0, progress=False, noref_crop=0)
    assert list(res["per_degradation"]) == ["unrecognised"] and res["overall"]["n"] == 1
    x, _ = read_image(DEMO)
    assert res["images"][0]["input_niqe"] == pytest.approx(noref.niqe(x))  # 0: the whole image
    assert "Before / restored" not in (tmp_path / "ev" / "report.html").read_text()
    from PIL import Image

    from vlir.core.data.images import MAX_PIXELS, set_max_pixels

    Image.open(DEMO).crop((0, 0, 200, 100)).save(tmp_path / "p" / "small.png")
    set_max_pixels(200 * 100)  # demo.png (256x256) is over it: skipped when read, with a warning
    try:
        res = evaluate(pipe, photo_sets([tmp_path / "p"]), tmp_path / "ev2", crops=0, progress=False)
    finally:
        set_max_pixels(MAX_PIXELS)
    assert [Path(r["path"]).name for r in res["images"]] == ["small.png"]
    assert res["images"][0]["niqe"] is not None  # 200x100 holds two 96x96 blocks
    paired = tmp_path / "paired" / "noisy"
    for sub in ("LQ", "GT"):
        (paired / sub).mkdir(parents=True)
        shutil.copy(DEMO, paired / sub)
    from vlir.core.cli import CLIError

    with pytest.raises(CLIError, match="have a ground truth: evaluate them without --no-reference"):
        photo_sets([tmp_path / "paired"])
    (tmp_path / "bad").mkdir()
    shutil.copy(tmp_path / "p" / "broken.png", tmp_path / "bad")
    with pytest.raises(FileNotFoundError, match="no readable images"):
        photo_sets([tmp_path / "bad"])


def test_benchmark_script_writes_json_and_markdown(tmp_path, photos):
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_noref", ROOT / "benchmarks" / "noref.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "noref.json"
    assert bench.main(["--pipeline", str(_tiny_spec(tmp_path)), "--data", str(photos), "--limit", "1",
                       "--crop", "256", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    (img,) = data["images"]
    x, _ = read_image(photos / img["image"])
    assert img["input_niqe"] == pytest.approx(noref.measure(x, crop=256)["niqe"]) and img["niqe"] > 0
    assert data["overall"]["n"] == 1 and data["crop"] == 256
    assert f"| {img['image']} |" in out.with_suffix(".md").read_text()
