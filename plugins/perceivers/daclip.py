"""DA-CLIP perceiver (Luo et al., ICLR 2024): a trainable controller on a frozen CLIP image encoder.

The controller is a copy of the CLIP vision tower with one zero-initialised ``Linear(width, width)``
after each block. Its block outputs, passed through those linears, are added to the frozen
tower's stream in reversed order (after frozen block ``i`` comes controller block ``L-1-i``, as
the official code pops from the end of a list). The frozen head on the controlled stream gives
the content embedding; the controller's own head gives the degradation embedding, classified
zero-shot against the text embeddings of the degradation words.

``objective: multilabel`` adds a presence head (``_presence.PresenceHead`` on the degradation
embedding and the class text embeddings): ``Perception.presence`` / ``severity`` per class, trained
by BCE on presence and a severity regression on the present classes (targets from the batch's
``parts``, else one-hot of ``degradation_name``); ``class_probs`` is then the presence normalised
over the classes, so routing by the most likely class still works.

The module layout matches the official checkpoint ``daclip_ViT-B-32.pt`` (``clip.*``,
``visual_control.*``, ``logit_scale``); ``load_weights`` reads it directly, and a multi-label
model read from it (or from a single-label vlir perceiver) keeps its fresh presence head.
"""
from __future__ import annotations

import copy
import logging
from typing import Any, Literal, Mapping

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn

from vlir.core.classes import DACLIP_WORDS
from vlir.core.components import Perceiver
from vlir.core.conditioning import Perception

from . import _clip, _presence

log = logging.getLogger("vlir.perceivers")
DEGRADATIONS = list(DACLIP_WORDS)  # classes when the spec's data names none (vlir.core.classes)


class ControlTransformer(nn.Module):
    """A copy of the CLIP vision blocks plus one zero-initialised linear per block.

    ``forward(x)`` runs the blocks on the controller's own stream (left unmodified by the
    linears) and returns ``(x, hiddens)`` with ``hiddens[i] = zero_modules[i](block_i output)``.
    """

    def __init__(self, transformer: nn.Module):
        super().__init__()
        self.transformer = transformer
        width = transformer.width
        self.zero_modules = nn.ModuleList(nn.Linear(width, width) for _ in range(len(transformer.resblocks)))
        for z in self.zero_modules:
            nn.init.zeros_(z.weight)
            nn.init.zeros_(z.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        hiddens = []
        for block, zero in zip(self.transformer.resblocks, self.zero_modules):
            x = _run_block(self.transformer, block, x)
            hiddens.append(zero(x))
        return x, hiddens


def _run_block(transformer: nn.Module, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """One open_clip residual block on batch-first tokens ``[B, N, C]``."""
    if getattr(transformer, "batch_first", True):
        return block(x)
    return block(x.transpose(0, 1)).transpose(0, 1)


def _head(visual: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """ln_post + pooling (CLS) + projection of an open_clip VisionTransformer."""
    pooled, _ = visual._pool(x)
    if visual.proj is not None:
        pooled = pooled @ visual.proj
    return pooled


def info_nce(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric CLIP InfoNCE between matching rows of normalised ``a`` and ``b``."""
    logits = scale * a @ b.t()
    labels = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))


class DACLIP(Perceiver):
    """DA-CLIP: content + degradation embeddings and zero-shot degradation classes."""

    class Params(Perceiver.Params):
        model: str = "ViT-B-32"  # open_clip model name
        pretrained: str | None = "laion2b_s34b_b79k"  # open_clip tag, CLIP or DA-CLIP checkpoint file, or None
        degradations: list[str] = Field(default_factory=lambda: list(DEGRADATIONS))
        prompt: str = "{}"  # prompt template of a degradation word (DA-CLIP uses the bare word)
        # contrastive / cross_entropy: one class per image; multilabel: presence and severity per class
        objective: Literal["contrastive", "cross_entropy", "multilabel"] = "contrastive"
        normalize: bool = False  # return L2-normalised embeddings (DA-CLIP feeds them unnormalised)
        resize: bool = True  # open_clip's resize; False: centre crop at native resolution (see _clip.preprocess)
        views: int = Field(1, ge=1, le=8)  # >1: also a views x views grid of crops; their logits and embeddings averaged

        @field_validator("prompt")
        @classmethod
        def _template(cls, v: str) -> str:
            if v.count("{}") != 1:
                raise ValueError(f"prompt: expected one '{{}}' for the degradation word, got {v!r}")
            return v

        _classes = field_validator("degradations")(Perceiver.check_class_words)

    def __init__(self, params=None, **overrides: Any):
        super().__init__(params, **overrides)
        p = self.params
        full = None
        pretrained = p.pretrained
        if pretrained and _clip.is_checkpoint_path(pretrained):
            from vlir.core.io import CheckpointError, load_checkpoint

            obj = load_checkpoint(pretrained)
            try:
                keys = self._flat(obj)
            except CheckpointError as e:
                raise CheckpointError(f"daclip pretrained {pretrained}: {e}") from e
            if any(k.startswith("visual_control.") for k in keys):
                full = obj  # a DA-CLIP checkpoint: build empty, load everything below
                pretrained = None
        # lite: on the meta device (Pipeline.load) the weights come next, open_clip need not be imported
        self.clip, self.tokenizer = _clip.create_clip(p.model, None if full is not None else pretrained, lite=True)
        self.visual_control = copy.deepcopy(self.clip.visual)
        self.visual_control.transformer = ControlTransformer(self.visual_control.transformer)
        self.logit_scale = nn.Parameter(self.clip.logit_scale.detach().clone())
        _clip.freeze(self.clip)
        for q in self.visual_control.parameters():
            q.requires_grad_(True)
        self._text_cache: tuple[Any, torch.Tensor] | None = None
        if full is not None:
            from vlir.core.io import load_state_dict_checked

            load_state_dict_checked(self, self.convert_checkpoint(full), source=f"DA-CLIP checkpoint {p.pretrained}")
        if p.objective == "multilabel":  # after the checkpoint: the official one has no such head
            self.presence_head = _presence.PresenceHead(_clip.embed_dim(p.model), len(p.degradations), text=True)

    # -- info ------------------------------------------------------------------------------
    @classmethod
    def output_dims(cls, params) -> tuple[int | None, int | None]:
        if isinstance(params, Mapping) or params is None:
            params = cls.Params(**(params or {}))
        d = _clip.embed_dim(params.model)
        return d, d

    def train(self, mode: bool = True) -> "DACLIP":
        super().train(mode)
        self.clip.eval()  # frozen
        self._text_cache = None
        return self

    def _load_from_state_dict(self, *args, **kwargs):  # weights change: drop cached text embeddings
        self._text_cache = None
        super()._load_from_state_dict(*args, **kwargs)

    # -- encoders --------------------------------------------------------------------------
    def encode(self, lq: torch.Tensor, views: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """(content, degradation) embeddings ``[B * V, D]`` (unnormalised) of images in [0, 1]:
        ``V`` crops of each image for ``views`` > 1 (see ``_clip.preprocess``), else one."""
        size, mean, std = _clip.preprocess_cfg(self.clip)
        return self.encode_crops(_clip.preprocess(lq, size, mean, std, resize=self.params.resize, views=views))

    def encode_crops(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(content, degradation) embeddings ``[N, D]`` of preprocessed crops ``[N, 3, S, S]``:
        the image towers alone (what ``vlir export onnx`` exports)."""
        x = x.to(self.visual_control.conv1.weight.dtype)
        frozen = self.clip.visual
        ctrl, hiddens = self.visual_control.transformer(self.visual_control._embeds(x))
        degradation = _head(self.visual_control, ctrl)
        h = frozen._embeds(x)
        blocks = frozen.transformer.resblocks
        for i, block in enumerate(blocks):
            h = _run_block(frozen.transformer, block, h)
            h = h + hiddens[len(blocks) - 1 - i]
        content = _head(frozen, h)
        return content, degradation

    def _text_grad(self) -> bool:
        return torch.is_grad_enabled() and any(q.requires_grad for q in self.clip.transformer.parameters())

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """Normalised CLIP text embeddings ``[N, D]``."""
        with torch.set_grad_enabled(self._text_grad()):
            return _clip.encode_text(self.clip, self.tokenizer, texts, normalize=True)

    def degradation_text(self) -> torch.Tensor:
        """Normalised text embeddings ``[K, D]`` of the degradation prompts (cached in eval mode)."""
        device = self.logit_scale.device
        autocast = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else None
        key = (device, self.logit_scale.dtype, autocast)  # a bf16 run's embeddings are not an fp32 run's
        if not self.training and self._text_cache is not None and self._text_cache[0] == key:
            return self._text_cache[1]
        emb = self.encode_text([self.params.prompt.format(w) for w in self.params.degradations])
        if not self.training:
            emb = emb.detach()
            self._text_cache = (key, emb)
        return emb

    def scale(self) -> torch.Tensor:
        return self.logit_scale.exp().clamp(max=100.0)

    # -- perceiver API ---------------------------------------------------------------------
    def forward(self, lq: torch.Tensor) -> Perception:
        """Embeddings and class probabilities of a batch; with ``views`` > 1 the mean over each
        image's crops of their embeddings and of their class logits (a degradation seen in a few
        crops, such as sparse rain, still counts; training always sees one crop)."""
        content, degradation = self.encode(lq, self.params.views)
        text = self.degradation_text()
        logits = self.scale() * F.normalize(degradation, dim=-1) @ text.t()
        outs = [content, degradation, logits]
        if self.multilabel:  # raw presence logits and severity, averaged over the views like the logits
            outs += self.presence_head.raw(degradation, text)
        if content.shape[0] != lq.shape[0]:
            outs = [t.unflatten(0, (lq.shape[0], -1)).mean(1) for t in outs]
        content, degradation, logits = outs[:3]
        if self.params.normalize:
            content, degradation = F.normalize(content, dim=-1), F.normalize(degradation, dim=-1)
        if not self.multilabel:
            return Perception(content=content, degradation=degradation, class_names=self.class_names,
                              class_probs=logits.softmax(dim=-1), extras={"degradation_logits": logits})
        raw, severity = outs[3:]
        presence = self.presence_head.calibrated(raw).sigmoid()
        return Perception(content=content, degradation=degradation, class_names=self.class_names,
                          class_probs=_presence.class_probs(presence), presence=presence, severity=severity,
                          extras={"degradation_logits": logits, "presence_logits": raw})

    def objective(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Caption/content InfoNCE + degradation term (DA-CLIP contrastive, K-way cross-entropy, or
        multi-label: presence BCE + severity regression, ``_presence.losses``)."""
        lq = batch["lq"]
        content, degradation = self.encode(lq)
        raw_degradation = degradation
        content, degradation = F.normalize(content, dim=-1), F.normalize(degradation, dim=-1)
        scale = self.scale()
        multilabel = self.multilabel
        labels = None if multilabel else self.class_labels(batch, lq.device)  # multi-label: _presence targets
        out: dict[str, torch.Tensor] = {}
        if batch.get("caption") is not None:
            captions = list(batch["caption"])
            if len(captions) != lq.shape[0]:
                raise ValueError(f"daclip objective: {len(captions)} captions for {lq.shape[0]} images")
            out["content"] = info_nce(content, self.encode_text(captions), scale)
        words = self.degradation_text()
        if multilabel:
            presence, severity = _presence.perceiver_targets(self, batch, lq.device, "daclip objective")
            raw, predicted = self.presence_head.raw(raw_degradation, words)
            out.update(_presence.losses(raw, predicted, presence, severity, self.class_names))
            out["degradation"] = out["presence"] + out["severity"]
            out["loss"] = out["degradation"] + out.get("content", 0.0)
            return out
        logits = scale * degradation @ words.t()
        if self.params.objective == "contrastive":
            out["degradation"] = info_nce(degradation, words[labels], scale)
        else:
            out["degradation"] = F.cross_entropy(logits, labels)
        out["accuracy"] = (logits.argmax(dim=-1) == labels).float().mean().detach()
        out["loss"] = out["degradation"] + out.get("content", 0.0)
        return out

    # -- checkpoints -----------------------------------------------------------------------
    @staticmethod
    def _flat(obj: Any) -> dict[str, Any]:
        from vlir.core.io import unwrap_state_dict

        return unwrap_state_dict(obj)

    def convert_checkpoint(self, obj: Any) -> dict[str, torch.Tensor]:
        """Official DA-CLIP checkpoint (or a plain CLIP state dict) -> this module's state dict.

        DA-CLIP: unwraps ``state_dict``, strips ``module.`` and drops the duplicate ``visual.*``
        alias. Plain CLIP: keys go under ``clip.`` and the controller starts as a copy of the
        visual tower with zero linears (DA-CLIP's initialisation).
        """
        sd = self._flat(obj)
        if any(k.startswith("clip.") for k in sd):
            return self._fresh_presence({k: v for k, v in sd.items() if not k.startswith("visual.")})
        if "visual.conv1.weight" not in sd:
            raise ValueError("daclip checkpoint: neither a DA-CLIP checkpoint (clip.*, visual_control.*) "
                             "nor an open_clip CLIP state dict (visual.conv1.weight missing)")
        out = {f"clip.{k}": v for k, v in sd.items()}
        own = self.state_dict()
        for k, v in sd.items():
            if k.startswith("visual."):
                k2 = "visual_control." + k[len("visual."):].replace("transformer.resblocks.",
                                                                   "transformer.transformer.resblocks.")
                out[k2] = v
        for k, v in own.items():
            if k.startswith("visual_control.transformer.zero_modules."):
                out[k] = torch.zeros_like(v, device="cpu")
        if "logit_scale" in sd:
            out["logit_scale"] = sd["logit_scale"]
        return self._fresh_presence(out)

    def _fresh_presence(self, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A multi-label model read from a checkpoint without a presence head (the official DA-CLIP
        one, or a single-label vlir perceiver) keeps its own freshly initialised head, to be trained."""
        head = getattr(self, "presence_head", None)
        if head is None or any(k.startswith("presence_head.") for k in sd):
            return sd
        log.info("daclip: the checkpoint has no presence head (single-label); the multi-label head starts fresh")
        return {**sd, **{f"presence_head.{k}": v for k, v in head.state_dict().items()}}
