"""The evaluator: fixed evaluation sets, BasicSR metrics, classification, report files."""
from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from test_trainer import make_images
from vlir.core import Pipeline
from vlir.core.evaluate import build_sets, evaluate, match_classes, parse_degradations
from vlir.core.metrics import psnr, ssim
from vlir.core.sections import DegradationSpec


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return make_images(tmp_path_factory.mktemp("clean"), n=4)


def pipeline(classes=("noisy", "blurry", "hazy")) -> Pipeline:
    torch.manual_seed(0)
    return Pipeline.from_spec({
        "perceivers": [{"type": "daclip", "preset": "tiny", "params": {"degradations": list(classes)}}],
        "backbone": {"type": "nafnet", "preset": "tiny"}})


def test_labels_and_degradation_lists():
    assert match_classes(["noisy", "Low_Light", "jpeg"], ["low-light", "noisy"]) == \
        {"noisy": 1, "Low_Light": 0, "jpeg": None}
    degs = parse_degradations("noise:sigma=25, jpeg:quality=20 ,blur")
    assert [(d.type, d.params) for d in degs] == [("noise", {"sigma": 25}), ("jpeg", {"quality": 20}), ("blur", {})]
    import argparse

    with pytest.raises(argparse.ArgumentTypeError, match="key=value"):
        parse_degradations("noise:25")


def test_evaluation_inputs_are_fixed_by_the_seed(images):
    degs = [DegradationSpec(type="noise", params={"sigma": [10, 50]})]
    a = [it["lq"] for it in build_sets([images], degs, seed=3)[0].items()]
    b = [it["lq"] for it in build_sets([images], degs, seed=3)[0].items()]
    c = [it["lq"] for it in build_sets([images], degs, seed=4)[0].items()]
    assert len(a) == 4 and all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))
    gts = sorted(tuple(it["gt"].shape) for it in build_sets([images], degs, seed=3)[0].items())
    assert gts == [(3, 48, 48), (3, 48, 48), (3, 56, 48), (3, 56, 48)]  # whole images, not crops
    assert len(build_sets([images], degs, limit=2)[0]) == 2


def test_evaluate_metrics_classification_and_report(tmp_path, images):
    pipe = pipeline()
    degs = [DegradationSpec(type="noise", params={"sigma": 30}), DegradationSpec(type="blur"),
            DegradationSpec(type="jpeg")]
    sets = build_sets([images], degs, seed=0, limit=3)
    res = evaluate(pipe, sets, tmp_path / "ev", crop_border=2, crops=2, progress=False, name="tiny")
    assert list(res["per_degradation"]) == ["noisy", "blurry", "jpeg-compressed"]
    assert res["overall"]["n"] == 9 and all(v["n"] == 3 for v in res["per_degradation"].values())
    # metrics are BasicSR's, with the border crop, on the same fixed inputs
    first = next(sets[0].items())
    row = res["images"][0]
    assert row["input_psnr"] == pytest.approx(psnr(first["lq"], first["gt"], crop_border=2))
    assert row["input_ssim_y"] == pytest.approx(ssim(first["lq"], first["gt"], crop_border=2, y_channel=True))
    restored, _ = pipe.restore(first["lq"][None])
    assert row["psnr"] == pytest.approx(psnr(restored, first["gt"][None], crop_border=2), abs=1e-6)
    # classification: labels matched to the perceiver's words; jpeg-compressed has no class
    cls = res["classification"]
    assert cls["classes"] == ["noisy", "blurry", "hazy"] and cls["unmapped"] == ["jpeg-compressed"]
    assert [sum(r) for r in cls["matrix"]] == [3, 3, 3] and cls["n"] == 6
    correct = sum(1 for r in res["images"] if r["degradation"] in ("noisy", "blurry")
                  and r["predicted"] == r["degradation"])
    assert cls["accuracy"] == pytest.approx(correct / 6)
    assert res["speed"]["images"] == 9 and res["speed"]["images_per_second"] > 0
    # files
    ev = tmp_path / "ev"
    data = json.loads((ev / "results.json").read_text())
    assert data["overall"]["n"] == 9
    with open(ev / "per_image.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 9 and float(rows[0]["input_psnr"]) == pytest.approx(row["input_psnr"])
    with open(ev / "summary.csv") as f:
        scopes = [r["scope"] for r in csv.DictReader(f)]
    assert scopes == ["degradation"] * 3 + ["set"] * 3 + ["all"]
    from PIL import Image

    with Image.open(ev / "summary.png") as im:
        assert im.format == "PNG" and im.size[0] >= 360
    html = (ev / "report.html").read_text()
    links = re.findall(r"src='([^']+)'", html)
    assert "summary.png" in links and len([x for x in links if x.startswith("crops/")]) == 18
    assert all((ev / x).is_file() for x in links)
    assert not [p for p in ev.rglob("*") if ".tmp" in p.name]


def test_paired_folders_are_their_own_sets(tmp_path, images):
    root = tmp_path / "paired"
    for name in ("noisy", "hazy"):
        for sub in ("LQ", "GT"):
            shutil.copytree(images, root / name / sub)
    sets = build_sets([root], [], limit=3)
    assert [(s.name, s.degradation, len(s)) for s in sets] == [("paired/hazy", "hazy", 3), ("paired/noisy", "noisy", 3)]
    res = evaluate(pipeline(), sets, tmp_path / "ev", crops=0, progress=False)
    # LQ == GT here: the input scores are perfect
    assert res["per_degradation"]["hazy"]["input_ssim"] == pytest.approx(1.0)
    assert res["classification"]["unmapped"] == [] and res["classification"]["n"] == 6


def test_eval_command_on_a_spec_file(tmp_path, images):
    import yaml

    from vlir.core.cli import main

    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump({"backbone": {"type": "nafnet", "preset": "tiny"},
                                    "eval": {"data": [str(images)], "crop_border": 4, "limit": 1}}))
    assert main(["eval", str(spec), "--degradations", "noise", "--out", str(tmp_path / "o"), "--quiet"]) == 0
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    assert res["crop_border"] == 4 and res["overall"]["n"] == 1 and res["classification"] is None
    assert res["ensemble"] is False
    assert main(["eval", str(spec), "--degradations", "noise", "--out", str(tmp_path / "e"), "--quiet",
                 "--ensemble"]) == 0
    res8 = json.loads((tmp_path / "e" / "results.json").read_text())
    assert res8["ensemble"] is True and res8["overall"]["psnr"] != res["overall"]["psnr"]
    assert "self-ensemble" in (tmp_path / "e" / "report.html").read_text()
    assert main(["eval", str(spec), "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "p"),
                 "--quiet"]) == 2


def test_eval_of_real_pairs_from_two_folders(tmp_path, images, capsys):
    """`vlir eval --data LQ --gt GT --label WORD`: pairs by name (rain-N / norain-N), PSNR against the GT."""
    from vlir.core.cli import main
    from vlir.core.data.images import read_image, write_image

    lq, gt = tmp_path / "rainy", tmp_path / "norain"
    lq.mkdir()
    gt.mkdir()
    g = torch.Generator().manual_seed(0)
    for i, src in enumerate(sorted(images.iterdir())[:3]):
        clean, _ = read_image(src)
        write_image(gt / f"norain-{i}.png", clean)
        write_image(lq / f"rain-{i}.png", (clean + 0.1 * torch.rand(clean.shape, generator=g)).clamp(0, 1))
    folder = pipeline(("noisy", "rainy")).save(tmp_path / "pipe")
    rc = main(["eval", str(folder), "--data", str(lq), "--gt", str(gt), "--label", "rainy", "--out",
               str(tmp_path / "ev"), "--quiet"])
    assert rc == 0
    res = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert list(res["per_degradation"]) == ["rainy"] and res["overall"]["n"] == 3
    row = res["images"][0]
    want = psnr(read_image(lq / "rain-0.png")[0][None], read_image(gt / "norain-0.png")[0][None])
    assert row["path"].endswith("rain-0.png") and abs(row["input_psnr"] - want) < 1e-6
    assert res["classification"]["labels"] == ["rainy"]
    assert main(["eval", str(folder), "--data", str(lq), "--gt", str(gt), str(gt), "--out", str(tmp_path / "x")]) == 2
    assert "one ground-truth folder per --data folder" in capsys.readouterr().err


def test_eval_chain_restores_as_vlir_restore_does(tmp_path, images):
    """evaluate(chain=K) / `vlir eval --chain K`: step by step with the do-no-harm rules, each image's steps
    in its row; a clean image read as clean comes back bit for bit. --chain needs a steerable pipeline for
    more than one step, at least one step, and fp32."""
    from test_multilabel import rules_pipeline

    from vlir.core.chain import restore_steps
    from vlir.core.cli import main

    root = tmp_path / "paired"
    for sub in ("LQ", "GT"):
        shutil.copytree(images, root / "clean" / sub)
    sets = build_sets([root], [], limit=3)
    pipe = rules_pipeline()
    res = evaluate(pipe, sets, tmp_path / "ev", crops=0, progress=False, chain=3)
    rows = res["images"]
    assert res["chain"] == 3 and len(rows) == 3
    for row, item in zip(rows, sets[0].items()):
        _, _, paths = restore_steps(pipe, item["lq"][None], steps=3)
        assert row["steps"] == str(paths[0])
    plain = evaluate(pipe, sets, tmp_path / "plain", crops=0, progress=False)
    assert plain["chain"] is None and all("steps" not in r for r in plain["images"])
    assert "steps" in (tmp_path / "ev" / "per_image.csv").read_text().splitlines()[0]

    spec = tmp_path / "s.yaml"
    import yaml

    spec.write_text(yaml.safe_dump({"backbone": {"type": "nafnet", "preset": "tiny"}}))
    for extra in (["--chain", "2"], ["--chain", "0"], ["--chain", "1", "--precision", "bf16"]):
        assert main(["eval", str(spec), "--data", str(images), "--degradations", "noise", "--limit", "1",
                     "--out", str(tmp_path / "o"), "--quiet", *extra]) == 2
