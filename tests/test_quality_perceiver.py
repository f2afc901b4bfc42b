"""Perceive-IR quality perceiver (tiny open_clip config, random init, CPU)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("open_clip")

from vlir.plugins.perceivers.quality_perceiver import CLASS_WORDS, QualityPerceiver  # noqa: E402

TINY = {"model": "vlir-tiny", "pretrained": None, "n_ctx": 4}


def tiny(seed: int = 0, **kw) -> QualityPerceiver:
    torch.manual_seed(seed)
    return QualityPerceiver(**{**TINY, **kw})


def tiers(n: int = 8, seed: int = 1) -> dict:
    """Smooth low-contrast images (high), mildly noisy (medium), heavily noisy (low)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=g)
    gt = 0.5 + 0.25 * (F.interpolate(coarse, size=32, mode="bilinear", align_corners=False) - 0.5)
    medium = (gt + 0.2 * torch.randn(gt.shape, generator=g)).clamp(0, 1)
    lq = (gt + 0.5 * torch.randn(gt.shape, generator=g)).clamp(0, 1)
    return {"lq": lq, "medium": medium, "gt": gt}


def test_prompt_path_matches_encode_text():
    """Prompt vectors equal to the placeholder tokens' embeddings give CLIP.encode_text exactly."""
    m = tiny()
    ids = m.prompt_ids
    ctx = m.clip.token_embedding(ids)[:, 1:1 + m.params.n_ctx]
    with torch.no_grad():
        assert torch.allclose(m.encode_prompts(ctx), m.clip.encode_text(ids), atol=1e-6)


def test_init_and_trainable():
    m = tiny()
    assert [n for n, q in m.named_parameters() if q.requires_grad] == ["ctx"]
    assert m.ctx.shape == (3, 4, m.clip.token_embedding.weight.shape[1])
    for k, word in enumerate(CLASS_WORDS):
        tok = m.tokenizer([word])[0][1]  # single BPE token after SOS
        assert torch.equal(m.ctx[k, -1].detach(), m.clip.token_embedding.weight[tok])
        assert m.ctx[k, :-1].abs().max() < 0.2  # random part, CoOp's N(0, 0.02)
    with pytest.raises(ValueError, match="n_ctx"):
        tiny(n_ctx=14)  # 14 + SOS + '.' + EOS > 16 tokens of vlir-tiny
    with pytest.raises(ValueError, match="class_words"):
        tiny(class_words=["bad", "good"])


def test_learns_quality_tiers():
    m = tiny()
    data = tiers()
    base = {k: v.clone() for k, v in m.clip.state_dict().items()}
    labels = torch.arange(3).repeat_interleave(8)
    with torch.no_grad():  # the CLIP image tower is frozen: embed once, train the prompts
        emb = torch.cat([m.encode_image(data[k]) for k in ("lq", "medium", "gt")])
    first = m.objective(data)
    assert torch.allclose(first["loss"], F.cross_entropy(m.logits(emb), labels), atol=1e-5)
    opt = torch.optim.Adam([m.ctx], lr=0.01)
    for _ in range(400):  # seeds 0-3 x data 1-3 reached 0.92-1.0 training accuracy
        loss = F.cross_entropy(m.logits(emb), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    last = m.objective(data)
    assert last["loss"] < 0.5 * first["loss"]
    assert last["accuracy"] >= 0.8, float(last["accuracy"])
    m.eval()
    with torch.no_grad():
        scores = {k: m(v).quality_score.mean() for k, v in data.items()}
        pred = torch.cat([m(data[k]).quality_probs.argmax(-1) for k in ("lq", "medium", "gt")])
    assert (pred == labels).float().mean() >= 0.8
    assert scores["lq"] < scores["medium"] < scores["gt"]
    assert all(torch.equal(v, base[k]) for k, v in m.clip.state_dict().items())  # CLIP untouched


def test_perception_outputs():
    m = tiny()
    m.eval()
    x = torch.rand(3, 3, 40, 48, requires_grad=True)
    p = m(x)
    assert p.quality_probs.shape == (3, 3)
    assert torch.allclose(p.quality_probs.sum(-1), torch.ones(3), atol=1e-5)
    assert p.quality_score.shape == (3,) and bool(((p.quality_score >= 0) & (p.quality_score <= 1)).all())
    assert torch.allclose(p.quality_score, p.quality_probs[:, 1] * 0.5 + p.quality_probs[:, 2])
    dims = QualityPerceiver.output_dims(TINY)
    assert dims == (3, 32) and p.content.shape == (3, dims[1])
    cond = p.to_conditioning()
    assert cond.vector.shape == (3, dims[0]) and cond.tokens.shape == (3, 1, dims[1])
    assert set(p.detach().as_dict()["quality"]) == {"low", "medium", "high"}
    # differentiable w.r.t. the image (Perceive-IR's CLIP loss on restored images needs this)
    p.quality_probs[:, 2].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(q.grad is None for q in m.clip.parameters())


def test_objective_without_medium_and_errors():
    m = tiny()
    d = tiers(n=2)
    out = m.objective({"lq": d["lq"], "gt": d["gt"]})
    assert out["loss"].requires_grad and 0 <= float(out["accuracy"]) <= 1
    with pytest.raises(KeyError, match="gt"):
        m.objective({"lq": d["lq"]})
