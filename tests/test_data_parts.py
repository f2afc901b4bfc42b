"""Items say which degradations they show (``parts``: word=severity per part, in the order
applied), a mix names each of its parts, the class vocabulary expands a mix, and real pairs
(``data.pairs``) mix into training by weight."""
from __future__ import annotations

import textwrap
from collections import Counter
from pathlib import Path

import pytest
import torch

from vlir.core.classes import data_words, default_class_words, parse_parts
from vlir.core.data.datasets import PairedFolders, SyntheticDegradations, severity
from vlir.core.data.images import write_image
from vlir.core.data.pairs import FolderPairs, Weighted
from vlir.core.errors import SpecError
from vlir.core.registry import get_registry
from vlir.core.spec import load_spec, read_yaml
from vlir.core.train.data import Stream, build_dataset, class_names, collate
from vlir.core.validate import validate
from vlir.plugins.degradations.mix import Mix

ROOT = Path(__file__).resolve().parents[1]
MIX = {"type": "mix", "params": {"include": ["low-light", "noisy"], "count": 2}}


def smooth(seed: int, h: int = 40, w: int = 36) -> torch.Tensor:
    """A smooth colour image [3, H, W] in [0.2, 0.9] (so a darkening or noise shows clearly)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 4, 4, generator=g)
    img = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)[0]
    return 0.2 + 0.7 * img


def clean_folder(folder: Path, n: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        write_image(folder / f"c{i}.png", smooth(i))
    return folder


def pair_folders(root: Path, lq_names: list[str], gt_names: list[str]) -> tuple[Path, Path]:
    """``root/low`` (dark copies) and ``root/high`` (the clean images), LOL's layout."""
    (root / "low").mkdir(parents=True)
    (root / "high").mkdir(parents=True)
    for i, (a, b) in enumerate(zip(lq_names, gt_names)):
        img = smooth(100 + i)
        write_image(root / "low" / a, img * 0.15)
        write_image(root / "high" / b, img)
    for a in lq_names[len(gt_names):]:
        write_image(root / "low" / a, smooth(7) * 0.15)
    return root / "low", root / "high"


def spec_file(folder: Path, text: str) -> Path:
    path = folder / "specs" / "spec.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


# -- severity and parts of synthetic items ---------------------------------------------------------
def test_severity_is_zero_for_no_change_and_grows_with_the_change():
    x = smooth(0)
    assert severity(x, x) == 0.0
    g = torch.Generator().manual_seed(0)
    light = (x + 0.02 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    heavy = (x + 0.2 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    assert 0.0 < severity(x, light) < severity(x, heavy) < 1.0
    assert severity(x, torch.zeros_like(x)) == 1.0  # black: far below 10 dB
    assert severity(x[None], light[None]) == severity(x, light)


def test_synthetic_items_name_their_degradation_with_its_severity(tmp_path):
    ds = SyntheticDegradations(clean_folder(tmp_path / "c"), ["noise", "jpeg", "clean"], patch_size=32, seed=3)
    assert ds.classes == ds.names == ["noisy", "jpeg-compressed", "clean"]
    seen = Counter()
    for i in range(len(ds)):
        it = ds[i]
        parts = parse_parts(it["parts"])
        assert ds.classes[it["degradation"]] == it["degradation_name"]
        if it["degradation_name"] == "clean":
            assert it["parts"] == "" and torch.equal(it["lq"], it["gt"])
        else:
            assert list(parts) == [it["degradation_name"]]
            (s,) = parts.values()
            assert 0.0 < s <= 1.0
            assert s == pytest.approx(severity(it["gt"], it["lq"]), abs=1e-4)  # 4 decimals in the string
        seen[it["degradation_name"]] += 1
    assert seen == {"noisy": 3, "jpeg-compressed": 3, "clean": 3}
    a, b = ds[4], ds[4]  # deterministic
    assert a["parts"] == b["parts"] and torch.equal(a["lq"], b["lq"])


# -- mix -------------------------------------------------------------------------------------------
def test_compose_steps_gives_compose_output_and_each_part():
    m = Mix(include=["low-light", "noisy", "jpeg-compressed"], count=(2, 3))
    x = torch.stack([smooth(i, 32, 32) for i in range(4)])
    out, labels = m.compose(x, torch.Generator().manual_seed(5))
    out2, steps = m.compose_steps(x, torch.Generator().manual_seed(5))
    assert torch.equal(out, out2) and torch.equal(m(x, torch.Generator().manual_seed(5)), out)
    assert [[w for w, _ in s] for s in steps] == labels
    for i, s in enumerate(steps):
        assert torch.allclose(s[-1][1][0], out[i])  # the last step is the output


def test_mix_items_list_each_part_in_physical_order_and_are_labelled_by_the_most_severe(tmp_path):
    ds = SyntheticDegradations(clean_folder(tmp_path / "c"), ["noise", MIX], patch_size=32, seed=1, length=12)
    assert ds.names == ["noisy", "mixed"]
    assert ds.classes == ["noisy", "low-light"]  # the mix's parts expanded, no duplicates
    mixed = [ds[i] for i in range(1, 12, 2)]  # balanced: odd items are the mix's
    for it in mixed:
        parts = parse_parts(it["parts"])
        assert list(parts) == ["low-light", "noisy"]  # the scene before the capture: order applied
        assert all(0.0 <= s <= 1.0 for s in parts.values())
        assert it["degradation_name"] == max(parts, key=parts.get)
        assert ds.classes[it["degradation"]] == it["degradation_name"]
        assert it["lq_caption"].endswith(": " + it["degradation_name"])
    # the darkening is the most severe part of these bright images (the noise is mild next to it)
    assert {it["degradation_name"] for it in mixed} == {"low-light"}


def test_mix_item_images_are_those_of_the_mix_for_the_same_draws(tmp_path):
    """Measuring the parts changes no image: a dataset of the mix module gives its forward's output."""
    from vlir.core.data.datasets import crop_flip, item_generator
    from vlir.core.data.images import read_image

    ds = SyntheticDegradations(clean_folder(tmp_path / "c", 1), [MIX], patch_size=32, seed=2)
    it = ds[0]
    g = item_generator(2, 0, 0)
    (gt,) = crop_flip([read_image(ds.files[0])[0]], 32, g, True)
    assert torch.equal(gt, it["gt"])
    assert torch.equal(ds.degradations[0](gt[None], generator=g)[0], it["lq"])


# -- vocabulary ------------------------------------------------------------------------------------
def test_data_words_expand_a_mix_into_its_parts():
    reg = get_registry()
    spec = {"data": {"degradations": [{"type": "noise"}, MIX]}}
    assert data_words(spec, reg) == ["noisy", "low-light"]
    assert data_words({"data": {"degradations": [{"type": "mix"}]}}, reg) == Mix.class_words({})
    assert Mix.class_words({}) == ["hazy", "rainy", "low-light", "blurry", "motion-blurry", "noisy",
                                   "jpeg-compressed"]
    # a perceiver that classifies degradations defaults to the expanded words
    spec["perceivers"] = [{"type": "daclip", "preset": "tiny"}]
    default_class_words(spec, reg)
    assert spec["perceivers"][0]["params"]["degradations"] == ["noisy", "low-light"]


def test_default_spec_words_are_unchanged():
    raw = read_yaml(ROOT / "specs" / "default.yaml")
    assert data_words(raw, get_registry()) == ["noisy", "jpeg-compressed", "blurry", "low-light", "hazy", "rainy"]


# -- paired items ----------------------------------------------------------------------------------
def test_pair_items_carry_the_label_at_its_measured_severity(tmp_path):
    lq, gt = pair_folders(tmp_path, ["1.png", "2.png"], ["1.png", "2.png"])
    ds = FolderPairs(lq, gt, "low-light", patch_size=16, index=3)
    for i in range(len(ds)):
        it = ds[i]
        (s,) = parse_parts(it["parts"]).values()
        assert list(parse_parts(it["parts"])) == ["low-light"] and it["degradation"] == 3
        assert s == pytest.approx(severity(it["gt"], it["lq"]), abs=1e-4) and s > 0.5  # dark: a strong change
    root = tmp_path / "daclip"
    for name in ("noisy", "clean"):
        for sub in ("LQ", "GT"):
            (root / name / sub).mkdir(parents=True)
        write_image(root / name / "GT" / "a.png", smooth(1))
        write_image(root / name / "LQ" / "a.png", smooth(1) if name == "clean" else (smooth(1) * 0.8))
    items = {it["degradation_name"]: it for it in PairedFolders(root)}
    assert items["clean"]["parts"] == ""
    assert list(parse_parts(items["noisy"]["parts"])) == ["noisy"]


# -- data.pairs in a spec --------------------------------------------------------------------------
def test_spec_pairs_are_read_from_the_spec_folder_and_mixed_by_weight(tmp_path):
    clean_folder(tmp_path / "clean")
    pair_folders(tmp_path / "LOL", [f"{i}.png" for i in range(3)], [f"{i}.png" for i in range(3)])
    spec = validate(spec_file(tmp_path, """
        backbone: {type: nafnet, preset: tiny}
        losses: [{type: l1}]
        data:
          train: [../clean]
          degradations: [{type: noise}, {type: mix, params: {include: [low-light, noisy], count: 2}}]
          pairs: [{lq: ../LOL/low, gt: ../LOL/high, label: low-light, weight: 0.3}]
          patch_size: 16
          batch_size: 4
        train: {iterations: 1, val_every: 10, save_every: 10}
    """))
    p = spec.data.pairs[0]
    assert Path(p.lq) == tmp_path / "specs" / ".." / "LOL" / "low"
    ds = build_dataset(spec.data, "train", 16)
    assert isinstance(ds, Weighted) and class_names(ds) == ["noisy", "low-light"]
    assert ds.weights.tolist() == pytest.approx([0.7, 0.3])
    assert len(ds) == 3 * 2 + 3  # the synthetic items and the pairs
    draws = Counter(ds.locate(i)[0] for i in range(2000))
    assert draws[1] / 2000 == pytest.approx(0.3, abs=0.04)
    pair_items = [ds[i] for i in range(len(ds)) if ds.locate(i)[0] == 1]
    assert pair_items
    for it in pair_items:
        assert it["lq"].shape == (3, 16, 16) and it["degradation_name"] == "low-light"
        assert it["degradation"] == 1 and list(parse_parts(it["parts"])) == ["low-light"]
    # synthetic and real items collate into one batch
    stream = Stream(ds)
    batch = collate([stream[i] for i in range(8)])
    assert batch["lq"].shape == (8, 3, 16, 16) and len(batch["parts"]) == 8


def test_a_stage_of_some_degradations_draws_the_pairs_of_their_classes_only(tmp_path, caplog):
    clean_folder(tmp_path / "clean")
    lol = pair_folders(tmp_path / "LOL", ["1.png"], ["1.png"])
    noisy = pair_folders(tmp_path / "SIDD", ["1.png"], ["1.png"])
    data = load_spec({
        "backbone": {"type": "nafnet", "preset": "tiny"},
        "data": {"train": [str(tmp_path / "clean")], "degradations": [{"type": "noise"}, {"type": "low_light"}],
                 "pairs": [{"lq": str(lol[0]), "gt": str(lol[1]), "label": "low-light", "weight": 0.2},
                           {"lq": str(noisy[0]), "gt": str(noisy[1]), "label": "noisy", "weight": 0.2}]},
    }).data
    assert len(build_dataset(data, "train", 16).datasets) == 3
    stage = data.model_copy(update={"degradations": data.degradations[:1]})  # as Trainer._stage_data makes it
    ds = build_dataset(stage, "train", 16)
    assert [type(d).__name__ for d in ds.datasets] == ["SyntheticDegradations", "FolderPairs"]
    assert ds.datasets[1].label == "noisy" and ds.classes == ["noisy"]
    assert "data.pairs[0]" in caplog.text and "left out" in caplog.text
    only_dark = data.model_copy(update={"degradations": data.degradations[:1], "pairs": data.pairs[:1]})
    assert isinstance(build_dataset(only_dark, "train", 16), SyntheticDegradations)


def test_a_spec_with_pairs_trains(tmp_path):
    from vlir.core.train.trainer import Trainer

    clean_folder(tmp_path / "clean")
    pair_folders(tmp_path / "rain", ["rain-1.png", "rain-2.png"], ["norain-1.png", "norain-2.png"])
    spec = load_spec({
        "backbone": {"type": "nafnet", "preset": "tiny"}, "losses": [{"type": "l1"}],
        "data": {"train": [str(tmp_path / "clean")], "degradations": [{"type": "noise"}, {"type": "rain"}],
                 "pairs": [{"lq": str(tmp_path / "rain" / "low"), "gt": str(tmp_path / "rain" / "high"),
                            "label": "rainy", "weight": 0.5}],
                 "patch_size": 16, "batch_size": 4},
        "train": {"iterations": 1, "val_every": 10, "save_every": 10, "log_every": 1},
    })
    Trainer(spec, tmp_path / "run", progress=False).fit()
    assert (tmp_path / "run" / "pipeline" / "spec.yaml").is_file()


def test_pairs_alone_and_weights_leaving_nothing_for_the_train_folders(tmp_path):
    a = pair_folders(tmp_path / "a", ["1.png"], ["1.png"])
    b = pair_folders(tmp_path / "b", ["1.png", "2.png"], ["1.png", "2.png"])
    net = {"type": "nafnet", "preset": "tiny"}
    pairs = [{"lq": str(a[0]), "gt": str(a[1]), "label": "low-light", "weight": 1},
             {"lq": str(b[0]), "gt": str(b[1]), "label": "noisy", "weight": 0.3}]
    spec = load_spec({"backbone": net, "data": {"pairs": pairs, "patch_size": 16}})
    ds = build_dataset(spec.data, "train", 16)
    assert class_names(ds) == ["low-light", "noisy"] and len(ds) == 3
    assert ds.weights.tolist() == pytest.approx([1.0, 0.3])  # in proportion: 1 / 1.3 and 0.3 / 1.3
    for it in (ds[i] for i in range(len(ds))):
        assert ds.classes[it["degradation"]] == it["degradation_name"]
    with pytest.raises(SpecError) as info:
        load_spec({"backbone": net, "data": {"train": ["x"], "pairs": [{**pairs[1], "weight": 0.6}] * 2}})
    assert any(path == "data.pairs" and "sum to 1.2" in msg for path, msg in info.value.errors)


def _errors(path: Path) -> dict[str, str]:
    with pytest.raises(SpecError) as info:
        validate(path)
    return dict(info.value.errors)


def test_unusable_pairs_are_refused_with_their_yaml_path(tmp_path):
    clean_folder(tmp_path / "clean")
    pair_folders(tmp_path / "bad", ["1.png", "2.png", "3.png"], ["1.png", "2.png"])  # 3.png has no partner
    (tmp_path / "empty" / "low").mkdir(parents=True)
    (tmp_path / "empty" / "high").mkdir(parents=True)
    pair_folders(tmp_path / "good", ["1.png"], ["1.png"])
    errs = _errors(spec_file(tmp_path, """
        backbone: {type: nafnet, preset: tiny}
        data:
          train: [../clean]
          degradations: [{type: noise}, {type: jpeg}]
          pairs:
            - {lq: ../bad/low, gt: ../bad/high, label: noisy, weight: 0.1}
            - {lq: ../missing, gt: ../bad/high, label: noisy, weight: 0.1}
            - {lq: ../empty/low, gt: ../empty/high, label: noisy, weight: 0.1}
            - {lq: ../good/low, gt: ../good/high, label: low-light, weight: 0.1}
    """))
    assert "only in LQ: 3" in errs["data.pairs[0]"]
    assert "no such folder" in errs["data.pairs[1].lq"] and "missing" in errs["data.pairs[1].lq"]
    assert "no images to pair" in errs["data.pairs[2]"]
    assert "'low-light' is not a class word" in errs["data.pairs[3].label"]
    assert "noisy, jpeg-compressed" in errs["data.pairs[3].label"]
    assert set(errs) == {"data.pairs[0]", "data.pairs[1].lq", "data.pairs[2]", "data.pairs[3].label"}


def test_a_mix_part_is_a_valid_pair_label(tmp_path):
    clean_folder(tmp_path / "clean")
    pair_folders(tmp_path / "LOL", ["1.png"], ["1.png"])
    path = spec_file(tmp_path, """
        backbone: {type: nafnet, preset: tiny}
        data:
          train: [../clean]
          degradations: [{type: noise}, {type: mix, params: {include: [low-light, noisy], count: 2}}]
          pairs: [{lq: ../LOL/low, gt: ../LOL/high, label: low-light, weight: 0.2}]
    """)
    assert validate(path).data.pairs[0].label == "low-light"
