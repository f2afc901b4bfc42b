"""DA-CLIP perceiver and the shared CLIP helpers (tiny open_clip config, CPU)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

open_clip = pytest.importorskip("open_clip")

from conftest import SHARED  # noqa: E402
from vlir.core.io import CheckpointError  # noqa: E402
from vlir.plugins.perceivers import _clip  # noqa: E402
from vlir.plugins.perceivers.daclip import DACLIP, DEGRADATIONS  # noqa: E402

TINY = {"model": "vlir-tiny", "pretrained": None}


def tiny(**kw) -> DACLIP:
    torch.manual_seed(0)
    return DACLIP(**{**TINY, **kw})


def perturb(m: DACLIP, seed: int = 1) -> None:
    """Random zero modules and a slightly different controller, so injection matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for z in m.visual_control.transformer.zero_modules:
            z.weight.copy_(0.3 * torch.randn(z.weight.shape, generator=g))
            z.bias.copy_(0.3 * torch.randn(z.bias.shape, generator=g))
        for q in m.visual_control.parameters():
            q.add_(0.02 * torch.randn(q.shape, generator=g))


def images(b=3, h=40, w=48, seed=0):
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


# -- structure --------------------------------------------------------------------------------
def test_zero_init_equals_plain_clip():
    m = tiny().eval()
    x = images()
    with torch.no_grad():
        content, degradation = m.encode(x)
        plain = _clip.encode_image(m.clip, x)
    assert content.shape == (3, 32)
    torch.testing.assert_close(content, plain, atol=1e-6, rtol=0)
    # the controller starts as a copy of the visual tower
    torch.testing.assert_close(degradation, plain, atol=1e-6, rtol=0)


def _by_hand(m: DACLIP, x: torch.Tensor, reverse: bool = True):
    """Independent DA-CLIP forward: ViT stem/head written out, blocks called one by one."""
    x = _clip.preprocess(x, 32)

    def stem(v):
        t = v.conv1(x).flatten(2).transpose(1, 2)  # B, N, C
        cls = v.class_embedding.view(1, 1, -1).expand(t.shape[0], 1, -1)
        t = torch.cat([cls, t], dim=1) + v.positional_embedding
        return v.ln_pre(t)

    def head(v, t):
        return v.ln_post(t[:, 0]) @ v.proj

    ctrl = m.visual_control
    c = stem(ctrl)
    hiddens = []
    for block, zero in zip(ctrl.transformer.transformer.resblocks, ctrl.transformer.zero_modules):
        c = block(c)
        hiddens.append(zero(c))
    frozen = m.clip.visual
    h = stem(frozen)
    for i, block in enumerate(frozen.transformer.resblocks):
        h = block(h)
        h = h + (hiddens.pop() if reverse else hiddens[i])
    return head(frozen, h), head(ctrl, c)


def test_reversed_injection_order():
    m = tiny().eval()
    perturb(m)
    x = images()
    with torch.no_grad():
        content, degradation = m.encode(x)
        ref_content, ref_degradation = _by_hand(m, x, reverse=True)
        fwd_content, _ = _by_hand(m, x, reverse=False)
        plain = _clip.encode_image(m.clip, x)
    torch.testing.assert_close(content, ref_content, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(degradation, ref_degradation, atol=1e-5, rtol=1e-5)
    # the test can tell the orders apart, and the controller changes the content embedding
    assert (content - fwd_content).abs().max() > 1e-3
    assert (content - plain).abs().max() > 1e-3


def test_only_controller_and_logit_scale_train():
    m = tiny()
    trainable = {n for n, q in m.named_parameters() if q.requires_grad}
    assert trainable, "nothing to train"
    assert all(n.startswith("visual_control.") or n == "logit_scale" for n in trainable)
    assert "logit_scale" in trainable
    assert all(q.requires_grad for q in m.visual_control.parameters())
    assert not any(q.requires_grad for q in m.clip.parameters())


def test_vit_b_32_layout_and_size_on_meta():
    with torch.device("meta"):
        m = DACLIP(pretrained=None)
    assert next(m.parameters()).is_meta
    total = sum(q.numel() for q in m.parameters())  # unique parameters
    trainable = sum(q.numel() for q in m.parameters() if q.requires_grad)
    assert total == 246_213_634
    assert trainable == 94_936_321  # controller 94,936,320 + logit scale
    assert DACLIP.output_dims(m.params) == (512, 512)
    keys = list(m.state_dict())
    # official checkpoint: 631 keys = these 479 + the 152 'visual.*' alias
    assert len(keys) == 479
    assert sum(k.startswith("clip.visual.") for k in keys) == 152
    assert sum(k.startswith("clip.") and not k.startswith("clip.visual.") for k in keys) == 150
    assert sum(k.startswith("visual_control.") for k in keys) == 176
    assert "visual_control.transformer.transformer.resblocks.11.attn.in_proj_weight" in keys
    assert "visual_control.transformer.zero_modules.11.bias" in keys
    assert "logit_scale" in keys and "clip.logit_scale" in keys


def test_output_dims_tiny():
    assert DACLIP.output_dims(DACLIP.Params(**TINY)) == (32, 32)
    assert DACLIP.output_dims(TINY) == (32, 32)


# -- checkpoints ------------------------------------------------------------------------------
def _official_checkpoint(m: DACLIP, path: Path) -> None:
    sd = {k: v.detach().clone() for k, v in m.state_dict().items()}
    alias = {"visual." + k[len("clip.visual."):]: v.clone() for k, v in sd.items() if k.startswith("clip.visual.")}
    full = {f"module.{k}": v for k, v in {**sd, **alias}.items()}
    obj = {
        "epoch": np.int64(7),
        "name": "daclip_ViT-B-32",
        "state_dict": full,
        "optimizer": {"state": {}, "param_groups": [{"lr": np.float64(3e-5), "weight_decay": 0.1, "params": [0, 1]}]},
    }
    torch.save(obj, path)


def test_official_layout_checkpoint_loads_strictly(tmp_path):
    src = tiny()
    perturb(src, seed=3)
    path = tmp_path / "daclip_tiny.pt"
    _official_checkpoint(src, path)

    dst = tiny()
    dst.load_weights(str(path))  # strict
    for k, v in src.state_dict().items():
        torch.testing.assert_close(dst.state_dict()[k], v, atol=0, rtol=0)

    # pretrained may point at the checkpoint too
    dst2 = DACLIP(model="vlir-tiny", pretrained=str(path)).eval()
    x = images()
    with torch.no_grad():
        a, b = src.eval().encode(x)
        c, d = dst2.encode(x)
    torch.testing.assert_close(a, c)
    torch.testing.assert_close(b, d)


def test_checkpoint_mismatch_is_reported(tmp_path):
    src = tiny()
    sd = {k: v for k, v in src.state_dict().items() if "zero_modules.1" not in k}
    path = tmp_path / "broken.pt"
    torch.save({"epoch": 1, "state_dict": sd}, path)
    with pytest.raises(CheckpointError, match="zero_modules.1"):
        tiny().load_weights(str(path))


def test_plain_clip_state_dict_initialises_controller(tmp_path):
    torch.manual_seed(5)
    clip, _ = _clip.create_clip("vlir-tiny", None)
    path = tmp_path / "clip.pt"
    torch.save(clip.state_dict(), path)
    m = tiny()
    m.load_weights(str(path))
    x = images()
    with torch.no_grad():
        content, degradation = m.eval().encode(x)
        ref = _clip.encode_image(clip, x)
    torch.testing.assert_close(content, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(degradation, ref, atol=1e-5, rtol=1e-5)
    # create_clip reads the same file as pretrained
    clip2, _ = _clip.create_clip("vlir-tiny", str(path))
    for k, v in clip.state_dict().items():
        torch.testing.assert_close(clip2.state_dict()[k], v, atol=0, rtol=0)


def test_pretrained_errors(tmp_path):
    with pytest.raises(ValueError, match="neither a file nor an open_clip tag"):
        _clip.create_clip("vlir-tiny", "no-such-tag")
    with pytest.raises(CheckpointError, match="no such file"):
        _clip.create_clip("vlir-tiny", str(tmp_path / "missing.pt"))
    with pytest.raises(ValueError, match="not an open_clip config"):
        _clip.create_clip("no-such-model", None)


# -- perception and training ------------------------------------------------------------------
def test_classification_named_probabilities():
    m = tiny().eval()
    with torch.no_grad():
        p = m(images(b=2))
    assert p.class_names == DEGRADATIONS
    assert p.class_probs.shape == (2, len(DEGRADATIONS))
    torch.testing.assert_close(p.class_probs.sum(-1), torch.ones(2))
    assert p.content.shape == (2, 32) and p.degradation.shape == (2, 32)
    assert set(p.as_dict(0)["degradation"]) == set(DEGRADATIONS)
    name, prob = p.top()[0]
    assert name in DEGRADATIONS and 0 < prob <= 1
    # cos(deg, text) * scale, softmaxed
    text = m.degradation_text()
    logits = m.scale() * F.normalize(p.degradation, dim=-1) @ text.t()
    torch.testing.assert_close(p.class_probs, logits.softmax(-1))


def test_text_cache_follows_mode_and_weights(tmp_path):
    m = tiny().eval()
    first = m.degradation_text()
    assert m.degradation_text() is first  # cached in eval mode
    m.train()
    assert m.degradation_text() is not first  # recomputed while training
    m.eval()
    cached = m.degradation_text()
    other = tiny()
    with torch.no_grad():
        other.clip.token_embedding.weight.mul_(2.0)
    m.load_state_dict(other.state_dict())
    assert not torch.allclose(m.degradation_text(), cached)


@pytest.mark.parametrize("objective", ["contrastive", "cross_entropy"])
def test_objective_steps_lower_loss(objective):
    m = tiny(objective=objective).train()
    batch = {
        "lq": images(b=4, h=32, w=32, seed=2),
        "caption": ["a dog on grass", "a red car", "a city at night", "a bowl of fruit"],
        "degradation": torch.tensor([4, 1, 2, 3]),
    }
    params = [q for q in m.parameters() if q.requires_grad]
    opt = torch.optim.Adam(params, lr=2e-3)
    losses = []
    for _ in range(8):
        out = m.objective(batch)
        assert {"loss", "content", "degradation"} <= set(out)
        opt.zero_grad()
        out["loss"].backward()
        assert all(q.grad is None for q in m.clip.parameters())
        opt.step()
        losses.append(out["loss"].item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_objective_labels_by_name_and_errors():
    m = tiny(objective="cross_entropy")
    lq = images(b=2, h=32, w=32)
    out = m.objective({"lq": lq, "degradation_name": ["noisy", "hazy"]})
    assert "content" not in out and torch.isfinite(out["loss"])
    with pytest.raises(ValueError, match="not in Params.degradations"):
        m.objective({"lq": lq, "degradation_name": ["noisy", "blurry"]})
    with pytest.raises(ValueError, match="out of range"):
        m.objective({"lq": lq, "degradation": torch.tensor([0, 10])})


def test_params_validation():
    with pytest.raises(ValueError):
        DACLIP(**TINY, degradations=[])
    with pytest.raises(ValueError):
        DACLIP(**TINY, objective="hinge")


# -- preprocessing ----------------------------------------------------------------------------
def test_preprocess_matches_open_clip_tensor_transform():
    x = images(b=2, h=45, w=70, seed=4)
    for size in (32, 24):
        tf = open_clip.image_transform(size, is_train=False)
        mean = torch.tensor(_clip.OPENAI_MEAN).view(3, 1, 1)
        std = torch.tensor(_clip.OPENAI_STD).view(3, 1, 1)
        ref = torch.stack([((tf(im) * std + mean).clamp(0, 1) - mean) / std for im in x])
        out = _clip.preprocess(x, size)
        assert out.shape == (2, 3, size, size)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_preprocess_matches_open_clip_pil_pipeline():
    path = SHARED / "data" / "CBSD68" / "101085.png"
    if not path.is_file():
        pytest.skip(f"shared test image {path} not found (set VLIR_SHARED)")
    from PIL import Image

    img = Image.open(path).convert("RGB")
    x = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)[None].float() / 255
    for size in (224, 32):
        ref = open_clip.image_transform(size, is_train=False)(img)[None]
        out = _clip.preprocess(x, size)
        assert out.shape == ref.shape
        assert (out - ref).abs().mean() < 0.01  # PIL vs tensor bicubic, in normalised units
    # portrait orientation too
    xt = x.transpose(-1, -2)
    ref = open_clip.image_transform(32, is_train=False)(img.transpose(Image.Transpose.TRANSPOSE))[None]
    assert (_clip.preprocess(xt, 32) - ref).abs().mean() < 0.01


def test_preprocess_cfg_and_text_helpers():
    clip, tok = _clip.create_clip("vlir-tiny", None)
    size, mean, std = _clip.preprocess_cfg(clip)
    assert size == 32 and mean == _clip.OPENAI_MEAN and std == _clip.OPENAI_STD
    ids = _clip.tokenize(tok, ["a photo", "noisy"])
    assert ids.shape == (2, 16) and ids.dtype == torch.long
    emb = _clip.encode_text(clip, tok, ["a photo", "noisy"], normalize=True)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(2))
    _clip.register_tiny_configs()
    _clip.register_tiny_configs()  # idempotent
    assert _clip.embed_dim("vlir-tiny") == 32 and _clip.embed_dim("ViT-B-32") == 512


def test_prompt_template():
    with pytest.raises(ValueError, match="prompt"):
        DACLIP(**TINY, prompt="a photo")
    m = tiny(prompt="a {} photo", degradations=["noisy", "hazy"]).eval()
    ref = _clip.encode_text(m.clip, m.tokenizer, ["a noisy photo", "a hazy photo"], normalize=True)
    torch.testing.assert_close(m.degradation_text(), ref)
    assert m(images(b=1)).class_probs.shape == (1, 2)


def test_unsafe_pickle_is_refused(tmp_path):
    import argparse

    m = tiny()
    path = tmp_path / "unsafe.pt"
    torch.save({"state_dict": m.state_dict(), "args": argparse.Namespace(lr=1.0)}, path)
    with pytest.raises(CheckpointError, match="weights_only"):
        m.load_weights(str(path))
    with pytest.raises(CheckpointError):
        DACLIP(model="vlir-tiny", pretrained=str(path))


def test_native_resolution_crop_keeps_pixels():
    from vlir.plugins.perceivers import _clip

    x = torch.rand(2, 3, 40, 50)
    out = _clip.preprocess(x, 32, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), resize=False)
    torch.testing.assert_close(out, x[..., 4:36, 9:41])
    small = _clip.preprocess(torch.rand(1, 3, 20, 30), 32, resize=False)  # too small: resized up
    assert small.shape == (1, 3, 32, 32)


def test_views_are_crops_on_the_block_grid():
    x = torch.rand(2, 3, 100, 130)
    out = _clip.preprocess(x, 32, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), resize=False, views=3)
    assert out.shape == (20, 3, 32, 32)  # per image: the centre crop, then a 3x3 grid
    torch.testing.assert_close(out[0], x[0, :, 34:66, 49:81])  # open_clip's centre crop, as views=1
    corners = [(t, l) for t in (0, 32, 64) for l in (0, 48, 96)]  # linspace(0, 68 / 98, 3) rounded down to 16
    for v, (t, l) in enumerate(corners, start=1):
        torch.testing.assert_close(out[v], x[0, :, t:t + 32, l:l + 32])
        torch.testing.assert_close(out[10 + v], x[1, :, t:t + 32, l:l + 32])
    same = torch.rand(1, 3, 32, 32)  # one position only: one view
    assert _clip.preprocess(same, 32, resize=False, views=4).shape == (1, 3, 32, 32)


def test_views_average_logits_and_embeddings():
    m = tiny(resize=False, views=2).eval()
    perturb(m)
    x = images(b=2, h=48, w=64)
    crops = [(8, 16), (0, 0), (0, 32), (16, 0), (16, 32)]  # centre, then the 2x2 grid
    with torch.no_grad():
        p = m(x)
        m.params.views = 1
        for b in range(2):
            each = m(torch.cat([x[b:b + 1, :, t:t + 32, l:l + 32] for t, l in crops]))
            logits = each.extras["degradation_logits"].mean(0)
            torch.testing.assert_close(p.extras["degradation_logits"][b], logits)
            torch.testing.assert_close(p.class_probs[b], logits.softmax(-1))
            torch.testing.assert_close(p.degradation[b], each.degradation.mean(0))
            torch.testing.assert_close(p.content[b], each.content.mean(0))
    assert p.class_probs.shape == (2, len(DEGRADATIONS)) and p.content.shape == (2, 32)
    with pytest.raises(Exception, match="views"):
        tiny(views=0)
