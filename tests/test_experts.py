"""The experts backbone and class-probability conditioning (condition: {vector: probs})."""
from __future__ import annotations

import torch

from vlir.core import Conditioning, Pipeline
from vlir.core.registry import get_registry
from vlir.core.train.objective import training_losses

TINY = {"width": 8, "enc_blk_nums": [1], "middle_blk_num": 1, "dec_blk_nums": [1]}


def build(routing="hard", n=3):
    torch.manual_seed(0)
    m = get_registry().build("backbone", "experts", params={"experts": n, "expert_params": TINY, "routing": routing})
    with torch.no_grad():  # make the experts differ (NAFNet's output layer scales start at zero)
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m.eval()


def test_hard_routing_runs_the_most_likely_expert_per_image():
    m = build()
    x = torch.rand(3, 3, 16, 16)
    probs = torch.tensor([[0.1, 0.7, 0.2], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5]])
    with torch.no_grad():
        out = m(x, Conditioning(vector=probs))
        for i, k in enumerate([1, 0, 2]):
            torch.testing.assert_close(out[i:i + 1], m.nets[k](x[i:i + 1]))
        assert not torch.allclose(m.nets[0](x), m.nets[1](x))


def test_soft_routing_mixes_by_probability_and_no_vector_averages():
    m = build("soft", n=2)
    x = torch.rand(2, 3, 16, 16)
    probs = torch.tensor([[0.25, 0.75], [1.0, 0.0]])
    with torch.no_grad():
        a, b = m.nets[0](x), m.nets[1](x)
        torch.testing.assert_close(m(x, Conditioning(vector=probs)), probs[:, :1, None, None] * a + probs[:, 1:, None, None] * b)
        torch.testing.assert_close(m(x), (a + b) / 2)


def test_wrong_vector_size_is_a_clear_error():
    m = build(n=2)
    try:
        m(torch.rand(1, 3, 8, 8), Conditioning(vector=torch.rand(1, 5)))
    except ValueError as e:
        assert "vector: probs" in str(e) and "(1, 2)" in str(e)
    else:
        raise AssertionError("no error")


def test_spec_routes_by_perceiver_class_probabilities():
    spec = {"perceivers": [{"type": "daclip", "preset": "tiny", "params": {"degradations": ["noisy", "hazy", "rainy"]}}],
            "backbone": {"type": "experts", "params": {"expert_params": TINY}},
            "condition": {"vector": "probs", "tokens": False}, "losses": [{"type": "l1"}]}
    pipe = Pipeline.from_spec(spec)
    assert pipe.backbone.params.experts == 3
    x = torch.rand(2, 3, 24, 24)
    cond = pipe.condition(pipe.perceive(x))
    assert cond.tokens is None and cond.vector.shape == (2, 3)
    torch.testing.assert_close(cond.vector.sum(1), torch.ones(2))
    total, logs = training_losses(pipe, {"lq": x, "gt": x})
    total.backward()
    assert any(p.grad is not None for p in pipe.backbone.parameters())


def test_teacher_forcing_routes_by_labels_without_running_the_perceiver():
    spec = {"perceivers": [{"type": "daclip", "preset": "tiny", "params": {"degradations": ["noisy", "hazy"]}}],
            "backbone": {"type": "experts", "params": {"expert_params": TINY}},
            "condition": {"vector": "probs", "tokens": False, "teacher": True}, "losses": [{"type": "l1"}]}
    pipe = Pipeline.from_spec(spec)
    calls = []
    pipe.perceivers["daclip"].register_forward_hook(lambda *a: calls.append(1))
    x, y = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    batch = {"lq": x, "gt": y, "degradation_name": ["hazy", "noisy"]}
    total, _ = training_losses(pipe, batch)
    assert not calls  # routing came from the labels
    with torch.no_grad():
        expected = torch.cat([pipe.backbone.nets[1](x[:1]), pipe.backbone.nets[0](x[1:])])
        torch.testing.assert_close(total, (expected - y).abs().mean())
    try:
        training_losses(pipe, {**batch, "degradation_name": ["rainy", "noisy"]})
    except KeyError as e:
        assert "rainy" in str(e) and "noisy, hazy" in str(e)
    else:
        raise AssertionError("no error for an unknown label")
    # inference still routes by the perceiver
    assert pipe(x).shape == x.shape and calls


def test_stage_on_one_degradation_trains_only_its_expert(tmp_path):
    import pytest

    from test_trainer import make_images
    from vlir.core.spec import SpecError, load_spec
    from vlir.core.train.trainer import Trainer

    images = make_images(tmp_path / "clean", n=4, size=32)
    spec = {"perceivers": [{"type": "daclip", "preset": "tiny", "params": {"degradations": ["noisy", "blurry"]}}],
            "backbone": {"type": "experts", "params": {"expert_params": TINY}},
            "condition": {"vector": "probs", "tokens": False, "teacher": True}, "losses": [{"type": "l1"}],
            "data": {"train": [str(images)], "val": [str(images)], "patch_size": 16, "batch_size": 4,
                     "degradations": [{"type": "noise"}, {"type": "blur"}], "val_size": 16, "val_limit": 4},
            "train": {"iterations": 3, "lr": 1e-2, "save_every": 100,
                      "stages": [{"name": "blur", "target": "restorer", "degradations": ["blur"]}]}}
    trainer = Trainer(load_spec(spec), tmp_path / "run", device="cpu", progress=False)
    before = {k: v.clone() for k, v in trainer.pipeline.backbone.state_dict().items()}
    trainer.fit()
    after = trainer.pipeline.backbone.state_dict()
    changed = {k.split(".")[1] for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"1"}  # only the blur expert (class "blurry") saw data
    # validation routes by the labels too (the perceiver is untrained) and reports each degradation
    val = trainer.last_val
    assert {"psnr", "input_psnr", "psnr/noisy", "psnr/blurry"} <= val.keys()
    assert abs(val["psnr"] - (val["psnr/noisy"] + val["psnr/blurry"]) / 2) < 1e-4  # 2 + 2 samples
    with torch.no_grad():
        trainer.pipeline.eval()
        batch = next(iter(torch.utils.data.DataLoader(trainer.val_data, batch_size=4)))
        from vlir.core.metrics import psnr_torch
        out = torch.cat([trainer.pipeline.backbone.nets[d](batch["lq"][i:i + 1])
                         for i, d in enumerate(batch["degradation"].tolist())]).clamp(0, 1)
        noisy = psnr_torch(out, batch["gt"])[batch["degradation"] == 0].mean()
    assert abs(float(noisy) - val["psnr/noisy"]) < 1e-3

    spec["train"]["stages"][0]["degradations"] = ["rain"]
    with pytest.raises(SpecError, match=r"train.stages\[0\].degradations: expected types of data.degradations "
                                        r"\(noise, blur\)"):
        Trainer(load_spec(spec), tmp_path / "bad", progress=False)


def test_overrides_give_one_expert_other_params():
    import pytest

    m = get_registry().build("backbone", "experts", params={"experts": 3, "expert_params": TINY,
                                                            "overrides": {1: {"width": 16}}})
    sizes = [sum(p.numel() for p in net.parameters()) for net in m.nets]
    assert sizes[0] == sizes[2] < sizes[1]
    x = torch.rand(3, 3, 20, 20)
    assert m(x, Conditioning(vector=torch.eye(3))).shape == x.shape
    with pytest.raises(ValueError, match=r"experts.overrides: expert indices \[3\] are not in 0..2"):
        get_registry().build("backbone", "experts", params={"experts": 3, "expert_params": TINY,
                                                            "overrides": {3: {"width": 16}}})


def test_overrides_survive_a_pipeline_save_and_load(tmp_path):
    spec = {"backbone": {"type": "experts", "params": {"experts": 2, "expert_params": TINY,
                                                       "overrides": {1: {"width": 16}}}}}
    Pipeline.from_spec(spec).save(tmp_path)
    loaded = Pipeline.load(tmp_path)
    assert loaded.backbone.params.overrides == {1: {"width": 16}}
    assert loaded.backbone.nets[1].params.width == 16


def test_tiled_restore_shares_the_routed_experts_global_pooling():
    # experts share NAFNet's channel pooling across tiles: a tiled restore through the pipeline
    # matches the whole-image one
    import math

    spec = {"backbone": {"type": "experts", "params": {"experts": 2, "expert_params": TINY,
                                                       "overrides": {1: {"width": 16}}}}}
    torch.manual_seed(0)
    pipe = Pipeline.from_spec(spec).eval()
    with torch.no_grad():
        for p in pipe.backbone.parameters():
            p.add_(0.05 * torch.randn_like(p))
    b = pipe.backbone
    assert (b.multiple_of, b.tile_passes, b.pad_mode) == (2, 1, "zeros")
    x = torch.rand(1, 3, 75, 90)
    whole, _ = pipe.restore(x)
    tiled, _ = pipe.restore(x, tile=40, overlap=16)
    mse = (whole.double() - tiled.double()).pow(2).mean().item()
    assert 10 * math.log10(1 / mse) >= 50


def test_experts_of_different_depths_tile_at_the_deepest_unit():
    m = get_registry().build("backbone", "experts", params={
        "experts": 2, "expert_params": TINY, "overrides": {1: {"enc_blk_nums": [1, 1], "dec_blk_nums": [1, 1]}}})
    assert (m.nets[0].multiple_of, m.nets[1].multiple_of, m.multiple_of) == (2, 4, 4)


def test_identity_classes_pass_images_unchanged_and_train_the_rest():
    import pytest

    torch.manual_seed(0)
    m = get_registry().build("backbone", "experts", params={"experts": 3, "expert_params": TINY, "identity": [0]})
    assert isinstance(m.nets[0], torch.nn.Identity) and not any(k.startswith("nets.0.") for k in m.state_dict())
    assert m.pad_mode == m.nets[1].pad_mode
    x = torch.rand(3, 3, 16, 16)
    out = m(x, Conditioning(vector=torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.6, 0.1, 0.3]])))
    assert torch.equal(out[0], x[0]) and torch.equal(out[2], x[2])
    out.mean().backward()  # the routed expert still learns
    assert all(p.grad is not None for p in m.nets[1].parameters())
    for params, match in [({"identity": [3]}, r"experts.identity: expert indices \[3\] are not in 0..2"),
                          ({"identity": [1], "overrides": {1: {"width": 16}}}, r"classes \[1\] are in both"),
                          ({"identity": [0, 1, 2]}, "keep at least one expert")]:
        with pytest.raises(ValueError, match=match):
            get_registry().build("backbone", "experts", params={"experts": 3, "expert_params": TINY, **params})


def test_identity_class_survives_a_pipeline_save_and_load(tmp_path):
    spec = {"backbone": {"type": "experts", "params": {"experts": 2, "expert_params": TINY, "identity": [1]}}}
    pipe = Pipeline.from_spec(spec)
    pipe.save(tmp_path)
    loaded = Pipeline.load(tmp_path)
    assert isinstance(loaded.backbone.nets[1], torch.nn.Identity)
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded.backbone(x, Conditioning(vector=torch.tensor([[0.0, 1.0]]))), x)
