"""Perceive-IR quality perceiver: frozen CLIP + learned (CoOp) prompts for three quality tiers.

Three classes, the quality tiers low / medium / high with class words terrible / mediocre /
excellent (``vlir.core.classes``).
Each class has its own ``n_ctx`` learnable context vectors (width of the text transformer). The
prompt fed to the text tower is ``[SOS] ctx_1 .. ctx_n . [EOS]``: the class word is not appended
as a fixed token; instead the last context vector(s) start as the token embedding of the class
word (all BPE tokens of it, if it has several) and the others start as N(0, 0.02) noise, CoOp's
random init. So "16 learnable context tokens, last one initialised from the class word" holds
literally and the whole prompt, word included, is learned. Everything else (CLIP) is frozen.

The learned prompts go through open_clip's text tower exactly as ``CLIP.encode_text`` runs token
ids (token embedding replaced by the prompt vectors at the context positions; positional
embedding, causal transformer, ``ln_final``, pooling at the EOT token, ``text_projection``).

Logits are ``logit_scale * cos(image, prompt)`` with a fixed ``logit_scale = 100`` (the paper's
100·cos, CLIP's trained maximum). ``quality_score`` is the expected quality with tiers valued
0, 0.5, 1: ``p_medium * 0.5 + p_high``, in [0, 1].

Outputs for conditioning (``output_dims = (3, D)``): the vector is the quality distribution
(``Perception.quality_probs``, read by ``Perception.to_conditioning`` when there is no
degradation embedding) and the content token is the CLIP image embedding ``[B, D]``.

``presence: [class words]`` adds a multi-label degradation head (``_presence.PresenceHead``) on the
image embedding: ``Perception.presence`` / ``severity`` per class (``class_probs``: the presence
normalised), trained with the prompts by BCE on presence (``lq``: from ``batch['parts']`` or the
class labels; ``gt``: nothing present) + severity regression on the present classes.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from open_clip.transformer import text_global_pool
from pydantic import Field, field_validator
from torch import nn

from vlir.core.classes import QUALITY_TIERS, QUALITY_WORDS, TIER_VALUES
from vlir.core.components import Perceiver
from vlir.core.conditioning import Perception

from . import _clip, _presence

CLASS_WORDS = list(QUALITY_WORDS)  # of QUALITY_TIERS low, medium, high (vlir.core.classes)


class QualityPerceiver(Perceiver):
    """Frozen CLIP image encoder scored against three learned quality prompts."""

    class Params(Perceiver.Params):
        model: str = "ViT-B-32"  # open_clip model name
        pretrained: str | None = "laion2b_s34b_b79k"  # open_clip tag, CLIP checkpoint file, or None
        n_ctx: int = Field(16, ge=1)  # learnable context tokens per class
        class_words: list[str] = Field(default_factory=lambda: list(CLASS_WORDS))
        ctx_init_std: float = Field(0.02, ge=0.0)  # std of the random part of the context init
        logit_scale: float = Field(100.0, gt=0.0)  # logits = logit_scale * cos(image, prompt)
        # class words of a multi-label presence head (None: none; not 'degradations', which a spec's
        # data would fill in for every quality perceiver)
        presence: list[str] | None = None

        @field_validator("presence")
        @classmethod
        def _presence_words(cls, v: list[str] | None) -> list[str] | None:
            return None if v is None else Perceiver.check_class_words(v)

        @field_validator("class_words")
        @classmethod
        def _three(cls, v: list[str]) -> list[str]:
            if len(v) != len(QUALITY_TIERS) or any(not w.strip() for w in v):
                raise ValueError(f"class_words: give {len(QUALITY_TIERS)} non-empty words for "
                                 f"{', '.join(QUALITY_TIERS)}; got {v}")
            return v

    def __init__(self, params=None, **overrides: Any):
        super().__init__(params, **overrides)
        p = self.params
        self.clip, self.tokenizer = _clip.create_clip(p.model, p.pretrained)
        _clip.freeze(self.clip)
        self.clip.eval()
        for attr in ("token_embedding", "positional_embedding", "transformer", "ln_final",
                     "text_projection", "attn_mask"):
            if not hasattr(self.clip, attr):
                raise TypeError(
                    f"quality_perceiver: CLIP model {p.model!r} ({type(self.clip).__name__}) has no "
                    f"'{attr}'; learned prompts need open_clip's CLIP class with its built-in text tower"
                )
        context_length = self.clip.positional_embedding.shape[0]
        if p.n_ctx + 3 > context_length:
            raise ValueError(f"quality_perceiver: n_ctx={p.n_ctx} does not fit the text context of "
                             f"{p.model!r} ({context_length} tokens incl. SOS, '.', EOS)")
        # placeholder prompt "X X .. X." : positions 1..n_ctx are replaced by the learned vectors
        ids = _clip.tokenize(self.tokenizer, [" ".join(["X"] * p.n_ctx) + "."] * len(QUALITY_TIERS))
        self.register_buffer("prompt_ids", ids, persistent=False)
        emb = self.clip.token_embedding.weight
        ctx = torch.randn(len(QUALITY_TIERS), p.n_ctx, emb.shape[1], dtype=emb.dtype) * p.ctx_init_std
        for k, word in enumerate(p.class_words):
            word_ids = _clip.tokenize(self.tokenizer, [word])[0]
            word_ids = word_ids[1:int(word_ids.argmax())]  # strip SOS and EOS (EOS has the top id)
            if len(word_ids) > p.n_ctx:
                raise ValueError(f"quality_perceiver: class word {word!r} has {len(word_ids)} tokens, "
                                 f"more than n_ctx={p.n_ctx}")
            ctx[k, p.n_ctx - len(word_ids):] = emb[word_ids].detach()
        self.ctx = nn.Parameter(ctx)
        if p.presence is not None:
            self.presence_head = _presence.PresenceHead(_clip.embed_dim(p.model), len(p.presence))

    # -- info ------------------------------------------------------------------------------
    @classmethod
    def output_dims(cls, params) -> tuple[int | None, int | None]:
        if isinstance(params, Mapping) or params is None:
            params = cls.Params(**(params or {}))
        return len(QUALITY_TIERS), _clip.embed_dim(params.model)

    @classmethod
    def class_words(cls, params) -> list[str]:
        return list(params.presence or [])

    def train(self, mode: bool = True) -> "QualityPerceiver":
        super().train(mode)
        self.clip.eval()  # frozen
        return self

    # -- encoders --------------------------------------------------------------------------
    def encode_prompts(self, ctx: torch.Tensor | None = None) -> torch.Tensor:
        """Text embeddings ``[3, D]`` (unnormalised) of the learned prompts (or of ``ctx``)."""
        clip = self.clip
        ctx = self.ctx if ctx is None else ctx
        ids = self.prompt_ids
        dtype = clip.transformer.get_cast_dtype()
        x = clip.token_embedding(ids).to(dtype)
        x = torch.cat([x[:, :1], ctx.to(dtype), x[:, 1 + ctx.shape[1]:]], dim=1)
        x = x + clip.positional_embedding.to(dtype)
        x = clip.transformer(x, attn_mask=clip.attn_mask)
        x = clip.ln_final(x)
        x = text_global_pool(x, ids, clip.text_pool_type, eos_token_id=getattr(clip, "text_eos_id", None))
        proj = clip.text_projection
        if proj is not None:
            x = proj(x) if isinstance(proj, nn.Linear) else x @ proj
        return x

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """CLIP image embeddings ``[B, D]`` (unnormalised) of images in [0, 1]."""
        size, mean, std = _clip.preprocess_cfg(self.clip)
        return self.encode_crops(_clip.preprocess(images, size, mean, std))

    def encode_crops(self, x: torch.Tensor) -> torch.Tensor:
        """CLIP image embeddings ``[N, D]`` of preprocessed crops ``[N, 3, S, S]``: the image
        tower alone (what ``vlir export onnx`` exports)."""
        return self.clip.encode_image(x)

    def logits(self, image_emb: torch.Tensor) -> torch.Tensor:
        """``[B, 3]`` logits = logit_scale * cos(image, prompt)."""
        text = F.normalize(self.encode_prompts(), dim=-1)
        return self.params.logit_scale * F.normalize(image_emb, dim=-1) @ text.t()

    # -- perceiver API ---------------------------------------------------------------------
    def forward(self, lq: torch.Tensor) -> Perception:
        """Quality probabilities and score of ``lq``; differentiable w.r.t. the images."""
        image = self.encode_image(lq)
        logits = self.logits(image)
        probs = logits.softmax(dim=-1)
        values = torch.tensor(TIER_VALUES, dtype=probs.dtype, device=probs.device)
        if not self.multilabel:
            return Perception(content=image, quality_probs=probs, quality_score=probs @ values,
                              extras={"quality_logits": logits})
        raw, presence, severity = self.presence_head(image)
        return Perception(content=image, quality_probs=probs, quality_score=probs @ values,
                          class_names=self.class_names, class_probs=_presence.class_probs(presence),
                          presence=presence, severity=severity,
                          extras={"quality_logits": logits, "presence_logits": raw})

    def objective(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Cross-entropy over the three tiers: ``lq`` -> 0, ``medium`` -> 1 (if given), ``gt`` -> 2."""
        parts, labels = [], []
        for key, label in (("lq", 0), ("medium", 1), ("gt", 2)):
            img = batch.get(key)
            if img is None:
                if key == "medium":
                    continue
                raise KeyError(f"quality_perceiver objective: batch needs '{key}' images [B, 3, H, W]")
            parts.append(img)
            labels.append(torch.full((img.shape[0],), label, dtype=torch.long, device=img.device))
        with torch.no_grad():  # frozen CLIP: only the prompts train
            image = torch.cat([self.encode_image(x) for x in parts])
        labels = torch.cat(labels)
        logits = self.logits(image)
        loss = F.cross_entropy(logits, labels)
        accuracy = (logits.argmax(dim=-1) == labels).float().mean().detach()
        out = {"loss": loss, "quality": loss.detach(), "accuracy": accuracy}
        if self.multilabel:  # lq: its parts (or class labels); gt: nothing present
            lq, gt, words = batch["lq"], batch["gt"], self.class_names
            who = "quality_perceiver objective"
            found = _presence.perceiver_targets(self, batch, lq.device, who)
            none = _presence.targets({"parts": [""] * gt.shape[0]}, words, device=gt.device, who=who)
            raw, predicted = self.presence_head.raw(torch.cat([image[:lq.shape[0]], image[-gt.shape[0]:]]))
            parts = _presence.losses(raw, predicted, torch.cat([found[0], none[0]]), torch.cat([found[1], none[1]]),
                                     words)
            out.update(presence=parts["presence"], severity=parts["severity"], presence_accuracy=parts["accuracy"])
            out["loss"] = loss + parts["presence"] + parts["severity"]
        return out
