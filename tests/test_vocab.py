"""One class vocabulary: degradation labels are the class words; a perceiver's classes default to
its spec's data degradations; experts name classes by word; DA-CLIP words and quality tiers are
stated once (vlir.core.classes)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vlir.core import classes
from vlir.core.errors import SpecError
from vlir.core.registry import get_registry
from vlir.core.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
TINY_NAF = {"width": 8, "enc_blk_nums": [1, 1], "middle_blk_num": 1, "dec_blk_nums": [1, 1]}
DATA = {"train": ["imgs"], "degradations": [{"type": "noise"}, {"type": "jpeg"}, {"type": "blur"}]}


def routed(**experts) -> dict:
    return {"perceivers": [{"type": "daclip", "preset": "tiny", "params": {"objective": "cross_entropy"}}],
            "backbone": {"type": "experts", "params": {"expert_params": TINY_NAF, **experts}},
            "condition": {"vector": "probs", "tokens": False},
            "data": DATA}


def test_perceiver_classes_default_to_the_data_labels():
    spec = load_spec(routed())
    assert spec.perceivers[0].params["degradations"] == ["noisy", "jpeg-compressed", "blurry"]
    reg = get_registry()
    labels = [classes.degradation_word(reg.build("degradation", d["type"])) for d in DATA["degradations"]]
    assert spec.perceivers[0].params["degradations"] == labels  # the words the dataset labels samples with
    assert spec.backbone.params["experts"] == 3
    assert spec.backbone.params["classes"] == labels


def test_explicit_words_and_data_without_degradations_keep_their_classes():
    spec = routed()
    spec["perceivers"][0]["params"]["degradations"] = ["noisy", "jpeg-compressed", "blurry"]
    assert load_spec(spec).perceivers[0].params["degradations"] == ["noisy", "jpeg-compressed", "blurry"]
    paired = {"perceivers": [{"type": "daclip", "preset": "tiny"}], "backbone": {"type": "nafnet", "preset": "tiny"},
              "data": {"layout": "paired", "train": ["root"]}}
    assert load_spec(paired).perceivers[0].params["degradations"] == list(classes.DACLIP_WORDS)
    del paired["data"]
    assert load_spec(paired).perceivers[0].params["degradations"] == list(classes.DACLIP_WORDS)


def test_experts_name_overrides_and_identities_by_class_word(tmp_path):
    from vlir.core.pipeline import Pipeline

    spec = routed(overrides={"jpeg-compressed": {"width": 16}}, identity=["blurry"])
    pipe = Pipeline.from_spec(spec, build_losses=False)
    nets = pipe.backbone.nets
    assert [type(n).__name__ for n in nets] == ["NAFNet", "NAFNet", "Identity"]
    assert (nets[0].params.width, nets[1].params.width) == (8, 16)
    pipe.save(tmp_path / "p")
    text = (tmp_path / "p" / "spec.yaml").read_text()
    assert "jpeg-compressed:\n" in text and "- blurry" in text
    again = Pipeline.load(tmp_path / "p")
    assert [type(n).__name__ for n in again.backbone.nets] == ["NAFNet", "NAFNet", "Identity"]
    assert again.backbone.nets[1].params.width == 16
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(pipe.restore(x)[0], again.restore(x)[0])


def test_an_unknown_class_word_is_a_spec_error_listing_the_classes():
    with pytest.raises(SpecError) as e:
        load_spec(routed(overrides={"jpeg": {"width": 16}}))
    msg = str(e.value)
    assert "backbone.params" in msg and "class words ['jpeg'] are not classes of the routing perceiver" in msg
    assert "'jpeg-compressed'" in msg
    with pytest.raises(SpecError, match="need experts.classes"):
        load_spec({"backbone": {"type": "experts", "params": {"experts": 2, "expert_params": TINY_NAF,
                                                              "identity": ["clean"]}}})


def test_class_positions_of_older_specs_still_read():
    spec = load_spec(routed(overrides={1: {"width": 16}}, identity=[2]))
    from vlir.core.pipeline import Pipeline

    nets = Pipeline(spec, build_losses=False).backbone.nets
    assert nets[1].params.width == 16 and type(nets[2]).__name__ == "Identity"
    # a saved spec writes a position as the text '1'; it reads back as the position
    assert spec.backbone.params["overrides"] == {"1": {"width": 16}}
    with pytest.raises(SpecError, match=r"in both overrides and identity"):
        load_spec(routed(overrides={"blurry": {"width": 16}}, identity=[2]))


def test_the_default_spec_names_its_classes_once_and_resolves_as_the_bundled_model():
    from vlir.core import yamlsafe
    from vlir.core.default import SPEC

    text = (ROOT / SPEC).read_text()
    raw = yamlsafe.load(text)
    assert "degradations" not in raw["perceivers"][0]["params"]  # no second, hand-kept list
    spec, bundled = load_spec(ROOT / SPEC), load_spec(ROOT / "core/assets/default/spec.yaml")
    assert spec.perceivers[0].params["degradations"] == bundled.perceivers[0].params["degradations"]
    assert spec.backbone.params["classes"] == bundled.backbone.params["classes"]
    assert spec.backbone.params["overrides"] == bundled.backbone.params["overrides"]
    assert spec.backbone.params["identity"] == bundled.backbone.params["identity"] == ["clean"]


def test_class_words_and_quality_tiers_are_stated_once():
    from vlir.core import conditioning
    from vlir.plugins.perceivers import daclip, lora_caption_aligner, quality_perceiver

    assert daclip.DEGRADATIONS == lora_caption_aligner.DEGRADATIONS == list(classes.DACLIP_WORDS)
    assert daclip.DACLIP.Params().degradations == list(classes.DACLIP_WORDS)
    assert conditioning.QUALITY_TIERS is classes.QUALITY_TIERS
    assert quality_perceiver.QualityPerceiver.Params(pretrained=None).class_words == list(classes.QUALITY_WORDS)
    assert quality_perceiver.QualityPerceiver.output_dims({"model": "vlir-tiny", "pretrained": None})[0] == 3
    p = conditioning.Perception(quality_probs=torch.tensor([[0.2, 0.3, 0.5]]))
    assert list(p.as_dict()["quality"]) == list(classes.QUALITY_TIERS)


def test_clip_quality_reads_the_high_tier():
    from vlir.core.pipeline import Pipeline

    torch.manual_seed(0)
    pipe = Pipeline.from_spec({"perceivers": [{"type": "quality_perceiver", "preset": "tiny"}],
                               "backbone": {"type": "nafnet", "preset": "tiny"},
                               "losses": [{"type": "clip_quality"}]})
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        probs = pipe.perceivers["quality_perceiver"](x).quality_probs
        loss = pipe.losses["clip_quality"](restored=x, pipeline=pipe)
    assert torch.allclose(loss, (1 - probs[:, classes.QUALITY_TIERS.index("high")]).mean())
