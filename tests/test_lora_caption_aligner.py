"""VLMIR LoRA caption aligner (tiny open_clip config, random init, CPU)."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("open_clip")
pytest.importorskip("peft")

from vlir.core.io import save_safetensors  # noqa: E402
from vlir.plugins.perceivers.lora_caption_aligner import DEGRADATIONS, LoraCaptionAligner  # noqa: E402

TINY = {"model": "vlir-tiny", "pretrained": None}


def tiny(seed: int = 0, **kw) -> LoraCaptionAligner:
    torch.manual_seed(seed)  # same seed -> same random CLIP, LoRA and head
    return LoraCaptionAligner(**{**TINY, **kw})


def batch(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "lq": torch.rand(4, 3, 32, 40, generator=g),
        "gt": torch.rand(4, 3, 32, 40, generator=g),
        "caption": ["a red car on a road", "a dog on the grass", "a small house", "waves on the sea"],
        "lq_caption": ["a blurry red car", "a noisy photo of a dog", "a hazy house", "a dark sea"],
        "degradation_name": ["motion-blurry", "noisy", "hazy", "low-light"],
    }


def train(m: LoraCaptionAligner, steps: int, b: dict) -> list[float]:
    opt = torch.optim.Adam([q for q in m.parameters() if q.requires_grad], lr=3e-3)
    losses = []
    for _ in range(steps):
        out = m.objective(b)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out["loss"].detach()))
    return losses


@pytest.fixture(scope="module")
def trained():
    m = tiny()
    base = {k: v.clone() for k, v in m.state_dict().items() if "lora_" not in k and not k.startswith("head.")}
    losses = train(m, 20, batch())
    m.eval()
    return m, losses, base


def test_loss_falls_and_base_stays_frozen(trained):
    m, losses, base = trained
    assert losses[-1] < 0.6 * losses[0], losses
    out = m.objective(batch())
    assert set(out) >= {"loss", "align_image", "align_caption", "content", "orthogonal", "degradation", "accuracy"}
    sd = m.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in base.items())  # frozen CLIP untouched


def test_only_lora_and_predictor_train():
    m = tiny()
    names = [n for n, q in m.named_parameters() if q.requires_grad]
    assert names and all("lora_" in n or n.startswith("head.") for n in names)
    assert any(n.startswith("clip.visual.") and "lora_" in n for n in names)
    assert any(n.startswith("clip.transformer.") and "lora_" in n for n in names)
    assert any("mlp.c_fc" in n for n in names) and any("mlp.c_proj" in n for n in names)
    img = tiny(lora_towers="image", lora_targets=["mlp.c_proj"], align="image")
    lora = [n for n, q in img.named_parameters() if q.requires_grad and "lora_" in n]
    assert lora and all(n.startswith("clip.visual.") and "mlp.c_proj" in n for n in lora)
    txt = tiny(lora_towers="text", align="caption")
    assert all(not n.startswith("clip.visual.") for n, q in txt.named_parameters() if "lora_" in n)


def test_bad_targets_are_clear():
    with pytest.raises(ValueError, match="out_proj"):
        tiny(lora_targets=["attn.out_proj"])
    with pytest.raises(ValueError, match="names no module"):
        tiny(lora_targets=["mlp.nope"])
    with pytest.raises(ValueError, match="lora_towers"):
        tiny(lora_towers="image", align="caption")


def test_adapter_roundtrip(trained, tmp_path):
    m, _, _ = trained
    path = tmp_path / "aligner.safetensors"
    m.save_adapter(path)
    x = batch(1)["lq"]
    fresh = tiny()  # same base CLIP, untrained adapters
    fresh.eval()
    with torch.no_grad():
        ref, before = m(x), fresh(x)
        assert not torch.allclose(ref.content, before.content, atol=1e-4)
        fresh.load_adapter(path)
        after = fresh(x)
    assert torch.equal(after.content, ref.content) and torch.equal(after.degradation, ref.degradation)
    assert torch.equal(after.class_probs, ref.class_probs)
    other = tiny()
    other.load_weights(str(path))  # load_weights recognises adapter files
    other.eval()
    with torch.no_grad():
        assert torch.equal(other(x).content, ref.content)
    with pytest.raises(ValueError, match="lora_rank"):
        tiny(lora_rank=2).load_adapter(path)


def test_merge_keeps_outputs(trained, tmp_path):
    m, _, _ = trained
    m.save_adapter(tmp_path / "a.safetensors")
    merged = tiny()
    merged.load_adapter(tmp_path / "a.safetensors")
    merged.eval()
    x = batch(2)["lq"]
    text = ["a red car on a road", "a noisy photo"]
    with torch.no_grad():
        ref, ref_text = merged(x), merged.encode_text(text)
        merged.merge()
        out, out_text = merged(x), merged.encode_text(text)
    assert not any("lora_" in k or "base_layer" in k for k in merged.state_dict())
    assert torch.allclose(out.content, ref.content, atol=1e-5)
    assert torch.allclose(out.degradation, ref.degradation, atol=1e-5)
    assert torch.allclose(out_text, ref_text, atol=1e-5)
    assert not any(q.requires_grad for q in merged.clip.parameters())
    with pytest.raises(RuntimeError, match="merged"):
        merged.objective(batch())
    save_safetensors(merged.state_dict(), tmp_path / "merged.safetensors")
    again = tiny(seed=5)  # other random base: everything comes from the file
    again.load_weights(str(tmp_path / "merged.safetensors"))
    again.eval()
    assert again.merged
    with torch.no_grad():
        assert torch.equal(again(x).content, out.content)


def test_perception_and_dims():
    m = tiny()
    m.eval()
    with torch.no_grad():
        p = m(batch()["lq"])
    d = LoraCaptionAligner.output_dims(TINY)
    assert d == (32, 32)
    assert p.content.shape == (4, 32) and p.degradation.shape == (4, 32)
    assert p.class_names == DEGRADATIONS and p.class_probs.shape == (4, len(DEGRADATIONS))
    assert torch.allclose(p.class_probs.sum(-1), torch.ones(4), atol=1e-5)
    assert torch.allclose(p.content + p.degradation, p.extras["image_embedding"], atol=1e-5)
    cond = p.to_conditioning()
    assert cond.tokens.shape == (4, 1, d[1]) and cond.vector.shape == (4, d[0])
    assert len(p.top()) == 4 and p.top()[0][0] in DEGRADATIONS


def test_labels_and_missing_inputs():
    m = tiny(align="image")
    b = batch()
    b.pop("degradation_name")
    b["degradation"] = torch.tensor([0, 4, 1, 3])
    out = m.objective(b)
    assert "degradation" in out and "align_caption" not in out
    with pytest.raises(ValueError, match="degradation names"):
        m.objective({**batch(), "degradation_name": ["foggy"] * 4})
    with pytest.raises(KeyError, match="caption"):
        m.objective({"lq": b["lq"]})
    with pytest.raises(KeyError, match="lq_caption"):
        tiny(align="caption").objective({k: v for k, v in batch().items() if k != "lq_caption"})


def test_attention_targets_merge():
    """peft's MultiheadAttention LoRA (opt-in): it changes outputs and merges consistently."""
    m = tiny(lora_targets=["attn", "mlp.c_fc"], lora_towers="image", align="image")
    assert any(".attn." in n and "lora_" in n for n, q in m.named_parameters() if q.requires_grad)
    m.eval()
    x = batch()["lq"]
    with torch.no_grad():
        base = m.encode_image(x)
        for n, q in m.named_parameters():
            if ".attn." in n and "lora_B" in n:
                q.normal_(0, 0.2)
        adapted = m.encode_image(x)
        m.merge()
        merged = m.encode_image(x)
    assert not torch.allclose(adapted, base, atol=1e-3)
    assert torch.allclose(merged, adapted, atol=1e-5)
    assert isinstance(m.clip.visual.transformer.resblocks[0].attn, torch.nn.MultiheadAttention)
