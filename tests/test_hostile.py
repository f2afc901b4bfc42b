"""Hostile YAML: alias bombs and deep nesting are refused before anything reads the document, by
every command that reads a spec (``vlir spec validate``, ``vlir train``, ``vlir restore --pipeline``).
Memory and time of the same inputs are measured by ``benchmarks/hostile.py``."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from vlir.core import yamlsafe
from vlir.core.cli import main
from vlir.core.errors import SpecError


def alias_bomb(levels: int = 9, fan: int = 10) -> str:
    """A spec of under 1 KB whose ``experts.expert_params`` expands to ``fan ** (levels + 1)`` strings."""
    lines = ["vlir: 1", "backbone:", "  type: experts", "  params:", "    expert_params:",
             "      a0: &a0 [" + ", ".join(["x"] * fan) + "]"]
    lines += [f"      a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * fan) + "]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


def deep(levels: int = 5000, flow: str = "[]") -> str:
    return "vlir: 1\nbackbone: " + flow[0] * levels + flow[1] * levels + "\n"


def deep_mapping(levels: int = 5000) -> str:
    return "vlir: 1\nbackbone: " + "{a: " * levels + "1" + "}" * levels + "\n"


HOSTILE = {
    "alias bomb": (alias_bomb(), "aliases (*name) expand to more than 100,000 values"),
    "5000 deep lists": (deep(), "nested more than 64 levels deep"),
    "5000 deep mappings": (deep_mapping(), "nested more than 64 levels deep"),
}


@pytest.fixture(params=["C", "Python"])
def loader(request, monkeypatch):
    """Both PyYAML parsers: libyaml's (when built) and the pure-Python one."""
    if request.param == "Python":
        monkeypatch.setattr(yamlsafe, "_loader", lambda: yaml.SafeLoader)
    elif not getattr(yaml, "__with_libyaml__", False):
        pytest.skip("PyYAML without libyaml")
    return request.param


def test_the_bomb_is_small_and_would_expand():
    text = alias_bomb()
    assert len(text.encode()) < 1024
    small = alias_bomb(levels=2)  # 1000 values: accepted, and loads as the plain YAML loader does
    assert yamlsafe.load(small) == yaml.safe_load(small)


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_load_refuses_hostile_yaml(case, loader):
    text, message = HOSTILE[case]
    with pytest.raises(SpecError, match=r"spec.yaml: 1 error") as e:
        yamlsafe.load(text, source="spec.yaml")
    assert message in str(e.value)


def test_honest_specs_load_unchanged(loader):
    root = Path(__file__).resolve().parents[1]
    for path in sorted((root / "specs").glob("*.yaml")) + [root / "core" / "assets" / "default" / "spec.yaml"]:
        text = path.read_text()
        assert yamlsafe.load(text, str(path)) == yaml.safe_load(text), path
    shared = "x: &x {width: 8, enc_blk_nums: [1, 1]}\ny: *x\nz: [*x, *x]\n"  # anchors are allowed
    assert yamlsafe.load(shared) == yaml.safe_load(shared)


def test_limits_are_exact():
    ok = "a: " + "[" * yamlsafe.MAX_DEPTH + "]" * yamlsafe.MAX_DEPTH + "\n"  # the top mapping is level 1
    with pytest.raises(SpecError, match="nested more than 64"):
        yamlsafe.load(ok)
    assert yamlsafe.load("[" * yamlsafe.MAX_DEPTH + "]" * yamlsafe.MAX_DEPTH) is not None
    with pytest.raises(SpecError, match="characters, more than"):
        yamlsafe.load("#" * (yamlsafe.MAX_CHARS + 1))


def test_syntax_errors_stay_yaml_errors():
    with pytest.raises(yaml.YAMLError):
        yamlsafe.load("a: [1, 2")
    with pytest.raises(yaml.YAMLError):
        yamlsafe.load("a: *nowhere")


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_spec_validate_refuses(case, tmp_path, capsys):
    text, message = HOSTILE[case]
    spec = tmp_path / "bomb.yaml"
    spec.write_text(text)
    assert main(["spec", "validate", str(spec)]) == 2
    err = capsys.readouterr().err
    assert str(spec) in err and message in err and "Traceback" not in err


def test_train_refuses_before_any_work(tmp_path, capsys):
    spec = tmp_path / "bomb.yaml"
    spec.write_text(alias_bomb())
    assert main(["train", str(spec)]) == 2
    err = capsys.readouterr().err
    assert str(spec) in err and HOSTILE["alias bomb"][1] in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bomb.yaml"]  # no run folder


@pytest.mark.parametrize("case", ["alias bomb", "5000 deep mappings"])
def test_restore_pipeline_folder_refuses(case, tmp_path, capsys):
    from PIL import Image

    text, message = HOSTILE[case]
    folder = tmp_path / "pipeline"
    folder.mkdir()
    (folder / "spec.yaml").write_text(text)
    image = tmp_path / "in.png"
    Image.fromarray(np.full((16, 16, 3), 128, np.uint8)).save(image)
    out = tmp_path / "out"
    assert main(["restore", str(image), "--pipeline", str(folder), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(folder / "spec.yaml") in err and message in err and "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())


def test_hostile_benchmark_measures_a_refused_case(tmp_path):
    """``benchmarks/hostile.py`` runs a case in its own process and records exit code, time, RSS."""
    import json
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "hostile.json"
    r = subprocess.run([sys.executable, str(root / "benchmarks" / "hostile.py"), "--only", "5000 deep",
                        "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    (case,) = json.loads(out.read_text())["cases"]
    assert case["case"] == "5000 deep: spec validate" and case["exit_code"] == 2 and case["refused"]
    assert 0 < case["peak_rss_mib"] < 1536 and case["seconds"] > 0
    assert "nested more than 64 levels deep" in case["output_tail"][-1]


def test_png_declaring_a_size_is_a_real_png(tmp_path):
    import sys
    import warnings

    from PIL import Image

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from hostile import png_declaring

    with Image.open(png_declaring(tmp_path / "a.png", 48, 64)) as im:
        assert im.size == (64, 48) and im.mode == "RGB"
        assert np.asarray(im).max() == 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # 144 MP: that is the point
        with Image.open(png_declaring(tmp_path / "big.png", 12000, 12000)) as im:  # header only
            assert im.size == (12000, 12000)
    assert (tmp_path / "big.png").stat().st_size < 600_000
