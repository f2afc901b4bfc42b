"""Specs: YAML parsing, two-step validation, errors with paths, wiring, JSON Schema."""
from __future__ import annotations

import json

import pytest

from vlir.core.spec import PipelineSpec, SpecError, json_schema, load_spec


def write(tmp_path, text, name="spec.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_resolved_spec_has_every_param(tmp_path):
    spec = load_spec(write(tmp_path, "backbone: {type: nafnet, preset: tiny, params: {width: 16}}\n"))
    p = spec.backbone.params
    assert p["width"] == 16 and p["enc_blk_nums"] == [1, 1] and "middle_blk_num" in p
    assert spec.backbone.provider == "vlir"


def test_structural_errors_are_reported_together_with_paths(tmp_path):
    path = write(tmp_path, """
backbone: {type: nafnet, colour: red}
perceivers: {type: daclip}
losses:
  - {type: l1, weight: heavy}
bogus: 1
""")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    paths = [p for p, _ in info.value.errors]
    assert "backbone.colour" in paths and "perceivers" in paths and "losses[0].weight" in paths and "bogus" in paths
    assert str(path) in str(info.value)


def test_component_errors_are_reported_together_with_paths(tmp_path):
    path = write(tmp_path, """
backbone: {type: nafnet, params: {width: abc, enc_blk_nums: [1, 1], depth: 3}}
perceivers:
  - {type: dacilp}
losses:
  - {type: l1}
  - {type: charbonnier, params: {eps: "not a number"}}
condition: {perceiver: quality}
""")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    errs = dict(info.value.errors)
    assert errs["backbone.params.width"].startswith("Input should be a valid integer")
    assert "backbone.params.depth" in errs  # extra="forbid"
    assert "did you mean 'daclip'" in errs["perceivers[0].type"]
    assert "losses[1].params.eps" in errs
    assert "condition.perceiver" in errs
    assert "backbone.params.width: Input should be a valid integer" in str(info.value)


def test_unknown_preset_and_missing_weights(tmp_path):
    with pytest.raises(SpecError) as info:
        load_spec({"backbone": {"type": "nafnet", "preset": "sidd", "weights": str(tmp_path / "none.pth")}})
    assert "backbone.preset" in dict(info.value.errors)
    with pytest.raises(SpecError) as info:
        load_spec({"backbone": {"type": "nafnet", "weights": str(tmp_path / "none.pth")}})
    assert "no such file" in dict(info.value.errors)["backbone.weights"]


def test_python_tags_are_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = write(tmp_path, f"""
backbone: !!python/object/apply:os.system ["touch {marker}"]
""")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(path)
    assert not marker.exists()


def test_spec_must_be_a_mapping(tmp_path):
    with pytest.raises(SpecError, match="expected a mapping"):
        load_spec(write(tmp_path, "- a\n- b\n"))
    with pytest.raises(SpecError, match="cannot read"):
        load_spec(tmp_path / "missing.yaml")


def test_diffusion_backbone_needs_a_process():
    with pytest.raises(SpecError, match="needs a process"):
        load_spec({"backbone": {"type": "conditional_unet", "preset": "tiny"}})
    with pytest.raises(SpecError, match="not a diffusion network"):
        load_spec({"backbone": {"type": "nafnet", "preset": "tiny"}, "process": {"type": "irsde"}})


def test_perceiver_dims_are_wired_into_the_backbone():
    spec = load_spec({"perceivers": [{"type": "daclip", "preset": "tiny"}],
                      "backbone": {"type": "nafnet", "preset": "tiny"}})
    assert spec.backbone.params["cond_dim"] == 32 and spec.backbone.params["context_dim"] == 32
    # explicit values win, and the vector can be switched off
    spec = load_spec({"perceivers": [{"type": "daclip", "preset": "tiny"}],
                      "backbone": {"type": "nafnet", "preset": "tiny", "params": {"context_dim": None}},
                      "condition": {"vector": False}})
    assert spec.backbone.params["cond_dim"] is None and spec.backbone.params["context_dim"] is None
    assert spec.feeding_role() == "daclip"
    # without a perceiver the official layout stays
    spec = load_spec({"backbone": {"type": "nafnet"}})
    assert spec.backbone.params["cond_dim"] is None


def test_json_schema_lists_registered_components():
    schema = json_schema()
    assert schema["title"] == "vlir pipeline spec"
    assert "backbone.nafnet" in schema["$defs"]
    nafnet = schema["$defs"]["backbone.nafnet"]
    assert "width" in nafnet["properties"]["params"]["properties"]
    assert "sidd-width32" in nafnet["properties"]["preset"]["enum"]
    json.dumps(schema)


def test_round_trip_yaml():
    spec = load_spec({"backbone": {"type": "nafnet", "preset": "tiny"}, "losses": [{"type": "l1", "weight": 0.5}]})
    again = load_spec(PipelineSpec.model_validate(__import__("yaml").safe_load(spec.to_yaml())))
    assert again.model_dump() == spec.model_dump()
