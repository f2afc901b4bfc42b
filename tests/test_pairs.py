"""Real LQ/GT pairs from two folders (pairing rules, labels, crops) and weighted mixtures."""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest
import torch

from vlir.core.data.images import write_image
from vlir.core.data.pairs import FolderPairs, Weighted, check_pairs, pair_files, split_pairs

SHARED = Path(os.environ.get("VLIR_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def _img(path: Path, value: float, size=(24, 20)):
    g = torch.Generator().manual_seed(int(value * 1000))
    write_image(path, (value * 0.5 + 0.5 * torch.rand(3, *size, generator=g)).clamp(0, 1))


def make(tmp: Path, lq_names, gt_names, size=(24, 20)):
    (tmp / "lq").mkdir(parents=True)
    (tmp / "gt").mkdir(parents=True)
    for i, n in enumerate(lq_names):
        _img(tmp / "lq" / n, 0.2 + 0.01 * i, size)
    for i, n in enumerate(gt_names):
        _img(tmp / "gt" / n, 0.6 + 0.01 * i, size)
    return tmp / "lq", tmp / "gt"


def test_pairs_by_name_and_by_name_without_leading_word(tmp_path):
    lq, gt = make(tmp_path / "a", ["2.png", "10.png", "1.png"], ["1.png", "10.png", "2.png"])
    assert [(a.name, b.name) for a, b in pair_files(lq, gt)] == [("1.png", "1.png"), ("2.png", "2.png"),
                                                                 ("10.png", "10.png")]
    lq, gt = make(tmp_path / "b", ["rain-1.png", "rain-2.png"], ["norain-2.png", "norain-1.png"])
    assert [(a.name, b.name) for a, b in pair_files(lq, gt)] == [("rain-1.png", "norain-1.png"),
                                                                 ("rain-2.png", "norain-2.png")]


def test_unpaired_files_are_named(tmp_path):
    lq, gt = make(tmp_path, ["1.png", "2.png", "3.png"], ["1.png", "2.png"])
    with pytest.raises(ValueError, match=r"only in LQ: 3"):
        pair_files(lq, gt)
    with pytest.raises(FileNotFoundError, match="GT folder"):
        pair_files(lq, tmp_path / "missing")


def test_folder_pairs_items_and_crops(tmp_path, caplog):
    lq, gt = make(tmp_path, ["1.png", "2.png", "3.png"], ["1.png", "2.png", "3.png"])
    _img(gt / "3.png", 0.9, size=(30, 30))  # a pair whose sizes differ is skipped
    ds = FolderPairs(lq, gt, "low-light", index=4)
    assert len(ds) == 2 and "sizes differ" in caplog.text
    item = ds[0]
    assert item["degradation_name"] == "low-light" and item["degradation"] == 4
    assert item["lq"].shape == item["gt"].shape == (3, 24, 20)
    assert item["path"].endswith("1.png") and item["gt_path"].endswith("1.png")
    crops = FolderPairs(lq, gt, "low-light", patch_size=16, seed=3)
    a, b = crops[1], crops[1]
    assert a["lq"].shape == (3, 16, 16) and torch.equal(a["lq"], b["lq"])
    # LQ and GT crops are aligned: the crop of the full LQ is found in the same place of the GT
    full = ds[1]
    found = [(y, x) for y in range(24 - 15) for x in range(20 - 15)
             if torch.equal(full["lq"][:, y:y + 16, x:x + 16], a["lq"])
             or torch.equal(full["lq"][:, y:y + 16, x:x + 16].flip(-1), a["lq"])
             or torch.equal(full["lq"][:, y:y + 16, x:x + 16].flip(-2), a["lq"])
             or torch.equal(full["lq"][:, y:y + 16, x:x + 16].flip(-1, -2), a["lq"])]
    assert found
    with pytest.raises(ValueError, match="label"):
        FolderPairs(lq, gt, "")


def test_the_last_pairs_are_held_out(tmp_path):
    names = [f"{i}.png" for i in range(1, 11)]
    lq, gt = make(tmp_path, names, names)
    pairs = pair_files(lq, gt)
    kept, held = split_pairs(pairs, 3)
    assert [a.name for a, _ in held] == ["8.png", "9.png", "10.png"] and kept + held == pairs  # name order
    assert split_pairs(pairs, 0) == (pairs, [])
    with pytest.raises(ValueError, match="cannot hold out 10 of 10"):
        split_pairs(pairs, 10)
    train = FolderPairs(lq, gt, "low-light", hold_out=3)
    val = FolderPairs(lq, gt, "low-light", hold_out=3, held=True)
    assert len(train) == 7 and len(val) == 3
    assert not {x["path"] for x in (train[i] for i in range(7))} & {x["path"] for x in (val[i] for i in range(3))}

    from types import SimpleNamespace

    spec = SimpleNamespace(lq=str(lq), gt=str(gt), label="low-light", hold_out=10)  # a data.pairs entry
    assert check_pairs([spec], None) == [("data.pairs[0].hold_out", f"cannot hold out 10 of the 10 pairs of {lq} "
                                                                       "(at least one must stay for training)")]
    spec.hold_out = 9
    assert check_pairs([spec], None) == []


def test_weighted_mixture(tmp_path):
    lq, gt = make(tmp_path / "a", ["1.png", "2.png"], ["1.png", "2.png"])
    lq2, gt2 = make(tmp_path / "b", ["x_1.png"], ["y_1.png"])
    a, b = FolderPairs(lq, gt, "low-light", index=0), FolderPairs(lq2, gt2, "rainy", index=1)
    mix = Weighted([a, b], [3, 1], length=400, seed=0)
    counts = Counter(mix.locate(i)[0] for i in range(400))
    assert 250 < counts[0] < 350 and counts[0] + counts[1] == 400
    assert mix[7]["degradation_name"] == mix[7]["degradation_name"]
    assert torch.equal(mix[7]["lq"], mix[7]["lq"])
    first = [mix.locate(i) for i in range(20)]
    mix.set_epoch(1)
    assert [mix.locate(i) for i in range(20)] != first
    with pytest.raises(ValueError, match="weights"):
        Weighted([a, b], [1], length=4)
    with pytest.raises(ValueError, match="weights"):
        Weighted([a, b], [0, 0], length=4)


@pytest.mark.skipif(not (SHARED / "data" / "LOL" / "train").is_dir(), reason="needs ../shared/data/LOL")
def test_shared_layouts_pair():
    lol = pair_files(SHARED / "data/LOL/train/low", SHARED / "data/LOL/train/high")
    assert len(lol) == 122 and all(a.name == b.name for a, b in lol)
    rain = pair_files(SHARED / "data/Rain100H/test/rainy", SHARED / "data/Rain100H/test/norain")
    assert len(rain) == 100
