"""The vlir command: components, inspect, spec validate/schema, --version, fast start."""
from __future__ import annotations

import json

import pytest

from conftest import run_python
from vlir.core.cli import main


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.startswith("vlir 0.1.0")


def test_components_lists_with_wildcards(capsys):
    assert main(["components", "--kind", "backbone", "naf*"]) == 0
    out = capsys.readouterr().out
    assert "nafnet" in out and "restormer" not in out and "vlir 0.1.0" in out
    assert main(["components", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["components"]
    assert {"daclip", "nafnet", "l1", "irsde", "noise"} <= {r["name"] for r in rows}


def test_inspect_nafnet_official_on_meta(capsys):
    assert main(["inspect", "backbone", "nafnet", "--preset", "sidd-width32", "--json", "--size", "64x64"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["total_params"] == 29_159_715 == info["trainable_params"]
    assert info["macs"] and info["macs"] > 0
    keys = [k for k, _ in info["state_dict"]]
    assert keys[0] == "intro.weight"


def test_inspect_with_set_and_text_output(capsys):
    assert main(["inspect", "backbone", "nafnet", "--preset", "tiny", "--set", "width=16", "--no-keys"]) == 0
    out = capsys.readouterr().out
    assert "parameters:" in out and "MACs at 256x256" in out


def test_inspect_errors_are_clear(capsys):
    assert main(["inspect", "backbone", "nafnt"]) == 2
    assert "did you mean 'nafnet'" in capsys.readouterr().err
    assert main(["components", "--kind", "backbone", "nafnt"]) == 0
    assert capsys.readouterr().out.strip() == "no components match 'nafnt' in kind 'backbone'; did you mean 'nafnet'?"


def test_spec_validate_and_schema(tmp_path, capsys):
    good = tmp_path / "good.yaml"
    good.write_text("backbone: {type: nafnet, preset: tiny}\nlosses:\n  - {type: l1}\n")
    assert main(["spec", "validate", str(good)]) == 0
    assert "ok" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("backbone: {type: nafnet, params: {width: abc}}\nlosses:\n  - {type: l2}\n")
    assert main(["spec", "validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "2 errors" in err and "backbone.params.width: Input should be a valid integer" in err
    assert "losses[0].type" in err
    out = tmp_path / "schema.json"
    assert main(["spec", "schema", "-o", str(out)]) == 0
    assert "backbone.nafnet" in json.loads(out.read_text())["$defs"]


def test_help_imports_no_torch():
    r = run_python("""
        import sys
        from vlir.core.cli import main
        try:
            main(["--help"])
        except SystemExit:
            pass
        print("TORCH", "torch" in sys.modules, "open_clip" in sys.modules)
    """)
    assert r.returncode == 0, r.stderr
    assert "TORCH False False" in r.stdout
