"""Plausibility bounds of classes from plain image statistics (vlir.core.plausible, benchmarks/plausible.py)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from conftest import shared_path
from vlir.core.plausible import BOUNDS, dark_channel, mean_luminance, ruled_out
from vlir.plugins.degradations.haze import Haze
from vlir.plugins.degradations.low_light import LowLight

ROOT = Path(__file__).resolve().parents[1]


def scene(seed: int = 0, size: int = 64) -> torch.Tensor:
    """A smooth colourful image with dark shadows somewhere in each 15-pixel window (as natural images have)."""
    g = torch.Generator().manual_seed(seed)
    x = F.interpolate(torch.rand(1, 3, 6, 6, generator=g) * 0.8 + 0.2, size=(size, size), mode="bilinear")
    x[:, torch.randint(0, 3, (1,), generator=g).item(), ::8, ::8] = 0.0  # a dark pixel in every 8x8 cell
    return x


def test_the_statistics_of_plain_images():
    grey = torch.full((2, 3, 20, 30), 0.3)
    torch.testing.assert_close(mean_luminance(grey), torch.tensor([0.3, 0.3]))
    torch.testing.assert_close(dark_channel(grey), torch.tensor([0.3, 0.3]))
    red = torch.zeros(1, 3, 20, 20)
    red[:, 0] = 1.0
    torch.testing.assert_close(mean_luminance(red), torch.tensor([0.299]))
    assert float(dark_channel(red)) == 0.0  # a pure colour has a black dark channel
    one = torch.zeros(1, 3, 40, 40) + 0.8
    one[:, :, 20, 20] = 0.0  # one black pixel darkens the dark channel over its 15x15 window
    assert abs(float(dark_channel(one)) - 0.8 * (1 - 15 * 15 / 1600)) < 1e-6
    assert float(dark_channel(torch.rand(1, 3, 5, 7))) >= 0  # smaller than the window


def test_bright_images_are_not_low_light_and_clear_ones_not_hazy():
    x = scene()
    assert ruled_out("low-light", x) is not None and "mean luminance" in ruled_out("low-light", x)
    assert ruled_out("hazy", x) is not None and "dark channel" in ruled_out("hazy", x)
    g = torch.Generator().manual_seed(1)
    dark = LowLight(LowLight.Params())(x, g)
    hazy = Haze(Haze.Params(beta=(1.2, 1.8)))(x, g)
    assert ruled_out("low-light", dark) is None and ruled_out("hazy", hazy) is None
    assert ruled_out("noisy", x) is None  # no bound
    assert ruled_out("low-light", x, bounds={"low-light": {}}) is None and ruled_out("low-light", x, bounds={}) is None
    low, high = BOUNDS["low-light"]["any"]
    assert low is None and 0 < high < 0.5
    low, high = BOUNDS["hazy"]["any"]
    assert high is None and 0 < low < 0.5


def test_a_saturated_reading_has_the_narrower_bound():
    grey = torch.full((1, 3, 32, 32), 0.2)
    bounds = {"low-light": {"any": (None, 0.3), "saturated": (None, 0.1)}}
    assert ruled_out("low-light", grey, 0.5, bounds) is None and ruled_out("low-light", grey, None, bounds) is None
    why = ruled_out("low-light", grey, 0.97, bounds)
    assert why is not None and "saturated severity" in why and "0.200 above 0.100" in why
    assert "saturated" not in ruled_out("low-light", grey + 0.2, 0.97, bounds)  # the wide bound says it first


def test_the_bounds_script_reads_the_training_data_of_a_spec(tmp_path):
    shared_path("data", "McMaster")
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import plausible

    out = tmp_path / "p.json"
    assert plausible.main(["--samples", "60", "--threads", "1", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["samples"] == 60 and data["stage"] == "perceiver" and set(data["classes"]) == {"low-light", "hazy"}
    light = data["classes"]["low-light"]
    assert light["any"]["items"] > 0 and light["bounds_in_code"] == {k: list(v) for k, v in BOUNDS["low-light"].items()}
    assert light["any"]["bound"][0] is None and light["any"]["bound"][1] <= light["any"]["quantiles"]["1.0"]
