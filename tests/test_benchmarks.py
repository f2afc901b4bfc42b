"""Smoke tests of the benchmark scripts (``--quick``: tiny presets, small sizes) and their helpers."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))

import _common as C  # noqa: E402
from backbones import _extrapolate  # noqa: E402


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Both scripts in quick mode, started together (one torch thread each): name -> (rc, out folder, log)."""
    out = tmp_path_factory.mktemp("bench")
    procs = {}
    for name in ("backbones", "perceivers"):
        cmd = [sys.executable, str(BENCH / f"{name}.py"), "--quick", "--threads", "1", "--device", "cpu",
               "--out", str(out / f"{name}.json")]
        procs[name] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    results = {}
    for name, p in procs.items():
        try:
            log, _ = p.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            p.kill()
            log, _ = p.communicate()
        results[name] = (p.returncode, out, log)
    return results


def _load(runs, name):
    rc, out, log = runs[name]
    assert rc == 0, f"{name}.py --quick failed ({rc}):\n{log}"
    return json.loads((out / f"{name}.json").read_text()), (out / f"{name}.md").read_text(), log


def test_backbones_quick(runs):
    res, md, stdout = _load(runs, "backbones")
    assert res["mode"] == "quick" and res["errors"] == []
    assert res["machine"]["cpu_count"] >= 1 and res["machine"]["torch"]
    assert res["machine"]["torch_num_threads"] == 1
    names = {b["name"] for b in res["backbones"]}
    assert names == {"restormer", "nafnet", "conditional_unet"}
    for b in res["backbones"]:
        assert b["preset"] == "tiny" and b["total_params"] > 0
        for s in map(str, res["settings"]["sizes"]):
            assert b["macs"][s] > 0
            cpu = b["cpu"][s]
            assert cpu["median_ms"] > 0 and cpu["n"] == 1
            assert cpu["baseline_rss_mib"] > 0 and cpu["peak_rss_mib"] >= cpu["baseline_rss_mib"] - 1  # RSS pages: ~KiB jitter
    # tiled: 128x128 in 64-pixel tiles overlapping by 8 -> 3 x 3 tiles
    (run,) = res["tiled"]["runs"]
    assert run["tiles"] == 9 and run["seconds"] > 0
    assert run["input_output_mib"] == pytest.approx(2 * 3 * 128 * 128 * 4 / C.MiB)
    assert run["untiled_estimate_mib"] > 0
    hows = [r["how"] for r in res["irsde"]["rows"]]
    assert any(h.startswith("measured") for h in hows) and any("EXTRAPOLATED" in h for h in hows)
    calls = {r["what"]: r["network_calls"] for r in res["irsde"]["rows"] if r["how"] == "measured (full sampling)"}
    assert calls == {"tiny posterior sampler": 10, "tiny fast sampler": 2}
    assert "| backbone | size |" in md and "## Tiled inference" in md and "## IR-SDE" in md
    assert md.strip() in stdout


def test_perceivers_quick(runs):
    res, md, _ = _load(runs, "perceivers")
    assert res["mode"] == "quick" and res["errors"] == []
    assert [r["name"] for r in res["references"]] == ["restormer", "nafnet"]
    assert all(r["runs"]["cpu"]["median_ms"] > 0 for r in res["references"])
    measured = [p for p in res["perceivers"] if "skipped" not in p]
    assert "daclip" in {p["name"] for p in measured}
    for p in res["perceivers"]:
        if "skipped" in p:  # only a perceiver whose module is not there yet may be skipped
            assert "not present" in p["skipped"] or "not registered" in p["skipped"]
            continue
        assert p["total_params"] > 0
        assert [r["batch"] for r in p["runs"]] == [1, 2]
        for r in p["runs"]:
            assert r["ms_per_image"] == pytest.approx(r["median_ms"] / r["batch"])
    assert "overhead vs restormer [tiny] (%)" in md


def test_extrapolate():
    # exact line t = 0.5 + 2e-9 * MACs through two points
    est, how = _extrapolate([(1e9, 2.5), (2e9, 4.5)], 4e9)
    assert est == pytest.approx(8.5) and "linear fit" in how
    est, how = _extrapolate([(1e9, 2.0)], 4e9)  # one point: proportional
    assert est == pytest.approx(8.0) and "proportional" in how
    est, how = _extrapolate([(1e9, 3.0), (2e9, 2.0)], 4e9)  # timing noise, negative slope: proportional
    assert est == pytest.approx(4.0) and "proportional" in how


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc/self/clear_refs")
def test_peak_rss_sees_an_allocation():
    with C.PeakRSS() as m:
        block = b"x" * (96 * C.MiB)  # 96 MiB, written so it is resident
        del block
    assert m.reset
    assert 90 * C.MiB <= m.delta <= 160 * C.MiB


def test_train_throughput_compares_precisions_and_layouts(tmp_path):
    out = tmp_path / "t.json"
    cmd = [sys.executable, str(BENCH / "train_throughput.py"), "--seconds", "0.01", "--warmup", "1", "--batch", "1",
           "--patch", "32", "--threads", "1", "--device", "cpu", "--configs", "nafnet",
           "--variants", "fp32,bf16+cl", "--out", str(out)]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert p.returncode == 0, p.stderr
    rows = json.loads(out.read_text())["results"]
    assert [(r["variant"], r["amp"], r["channels_last"]) for r in rows] == [("fp32", None, False),
                                                                          ("bf16+cl", "bfloat16", True)]
    assert all(r["steps"] >= 3 and r["it_per_s"] > 0 for r in rows)
    bad = subprocess.run(cmd[:-4] + ["--variants", "fp8", "--out", str(out)], capture_output=True, text=True,
                         cwd=ROOT, timeout=300)
    assert bad.returncode == 2 and "--variants: unknown fp8; expected some of: auto, fp32, bf16" in bad.stderr


def test_backbones_precisions_interleaved(tmp_path):
    out = tmp_path / "p.json"
    cmd = [sys.executable, str(BENCH / "backbones.py"), "--quick", "--threads", "1", "--device", "cpu",
           "--skip-tiled", "--skip-sde", "--backbones", "nafnet", "--precisions", "bf16+cl,fp32+cl",
           "--note", "test run", "--out", str(out)]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    res = json.loads(out.read_text())
    assert res["settings"]["precisions"] == ["fp32", "bf16+cl", "fp32+cl"] and "test run" in res["note"]
    (b,) = res["backbones"]
    rows = b["precision"]["cpu"]["32"]["variants"]
    assert rows["fp32"]["ratio_to_fp32"] == 1 and rows["fp32"]["psnr_vs_fp32_db"] is None  # identical
    assert rows["bf16+cl"]["ratio_to_fp32"] > 0 and 40 < rows["bf16+cl"]["psnr_vs_fp32_db"] < 100
    assert b["cpu"]["32"]["median_ms"] == rows["fp32"]["median_ms"]  # the plain table keeps its format
    md = out.with_suffix(".md").read_text()
    assert "## Precision and memory format" in md and "| nafnet [tiny] | 32x32 | cpu | bf16+cl |" in md
    bad = subprocess.run(cmd[:-2] + ["--precisions", "fp8", "--out", str(out)], capture_output=True, text=True,
                         cwd=ROOT, timeout=300)
    assert bad.returncode == 2 and "--precisions: unknown fp8" in bad.stderr


def test_mixed_counts_the_parts_the_perceiver_sees(tmp_path):
    from conftest import shared_path

    shared_path("data", "Val20")
    import mixed

    out = tmp_path / "m.json"
    assert mixed.main(["--limit", "1", "--size", "64", "--chain", "2", "--threads", "1", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["mixes"][0]["words"] == ["low-light", "noisy"] and len(data["mixes"][0]["seen"]) == 1
    assert 0 <= data["all_seen"] <= 1 and "all parts seen" in out.with_suffix(".md").read_text()


def test_dim_counts_what_the_pipeline_brightens(tmp_path):
    from conftest import shared_path

    shared_path("data", "Set5")
    shared_path("data", "LOL", "train")
    import dim

    out = tmp_path / "d.json"
    assert dim.main(["--limit", "2", "--factors", "0.15", "1.0", "--noise", "--lol-held", "20", "--threads", "1",
                     "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    rows = data["rows"]
    assert [(r["bar"], r["noise"], r["factor"]) for r in rows] == [
        (b, n, f) for b in (False, True) for n in (False, True) for f in (0.15, 1.0)]
    for r in rows:
        assert r["pipeline"] == "default" and r["images"] == 2 and len(r["presence"]) == 2
        assert 0 <= r["low_light"] <= r["images"] - r["unchanged"]  # a treated image is a changed one
        assert (r["change_psnr"] is None) == (r["unchanged"] == r["images"])
        if r["factor"] == 1.0:
            assert r["low_light"] == 0  # the validation photos at full brightness are not brightened
    assert [r["bar"] for r in data["lol"]] == [False, True] and data["lol"][0]["images"] == 2
    assert len(data["lol_held"]) == 2
    lol = data["lol"][0]
    assert lol["psnr"] > lol["input_psnr"]  # the low-light expert brightens real low light
    if "default" in data["costs"]:  # a dim photo treated: the costs and the bar they make
        c = data["costs"]["default"]
        assert c["false"] > 0 and c["miss"] > 0 and c["bar"] == round(c["false"] / (c["false"] + c["miss"]), 3)
    md = out.with_suffix(".md").read_text()
    assert "| default | no | 0.15 | – |" in md and "| default | yes | 0.15 | camera |" in md


def test_mild_noise_scores_restore_told_and_bilateral(tmp_path):
    from conftest import shared_path

    shared_path("data", "Set5")
    import mild_noise

    out = tmp_path / "m.json"
    assert mild_noise.main(["--limit", "1", "--threads", "1", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert [r["shot"] for r in data["rows"]] == [list(s) for s in mild_noise.SHOTS]
    for r in data["rows"]:
        assert r["images"] == 1 and len(r["presence"]) == 1 and sum(n for _, n in r["paths"]) == 1
        assert r["input"] < 40 and all(r[k] is not None for k in ("restore", "severity", "told", "bilateral"))
        assert 0 <= r["worse_than_input"] <= 1
    assert "| 0.0001-0.0003 |" in out.with_suffix(".md").read_text()
