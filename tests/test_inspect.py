"""``vlir inspect`` works for every registered component, and MACs print with a readable unit."""
from __future__ import annotations

import json

import pytest

from vlir.core.cli import macs_text, main
from vlir.core.registry import get_registry

ENTRIES = [(e.kind, e.name) for e in get_registry().list()]


def _preset(kind: str, name: str) -> list[str]:
    return ["--preset", "tiny"] if "tiny" in get_registry().presets(kind, name) else []


@pytest.mark.parametrize("kind,name", ENTRIES, ids=[f"{k}-{n}" for k, n in ENTRIES])
def test_inspect_every_component(kind, name, capsys):
    assert main(["inspect", kind, name, *_preset(kind, name), "--size", "32x32", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == kind and info["name"] == name
    if kind in ("perceiver", "backbone"):  # networks: weights and a counted forward
        assert info["total_params"] > 0 and info["state_dict"]
        assert info["macs"] and info["macs"] > 0, info.get("macs_error")
    elif info["macs"] is None:  # a process or a loss that needs training inputs says why
        assert info["macs_error"] and "Error" not in info["macs_error"], info["macs_error"]


@pytest.mark.parametrize("kind,name", [("perceiver", "quality_perceiver"), ("process", "irsde")])
def test_inspect_components_that_need_real_values(kind, name, capsys):
    """Construction calls ``.item()``: built on the CPU instead of the meta device, no traceback."""
    assert main(["inspect", kind, name, *_preset(kind, name), "--size", "32x32", "--no-keys"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{kind} {name}") and "parameters:" in out and "MACs at 32x32:" in out


def test_inspect_counts_data_dependent_routing(capsys):
    """Hard routing (``unique`` of the chosen experts) has no meta kernel: counted on real values."""
    assert main(["inspect", "backbone", "experts", "--preset", "tiny", "--size", "32x32", "--json"]) == 0
    experts = json.loads(capsys.readouterr().out)
    assert main(["inspect", "backbone", "nafnet", "--preset", "tiny", "--size", "32x32", "--json"]) == 0
    nafnet = json.loads(capsys.readouterr().out)
    assert experts["macs"] == nafnet["macs"]  # one image, one expert: the cost of one tiny NAFNet
    assert experts["total_params"] == 2 * nafnet["total_params"]


def test_tiny_models_show_a_unit_not_zero_g(capsys):
    assert main(["inspect", "backbone", "nafnet", "--preset", "tiny", "--size", "16x16", "--no-keys"]) == 0
    out = capsys.readouterr().out
    assert "0.00 G" not in out
    line = next(x for x in out.splitlines() if "MACs" in x)
    assert line.rstrip().endswith((" K", " M"))


@pytest.mark.parametrize("macs,text", [(0, "0"), (999, "999"), (1_000, "1.00 K"), (853_000, "853.00 K"),
                                       (13_649_536, "13.65 M"), (2_500_000_000, "2.50 G")])
def test_macs_text(macs, text):
    assert macs_text(macs) == text
