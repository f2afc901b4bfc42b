"""benchmarks/real_sets.py: the field's test sets, one image each with the built-in model."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, shared_path

SCRIPT = ROOT / "benchmarks" / "real_sets.py"
sys.path.insert(0, str(SCRIPT.parent))

import real_sets  # noqa: E402


def _run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args, "--threads", "1"], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout)


def test_real_sets_one_image_each(tmp_path):
    data = shared_path("data")
    for ts in real_sets.SETS.values():
        shared_path("data", ts.lq)
    out = tmp_path / "real_sets.json"
    r = _run("--data", str(data), "--limit", "1", "--chain", "2", "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["pipeline"] == "default" and res["limit"] == 1 and res["chain"] == 2 and res["complete"] is True
    by_set = {s["set"]: s for s in res["sets"]}
    assert list(by_set) == list(real_sets.SETS)
    for name, s in by_set.items():
        assert s["images"] == 1
        assert sum(s["recognised_as"].values()) == 1  # one class word per image, from the perceiver
        for row in ("one_step", "chain"):
            assert s[row]["n"] == 1 and s[row]["seconds_per_image"] > 0
            assert s[row]["identical"] == 1 or 0 < s[row]["psnr"] < 100  # psnr is None when identical
            assert 0 < s[row]["ssim"] <= 1
        assert len(s["chain_paths"]) == 1
    # Rain100H is scored on Y (its RGB PSNR kept beside), the others on RGB
    rain = by_set["rain100h"]
    assert "Y" in rain["metric"] and rain["input"]["psnr_rgb"] is not None
    assert rain["input"]["psnr"] != rain["input"]["psnr_rgb"]
    assert "psnr_rgb" not in by_set["lol"]["input"]
    # baselines per set, the best one named; clean images are their own reference (no baselines)
    assert set(by_set["lol"]["baselines"]) == {"hist_eq", "gamma"}
    assert set(by_set["rain100h"]["baselines"]) == {"median", "streak_median"}
    assert set(by_set["polyu"]["baselines"]) == {"gaussian", "median", "bilateral"}
    for name in ("lol", "rain100h", "polyu"):
        b = by_set[name]["best_baseline"]
        assert by_set[name]["baselines"][b]["psnr"] == max(v["psnr"] for v in by_set[name]["baselines"].values())
    clean = by_set["cbsd68-clean"]
    assert clean["gt"] is None and clean["baselines"] == {} and clean["best_baseline"] is None
    assert clean["input"]["identical"] == 1 and clean["input"]["psnr"] is None  # inf PSNR is not averaged
    assert by_set["lol"]["papers"]["PromptIR"] == 22.68
    md = out.with_suffix(".md").read_text()
    for name in real_sets.SETS:
        assert f"| {name} | 1 |" in md
    assert "GPU-trained paper models" in md and "22.68" in md


def test_cbm3d_on_the_noise_set(tmp_path):
    pytest.importorskip("bm3d")
    data = shared_path("data")
    shared_path("data", real_sets.SETS["polyu"].lq)
    out = tmp_path / "r.json"
    r = _run("--data", str(data), "--sets", "polyu", "--limit", "1", "--chain", "1", "--cbm3d", "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    (s,) = json.loads(out.read_text())["sets"]
    assert s["cbm3d"]["n"] == 1 and s["cbm3d"]["psnr"] > 0 and s["cbm3d"]["sigma_mean"] > 0
    assert s["best_baseline"] in {"gaussian", "median", "bilateral", "cbm3d"}


def test_bad_arguments_and_missing_pairs(tmp_path):
    r = _run("--sets", "lol,sots")
    assert r.returncode == 2 and "unknown sots" in r.stderr
    r = _run("--cbm3d-sigma", "-3")
    assert r.returncode == 2 and "--cbm3d-sigma" in r.stderr
    import numpy as np
    from PIL import Image

    low, high = tmp_path / "LOL/eval15/low", tmp_path / "LOL/eval15/high"
    low.mkdir(parents=True), high.mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(low / "1.png")
    with pytest.raises(SystemExit, match="no ground truth for 1 inputs, e.g. 1.png"):
        real_sets.pairs(tmp_path, real_sets.SETS["lol"], None)
    with pytest.raises(SystemExit, match="no such folder"):
        real_sets.pairs(tmp_path, real_sets.SETS["polyu"], None)
