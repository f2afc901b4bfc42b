"""``vlir spec validate`` catches what ``vlir train`` would fail on, each error with its YAML path;
one resolution path (Registry.resolve / build) with the registry passed in; saved pipelines load
without adjust hooks and without resolving what they do not build."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

from conftest import make_dist
from vlir.core import Backbone, Degradation, hookimpl
from vlir.core.cli import main
from vlir.core.errors import SpecError
from vlir.core.registry import Registry
from vlir.core.spec import load_spec
from vlir.core.validate import validate

REG = Registry(autoload=False)
TINY_NAF = "{width: 8, enc_blk_nums: [1, 1], middle_blk_num: 1, dec_blk_nums: [1, 1]}"


def spec_file(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    p = tmp_path / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(textwrap.dedent(text))
    return p


def errors_of(source, registry=REG) -> dict[str, str]:
    with pytest.raises(SpecError) as info:
        validate(source, registry)
    return dict(info.value.errors)


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "specs" / "imgs"
    folder.mkdir(parents=True)
    return folder


# -- nested params ---------------------------------------------------------------------------
def test_misspelt_degradation_param_is_named_with_a_suggestion(tmp_path):
    errs = errors_of(spec_file(tmp_path, f"""
        backbone: {{type: nafnet, params: {TINY_NAF}}}
        data:
          degradations: [{{type: jpeg}}, {{type: noise, params: {{sigmaa: 25}}}}]
    """))
    assert list(errs) == ["data.degradations[1].params.sigmaa"]
    assert "did you mean 'sigma'" in errs["data.degradations[1].params.sigmaa"]


def test_misspelt_expert_param_is_named_with_its_path(tmp_path):
    errs = errors_of(spec_file(tmp_path, """
        backbone:
          type: experts
          params: {experts: 2, expert_params: {widht: 8, enc_blk_nums: [1], dec_blk_nums: [1], middle_blk_num: 1}}
    """))
    assert "did you mean 'width'" in errs["backbone.params.expert_params.widht"]


def test_expert_override_errors_name_the_override(tmp_path):
    errs = errors_of(spec_file(tmp_path, """
        backbone:
          type: experts
          params: {experts: 2, expert_params: {width: 8, enc_blk_nums: [1], dec_blk_nums: [1], middle_blk_num: 1},
                   overrides: {1: {width: -3}}}
    """))
    assert "greater than or equal to 1" in errs["backbone.params.overrides.1.width"]


# -- references between sections ---------------------------------------------------------------
def test_loss_naming_a_missing_perceiver_role(tmp_path):
    errs = errors_of(spec_file(tmp_path, f"""
        perceivers: [{{type: daclip, preset: tiny}}]
        backbone: {{type: nafnet, params: {TINY_NAF}}}
        losses: [{{type: l1}}, {{type: clip_quality, params: {{perceiver: quality}}}}]
    """))
    assert "'quality'" in errs["losses[1].params.perceiver"] and "perceivers: daclip" in errs["losses[1].params.perceiver"]


@pytest.mark.parametrize("loss, perceivers, kind", [
    ("clip_quality", "[{type: daclip, preset: tiny}]", "quality_perceiver"),
    ("clip_quality", "[]", "quality_perceiver"),
    ("daclip_contrastive", "[{type: quality_perceiver, preset: tiny}]", "daclip"),
    ("degradation_contrastive", "[{type: quality_perceiver, preset: tiny}]", "daclip"),
])
def test_loss_reading_a_perceiver_type_the_spec_lacks(tmp_path, loss, perceivers, kind):
    """``params.perceiver: null`` reads the first perceiver of the loss's perceiver_kinds: a spec
    without one fails here, not at the first training step."""
    errs = errors_of(spec_file(tmp_path, f"""
        perceivers: {perceivers}
        backbone: {{type: nafnet, params: {TINY_NAF}}}
        losses: [{{type: l1}}, {{type: {loss}}}]
    """))
    assert list(errs) == ["losses[1]"]
    msg = errs["losses[1]"]
    assert f"reads a perceiver of type {kind}" in msg and "set losses[1].params.perceiver" in msg
    # with a perceiver of that type, or an explicit role, the wiring fits
    validate(spec_file(tmp_path, f"""
        perceivers: [{{type: daclip, preset: tiny}}, {{type: quality_perceiver, preset: tiny}}]
        backbone: {{type: nafnet, params: {TINY_NAF}}}
        losses: [{{type: {loss}}}]
    """, "ok.yaml"), REG)
    validate(spec_file(tmp_path, f"""
        perceivers: [{{type: {kind}, preset: tiny, role: mine}}, {{type: quality_perceiver, preset: tiny}}]
        backbone: {{type: nafnet, params: {TINY_NAF}}}
        losses: [{{type: {loss}, params: {{perceiver: mine}}}}]
    """, "role.yaml"), REG)


def test_loss_naming_a_builtin_perceiver_of_the_wrong_type(tmp_path):
    """An explicit role must be a perceiver the loss can read (a built-in one of another type is
    refused; a third-party perceiver may give what the loss reads, so only run time checks it)."""
    errs = errors_of(spec_file(tmp_path, f"""
        perceivers: [{{type: daclip, preset: tiny}}, {{type: quality_perceiver, preset: tiny}}]
        backbone: {{type: nafnet, params: {TINY_NAF}}}
        losses: [{{type: l1}}, {{type: clip_quality, params: {{perceiver: daclip}}}}]
    """))
    assert list(errs) == ["losses[1].params.perceiver"]
    assert "reads a perceiver of type quality_perceiver; role 'daclip' is a 'daclip' perceiver" in \
        errs["losses[1].params.perceiver"]


def test_stage_target_naming_a_missing_perceiver(tmp_path):
    errs = errors_of(spec_file(tmp_path, f"""
        perceivers: [{{type: daclip, preset: tiny}}]
        backbone: {{type: nafnet, params: {TINY_NAF}}}
        train:
          stages: [{{target: "perceiver:clip"}}, {{target: restorer, unfreeze: [clap]}}]
    """))
    assert "no perceiver for 'perceiver:clip'; perceivers: daclip" in errs["train.stages[0].target"]
    assert "'clap'" in errs["train.stages[1].unfreeze"]


def test_perceiver_class_words_must_be_the_data_labels(tmp_path):
    errs = errors_of(spec_file(tmp_path, f"""
        perceivers: [{{type: daclip, preset: tiny, params: {{degradations: [noise, jpeg, blur]}}}}]
        backbone: {{type: nafnet, params: {TINY_NAF}}}
        data:
          degradations: [{{type: noise}}, {{type: jpeg}}, {{type: blur}}]
    """))
    msg = errs["perceivers[0].params.degradations"]
    assert "noisy" in msg and "jpeg-compressed" in msg and "blurry" in msg
    # the labels themselves pass
    validate(spec_file(tmp_path, f"""
        perceivers: [{{type: daclip, preset: tiny, params: {{degradations: [noisy, jpeg-compressed, blurry]}}}}]
        backbone: {{type: nafnet, params: {TINY_NAF}}}
        data:
          degradations: [{{type: noise}}, {{type: jpeg}}, {{type: blur}}]
    """, "ok.yaml"), REG)


def paired_root(folder: Path, *words: str) -> Path:
    """DA-CLIP's layout root/<word>/{LQ,GT}/ with one (unread) pair per word."""
    for w in words:
        for side in ("LQ", "GT"):
            (folder / w / side).mkdir(parents=True)
            (folder / w / side / "0.png").write_bytes(b"")
    return folder


def test_paired_folder_words_must_be_the_perceiver_and_expert_classes(tmp_path):
    paired_root(tmp_path / "specs" / "train", "noisy", "rain")
    paired_root(tmp_path / "specs" / "val", "noisy", "hazy")
    errs = errors_of(spec_file(tmp_path, f"""
        perceivers: [{{type: daclip, preset: tiny, params: {{degradations: [noisy, rainy, jpeg-compressed]}}}}]
        backbone:
          type: experts
          params: {{expert_params: {TINY_NAF}, overrides: {{jpeg-compressed: {{width: 16}}}}}}
        condition: {{perceiver: daclip, vector: probs}}
        data: {{layout: paired, train: [train], val: [val]}}
    """, "specs/spec.yaml"))
    assert list(errs) == ["perceivers[0].params.degradations", "backbone.params.overrides"]
    msg = errs["perceivers[0].params.degradations"]
    assert "['rain'] of data.train[0]" in msg and "['hazy'] of data.val[0]" in msg
    assert "['jpeg-compressed'] have no degradation folder in data.train[0]" in errs["backbone.params.overrides"]
    # folders named by the class words pass
    paired_root(tmp_path / "specs" / "ok", "noisy", "rainy", "jpeg-compressed")
    validate(spec_file(tmp_path, f"""
        perceivers: [{{type: daclip, preset: tiny, params: {{degradations: [noisy, rainy, jpeg-compressed]}}}}]
        backbone:
          type: experts
          params: {{expert_params: {TINY_NAF}, overrides: {{jpeg-compressed: {{width: 16}}}}}}
        condition: {{perceiver: daclip, vector: probs}}
        data: {{layout: paired, train: [ok], val: [ok]}}
    """, "specs/ok.yaml"), REG)


def test_paired_roots_are_read_at_validation(tmp_path):
    paired_root(tmp_path / "specs" / "a", "noisy", "rainy")
    paired_root(tmp_path / "specs" / "b", "noisy")   # lacks the first root's rainy folder
    (tmp_path / "specs" / "flat").mkdir()            # no <degradation>/{LQ,GT} at all
    errs = errors_of(spec_file(tmp_path, f"""
        backbone: {{type: nafnet, params: {TINY_NAF}}}
        data: {{layout: paired, train: [a, b], val: [flat]}}
    """, "specs/spec.yaml"))
    assert list(errs) == ["data.train[1]", "data.val[0]"]
    assert "LQ and GT" in errs["data.train[1]"] and "no <degradation>/LQ" in errs["data.val[0]"]


def test_nafnet_levels_of_different_lengths(tmp_path):
    errs = errors_of(spec_file(tmp_path, """
        backbone: {type: nafnet, params: {width: 8, enc_blk_nums: [1, 1, 1], dec_blk_nums: [1, 1]}}
    """))
    assert "same length" in errs["backbone.params.dec_blk_nums"]


# -- paths, ranges, version ----------------------------------------------------------------------
def test_data_paths_are_read_from_the_spec_folder(tmp_path, images, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the spec's folder
    path = spec_file(tmp_path, f"""
        backbone: {{type: nafnet, params: {TINY_NAF}}}
        data: {{train: [imgs], val: [missing], degradations: [{{type: noise}}]}}
    """, "specs/spec.yaml")
    errs = errors_of(path)
    assert list(errs) == ["data.val[0]"]
    assert str(tmp_path / "specs" / "missing") in errs["data.val[0]"]
    spec = load_spec(path, REG)
    assert spec.data.train == [str(images)]


@pytest.mark.parametrize("params, where", [
    ("{width: -5}", "backbone.params.width"),
    ("{width: 100000000}", "backbone.params.width"),
    ("{enc_blk_nums: [1, 1000000], dec_blk_nums: [1, 1]}", "backbone.params.enc_blk_nums[1]"),
])
def test_sizes_are_bounded(tmp_path, params, where):
    errs = errors_of(spec_file(tmp_path, f"backbone: {{type: nafnet, params: {params}}}\n"))
    assert where in errs


def test_expert_count_and_sigmas_are_bounded(tmp_path):
    errs = errors_of(spec_file(tmp_path, f"""
        backbone: {{type: experts, params: {{experts: 100000, expert_params: {TINY_NAF}}}}}
        data:
          degradations: [{{type: noise, params: {{sigma: -5}}}}, {{type: blur, params: {{sigma: [0, 2]}}}}]
    """))
    assert "less than or equal to 128" in errs["backbone.params.experts"]
    assert ">= 0" in errs["data.degradations[0].params.sigma"]
    assert "> 0" in errs["data.degradations[1].params.sigma"]


@pytest.mark.parametrize("degradation, where, expected", [
    ("{type: camera_noise, params: {shot: [0, 0.01]}}", "shot", "> 0"),
    ("{type: camera_noise, params: {read: -0.001}}", "read", "> 0"),
    ("{type: camera_noise, params: {gamma: 0}}", "gamma", "> 0"),
    ("{type: camera_noise, params: {jpeg: [60, 101]}}", "jpeg", "in [1, 100]"),
    ("{type: camera_noise, params: {jpeg_probability: 1.5}}", "jpeg_probability", "less than or equal to 1"),
    ("{type: jpeg, params: {quality: 0}}", "quality", "in [1, 100]"),
    ("{type: rain_streaks, params: {layers: 0}}", "layers", ">= 1"),
    ("{type: rain_streaks, params: {density: 5}}", "density", "in [0, 1]"),
    ("{type: rain_streaks, params: {length: [0, 10]}}", "length", "in (0, 256]"),
    ("{type: rain_streaks, params: {length: 1000000}}", "length", "in (0, 256]"),
    ("{type: rain_streaks, params: {width: -1}}", "width", "in (0, 256]"),
    ("{type: rain_streaks, params: {spread: -5}}", "spread", "greater than or equal to 0"),
    ("{type: rain_streaks, params: {intensity: [0.5, 2]}}", "intensity", "in [0, 1]"),
    ("{type: rain_streaks, params: {veil: [0.2, 0.1]}}", "veil", "low <= high"),
    ("{type: lens_blur, params: {sigma: 0}}", "sigma", "in (0, 256]"),
    ("{type: lens_blur, params: {radius: 100000}}", "radius", "in (0, 256]"),
    ("{type: lens_blur, params: {defocus: -0.1}}", "defocus", "greater than or equal to 0"),
    ("{type: shake, params: {length: -3}}", "length", "in (0, 256]"),
    ("{type: shake, params: {curl: -0.1}}", "curl", ">= 0"),
    ("{type: mix, params: {count: [0, 2]}}", "count", ">= 1"),
    ("{type: mix, params: {params: {hazy: {tint: 2}}}}", "params.hazy.tint", "less than or equal to 1"),
    ("{type: mix, params: {params: {noisy: {shott: 0.1}}}}", "params.noisy.shott", "did you mean 'shot'"),
    ("{type: haze, params: {tint: -0.5}}", "tint", "greater than or equal to 0"),
    ("{type: haze, params: {cells: 0}}", "cells", "greater than or equal to 1"),
    ("{type: haze, params: {cells: 100000}}", "cells", "less than or equal to 256"),
    ("{type: haze, params: {ramp: 1.5}}", "ramp", "less than or equal to 1"),
    ("{type: haze, params: {airlight: [0.7, 1.5]}}", "airlight", "in [0, 1]"),
    ("{type: haze, params: {beta: -1}}", "beta", ">= 0"),
    ("{type: low_light, params: {cast: 2}}", "cast", "less than or equal to 1"),
    ("{type: low_light, params: {gain: 0}}", "gain", "> 0"),
    ("{type: low_light, params: {shot: -0.01}}", "shot", ">= 0"),
    ("{type: low_light, params: {read: [0.02, 0.01]}}", "read", "low <= high"),
    ("{type: low_light, params: {scale: [0.1, 2]}}", "scale", "in [0, 1]"),
    ("{type: rain, params: {density: 2}}", "density", "in [0, 1]"),
    ("{type: motion_blur, params: {length: 1000000}}", "length", "in (0, 256]"),
    ("{type: inpainting, params: {box_size: [0.1, 1.5]}}", "box_size", "in [0, 1]"),
    ("{type: inpainting, params: {strokes: 0}}", "strokes", ">= 1"),
])
def test_degradation_values_are_bounded(tmp_path, degradation, where, expected):
    errs = errors_of(spec_file(tmp_path, f"""
        backbone: {{type: nafnet, params: {TINY_NAF}}}
        data:
          degradations: [{{type: noise}}, {degradation}]
    """))
    path = f"data.degradations[1].params.{where}"
    assert list(errs) == [path] and expected in errs[path]


def test_degradation_defaults_are_within_their_bounds():
    for entry in REG.list("degradation"):
        for preset in [None, *REG.presets("degradation", entry.name)]:
            REG.resolve("degradation", entry.name, preset=preset)


def test_data_sizes_are_bounded(tmp_path):
    errs = errors_of(spec_file(tmp_path, f"""
        backbone: {{type: nafnet, params: {TINY_NAF}}}
        data: {{patch_size: 100000000, batch_size: -1}}
        train: {{stages: [{{patch_size: 100000000}}]}}
    """))
    assert {"data.patch_size", "data.batch_size", "train.stages[0].patch_size"} <= set(errs)


def test_spec_version_is_checked(tmp_path):
    errs = errors_of(spec_file(tmp_path, f"vlir: 2\nbackbone: {{type: nafnet, params: {TINY_NAF}}}\n"))
    assert "version 2 is not supported" in errs["vlir"] and "upgrade vlir" in errs["vlir"]


# -- error reporting ----------------------------------------------------------------------------
def test_unknown_keys_suggest_the_close_name(tmp_path):
    errs = errors_of(spec_file(tmp_path, f"""
        perceivers: [{{type: daclip, preset: tiny}}]
        backbone: {{type: nafnet, params: {TINY_NAF}}}
        condition: {{tokns: false}}
        data: {{patch_sise: 64}}
    """))
    assert "unknown key 'tokns'; did you mean 'tokens'?" in errs["condition.tokns"]
    assert "did you mean 'patch_size'" in errs["data.patch_sise"]
    assert not any("Extra inputs are not permitted" in m for m in errs.values())


def test_a_structural_error_does_not_hide_params_errors(tmp_path):
    errs = errors_of(spec_file(tmp_path, """
        bogus: 1
        backbone: {type: nafnet, params: {widht: 8}}
        losses: [{type: l1, weight: heavy}, {type: charbonnier, params: {eps: x}}]
        data: {degradations: [{type: noise, params: {sigmaa: 1}}]}
    """))
    assert {"bogus", "backbone.params.widht", "losses[0].weight", "losses[1].params.eps",
            "data.degradations[0].params.sigmaa"} <= set(errs)


def test_dry_run_builds_every_component_on_meta(tmp_path):
    # heads must divide every level's width: only the constructor knows
    errs = errors_of(spec_file(tmp_path, """
        backbone: {type: restormer, preset: tiny, params: {heads: [3, 1, 2, 2]}}
    """))
    assert "heads[0]=3 does not divide" in errs["backbone.params"]


class Plain(Backbone):
    """A third-party backbone written without condition_params: it reads no conditioning."""

    def __init__(self, params=None, **kw):
        super().__init__(params, **kw)
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, lq, cond=None):
        return lq + self.conv(lq)


class Smudge(Degradation):
    label = "smudged"

    def forward(self, img, generator=None):
        return img


class PlainPlugin:
    @hookimpl
    def vlir_components(self):
        return [{"kind": "backbone", "name": "plain", "target": Plain},
                {"kind": "degradation", "name": "smudge", "target": Smudge}]


def test_conditioning_a_backbone_cannot_read_is_an_error(tmp_path):
    reg = Registry(autoload=False, plugins=[PlainPlugin()])
    errs = errors_of(spec_file(tmp_path, """
        perceivers: [{type: daclip, preset: tiny}]
        backbone: {type: plain}
        condition: {tokens: true, vector: true}
    """), reg)
    assert "backbone 'plain' cannot read the perceiver's content tokens" in errs["condition.tokens"]
    assert "conditioning vector" in errs["condition.vector"]
    # experts read the vector (routing) but not tokens
    errs = errors_of(spec_file(tmp_path, f"""
        perceivers: [{{type: daclip, preset: tiny}}]
        backbone: {{type: experts, params: {{expert_params: {TINY_NAF}}}}}
        condition: {{vector: probs, tokens: true}}
    """, "experts.yaml"), reg)
    assert list(errs) == ["condition.tokens"]


def test_cli_validate_exits_2_with_paths(tmp_path, capsys):
    path = spec_file(tmp_path, "backbone: {type: nafnet, params: {width: -5}}\n")
    assert main(["spec", "validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "backbone.params.width" in err and str(path) in err


def test_train_fails_before_any_work(tmp_path, images, capsys):
    out = tmp_path / "run"
    path = spec_file(tmp_path, f"""
        perceivers: [{{type: daclip, preset: tiny}}]
        backbone: {{type: nafnet, params: {TINY_NAF}}}
        losses: [{{type: l1}}]
        data: {{train: [imgs], degradations: [{{type: noise}}]}}
        train: {{stages: [{{target: "perceiver:clip"}}, {{target: restorer}}]}}
    """, "specs/spec.yaml")
    assert main(["train", str(path), "--out", str(out), "--quiet"]) == 2
    assert "train.stages[0].target" in capsys.readouterr().err
    assert not out.exists()


# -- hooks and registries -----------------------------------------------------------------------
def test_spec_error_with_a_plain_message_from_a_hook():
    class Refuse:
        @hookimpl
        def vlir_adjust_spec(self, spec, registry):
            raise SpecError("this site allows restormer backbones only")

    reg = Registry(autoload=False, plugins=[Refuse()])
    with pytest.raises(SpecError) as info:
        load_spec({"backbone": {"type": "nafnet"}}, reg)
    assert info.value.errors == [("", "this site allows restormer backbones only")]
    assert "this site allows restormer backbones only" in str(info.value)


def test_components_build_through_the_registry_passed_in():
    """experts and datasets build sub-components through the pipeline's registry, not the global one."""
    from vlir.core import Pipeline
    from vlir.core.data.datasets import resolve_degradation

    reg = Registry(autoload=False, plugins=[PlainPlugin()])
    pipe = Pipeline.from_spec({"backbone": {"type": "experts", "params": {"experts": 2, "expert": "plain"}}}, reg)
    assert all(isinstance(n, Plain) for n in pipe.backbone.nets)
    assert isinstance(resolve_degradation("smudge", reg), Smudge)
    with pytest.raises(SpecError, match="unknown degradation 'smudge'"):
        resolve_degradation("smudge", REG)


ADJUST_PLUGIN = """
from vlir.core import hookimpl

@hookimpl
def vlir_adjust_spec(spec, registry):
    backbone = spec.get("backbone") or {}
    backbone.setdefault("params", {})["routing"] = "soft"   # would change every saved experts model
"""

OTHER_L1 = """
from vlir.core import Loss

class L1(Loss):
    def forward(self, restored, gt):
        return (restored - gt).abs().mean() * 2
"""


def test_saved_pipeline_loads_unchanged_with_spec_editing_hook_and_third_party_l1(tmp_path, on_path):
    from vlir.core import Pipeline
    from vlir.core.default import bundled_dir

    make_dist(tmp_path / "a", "spec-editor", "0.1", {"vlir.hooks": {"edit": "spec_editor"}},
              {"spec_editor": ADJUST_PLUGIN})
    make_dist(tmp_path / "b", "other-l1", "0.1", {"vlir.losses": {"l1": "other_l1:L1"}}, {"other_l1": OTHER_L1})
    on_path(tmp_path / "a", tmp_path / "b")
    reg = Registry()
    assert [e.provider for e in reg.list("loss", "l1")] == ["vlir", "other-l1"]
    # a third-party name never hides a built-in; the other one is reached as package:name
    assert reg.get("loss", "l1").provider == "vlir" and reg.get("loss", "other-l1:l1").provider == "other-l1"
    with pytest.raises(SpecError, match="unknown key 'routing'"):  # the hook edits new specs
        load_spec({"backbone": {"type": "nafnet"}, "losses": [{"type": "l1"}]}, reg)

    lq = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    plain = Pipeline.load(bundled_dir(), Registry(autoload=False))
    pipe = Pipeline.load(bundled_dir(), reg)
    assert pipe.backbone.params.routing == plain.backbone.params.routing == "hard"
    assert pipe.spec.model_dump() == plain.spec.model_dump()
    torch.testing.assert_close(pipe.restore(lq)[0], plain.restore(lq)[0], rtol=0, atol=0)
    # a spec being built (not a saved one) still goes through the hooks
    assert load_spec({"backbone": {"type": "experts", "params": {"expert_params": {}}}},
                     reg).backbone.params["routing"] == "soft"


def test_saved_spec_with_oversized_params_is_refused_before_building(tmp_path):
    from vlir.core import Pipeline

    folder = tmp_path / "pipe"
    folder.mkdir()
    (folder / "spec.yaml").write_text("backbone: {type: experts, params: {experts: 100000, expert_params: "
                                      "{width: 100000000}}}\n")
    with pytest.raises(SpecError, match=r"backbone.params.experts: Input should be less than or equal to 128"):
        Pipeline.load(folder, REG)
    (folder / "spec.yaml").write_text("backbone: {type: experts, params: {experts: 2, expert_params: "
                                      "{width: 100000000}}}\n")
    with pytest.raises(SpecError, match=r"backbone.params.expert_params.width: Input should be less than"):
        Pipeline.load(folder, REG)


def test_captions_file_is_read_at_validation(tmp_path, images):
    (tmp_path / "specs" / "caps.csv").write_text("path,text\nx.png,a photo\n")
    errs = errors_of(spec_file(tmp_path, f"""
        backbone: {{type: nafnet, params: {TINY_NAF}}}
        data: {{train: [imgs], captions: caps.csv, degradations: [{{type: noise}}]}}
    """, "specs/spec.yaml"))
    assert list(errs) == ["data.captions"] and "caps.csv" in errs["data.captions"]


@pytest.mark.parametrize("name", ["default.yaml", "default-v2.yaml"])
def test_the_default_model_specs_validate_with_the_shared_data(name):
    """The specs that train the built-in model (v1, and v2's perceiver with data.pairs and mixes)
    pass every check, their data folders read from ../shared beside the repository."""
    spec = Path(__file__).resolve().parents[1] / "specs" / name
    if not (spec.parent / ".." / ".." / "shared" / "data" / "LOL").is_dir():
        pytest.skip("../shared/data is not beside the repository")
    validate(spec)
