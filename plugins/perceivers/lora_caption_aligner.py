"""VLMIR stage-1 perceiver: a LoRA-tuned CLIP that aligns low-quality inputs with clean captions.

VLMIR (arXiv 2512.17292) has no public code; what follows is our reading of the paper.

- Base CLIP (open_clip) is frozen. LoRA adapters (``peft``) sit on the residual blocks of the
  image and/or text tower (``lora_towers``); ``lora_targets`` are module names inside a block.
  Default: the MLP linears ``mlp.c_fc`` and ``mlp.c_proj`` (plain ``nn.Linear`` LoRA). ``attn``
  is accepted too (peft's ``nn.MultiheadAttention`` LoRA on in- and out-projection), but peft
  implements it by merging the deltas into the frozen weights before every forward and
  unmerging after, so the "frozen" attention weights drift by float rounding (~1e-8 per step)
  and adapter round trips are exact only up to that drift. ``attn.out_proj`` alone is refused:
  ``nn.MultiheadAttention`` reads its weight directly and never calls a LoRA wrapper there.
- Alignment: ``1 - cos`` between the embedding of the low-quality image (``align`` 'image'),
  and/or of its low-quality caption (``batch['lq_caption']``, 'caption'), and the embedding of
  the high-quality caption ``batch['caption']``. The caption target is encoded with the adapters
  switched off and without gradient (``frozen_target``), so the two sides cannot collapse onto
  each other: there are no negatives in a cosine loss.
- Degradation predictor: a small MLP maps the image embedding ``e`` to a degradation part
  ``d``; the clean-content part is the remainder ``c = e - d`` (an additive split of the
  embedding). ``d`` is classified over ``degradations`` by a linear layer (cross-entropy on
  ``batch['degradation_name']`` or ``batch['degradation']``); ``c`` is aligned with the HQ
  caption by ``1 - cos``; the parts are kept apart by their squared cosine ``cos(d, c)^2``
  (orthogonality, zero when the parts are perpendicular; squared so that anti-aligned parts are
  penalised too).
- ``forward(lq)``: ``content = c`` and ``degradation = d`` (``[B, D]``, unnormalised) plus the
  class probabilities. ``output_dims = (D, D)``.
- ``objective: multilabel``: a presence head (``_presence.PresenceHead``) on ``d`` replaces the
  cross-entropy: ``Perception.presence`` / ``severity`` per class, BCE on presence + severity
  regression (targets from ``batch['parts']``, else one-hot of the class labels); ``class_probs``
  is the presence normalised over the classes.

Adapters are saved and loaded through peft (``save_adapter`` / ``load_adapter``: safetensors with
``clip.*`` = ``get_peft_model_state_dict``, ``head.*`` = the predictor and, multi-label,
``presence_head.*``); ``merge()`` folds them
into the CLIP weights and removes the wrappers (peft's merge-and-unload, layer by layer).
"""
from __future__ import annotations

import json
import re
from contextlib import contextmanager
from typing import Any, Iterator, Literal, Mapping

import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict
from peft.tuners.tuners_utils import BaseTunerLayer
from pydantic import Field, field_validator, model_validator
from torch import nn

from vlir.core.classes import DACLIP_WORDS
from vlir.core.components import Perceiver
from vlir.core.conditioning import Perception

from . import _clip, _presence

DEGRADATIONS = list(DACLIP_WORDS)  # classes when the spec's data names none (vlir.core.classes)
ADAPTER_FORMAT = "vlir-lora-caption-aligner/1"


class DegradationPredictor(nn.Module):
    """Splits an embedding ``e`` into a degradation part ``d = mlp(e)`` and content ``c = e - d``."""

    def __init__(self, dim: int, hidden: int, classes: int):
        super().__init__()
        self.split = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.classifier = nn.Linear(dim, classes)

    def forward(self, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        d = self.split(e)
        return d, e - d, self.classifier(d)


def _one_minus_cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (1.0 - F.cosine_similarity(a, b, dim=-1)).mean()


class LoraCaptionAligner(Perceiver):
    """LoRA-tuned CLIP + degradation predictor (VLMIR stage 1)."""

    class Params(Perceiver.Params):
        model: str = "ViT-B-32"  # open_clip model name
        pretrained: str | None = "laion2b_s34b_b79k"  # open_clip tag, CLIP checkpoint file, or None
        lora_rank: int = Field(8, ge=1)
        lora_alpha: int = Field(16, ge=1)
        lora_dropout: float = Field(0.0, ge=0.0, lt=1.0)
        lora_targets: list[str] = Field(default_factory=lambda: ["mlp.c_fc", "mlp.c_proj"])
        lora_towers: Literal["image", "text", "both"] = "both"
        degradations: list[str] = Field(default_factory=lambda: list(DEGRADATIONS))
        # cross_entropy: one class per image; multilabel: presence and severity per class (_presence)
        objective: Literal["cross_entropy", "multilabel"] = "cross_entropy"
        align: Literal["image", "caption", "both"] = "both"
        frozen_target: bool = True  # HQ caption encoded without adapters and without gradient
        predictor_hidden: int | None = Field(None, ge=1)  # hidden width of the split MLP (None: D)
        w_align: float = Field(1.0, ge=0.0)  # LQ image / LQ caption -> HQ caption
        w_content: float = Field(1.0, ge=0.0)  # clean part -> HQ caption
        w_degradation: float = Field(1.0, ge=0.0)  # cross-entropy of the degradation class
        w_orthogonal: float = Field(1.0, ge=0.0)  # cos(degradation part, clean part)^2

        _classes = field_validator("degradations")(Perceiver.check_class_words)

        @field_validator("lora_targets")
        @classmethod
        def _targets(cls, v: list[str]) -> list[str]:
            if not v:
                raise ValueError("lora_targets: give at least one module name (e.g. 'attn', 'mlp.c_fc')")
            for t in v:
                if t == "out_proj" or t.endswith(".out_proj"):
                    raise ValueError(
                        f"lora_targets: {t!r} cannot be adapted: open_clip's nn.MultiheadAttention uses "
                        "out_proj's weight directly, so a LoRA wrapper there would be ignored; target "
                        "'attn' instead (peft's MultiheadAttention LoRA covers in_proj and out_proj)")
            return v

        @model_validator(mode="after")
        def _towers_fit_align(self):
            if self.align == "caption" and self.lora_towers == "image":
                raise ValueError("align='caption' trains the text tower: set lora_towers to 'text' or 'both'")
            if self.align == "image" and self.lora_towers == "text":
                raise ValueError("align='image' trains the image tower: set lora_towers to 'image' or 'both'")
            return self

    def __init__(self, params=None, **overrides: Any):
        super().__init__(params, **overrides)
        p = self.params
        clip, self.tokenizer = _clip.create_clip(p.model, p.pretrained)
        _clip.freeze(clip)
        config = LoraConfig(r=p.lora_rank, lora_alpha=p.lora_alpha, lora_dropout=p.lora_dropout,
                            target_modules=self._target_regex(clip), bias="none")
        self.clip = inject_adapter_in_model(config, clip)
        for name, q in self.clip.named_parameters():
            q.requires_grad_("lora_" in name)
        d = _clip.embed_dim(p.model)
        self.head = DegradationPredictor(d, p.predictor_hidden or d, len(p.degradations))
        if p.objective == "multilabel":
            self.presence_head = _presence.PresenceHead(d, len(p.degradations), p.predictor_hidden)
        self.merged = False

    def _target_regex(self, clip: nn.Module) -> str:
        """peft ``target_modules`` regex for ``lora_targets`` in the chosen towers (checked here)."""
        p = self.params
        towers = []
        if p.lora_towers in ("image", "both"):
            towers.append("visual.transformer")
        if p.lora_towers in ("text", "both"):
            towers.append("text.transformer" if hasattr(clip, "text") else "transformer")
        prefix = "(?:" + "|".join(re.escape(t) for t in towers) + r")\.resblocks\.\d+\."
        names = dict(clip.named_modules())
        for target in p.lora_targets:
            rx = re.compile(prefix + re.escape(target))
            hits = [n for n in names if rx.fullmatch(n)]
            if not hits:
                inner = sorted({n.split(".resblocks.0.", 1)[1] for n in names if ".resblocks.0." in n})
                raise ValueError(f"lora_targets: {target!r} names no module in the {p.lora_towers} tower(s) of "
                                 f"{p.model!r}; modules in a block: {inner}")
            for n in hits:
                if not isinstance(names[n], (nn.Linear, nn.MultiheadAttention)):
                    raise ValueError(f"lora_targets: {n} is a {type(names[n]).__name__}; peft LoRA here "
                                     "supports nn.Linear and nn.MultiheadAttention modules")
        return prefix + "(?:" + "|".join(re.escape(t) for t in p.lora_targets) + ")"

    # -- info ------------------------------------------------------------------------------
    @classmethod
    def output_dims(cls, params) -> tuple[int | None, int | None]:
        if isinstance(params, Mapping) or params is None:
            params = cls.Params(**(params or {}))
        d = _clip.embed_dim(params.model)
        return d, d

    def _lora_layers(self) -> list[BaseTunerLayer]:
        return [m for m in self.clip.modules() if isinstance(m, BaseTunerLayer)]

    @contextmanager
    def adapters_disabled(self) -> Iterator[None]:
        """Run the base CLIP without the LoRA deltas (``requires_grad`` flags are restored)."""
        layers = self._lora_layers()
        flags = [(q, q.requires_grad) for q in self.clip.parameters()]
        for m in layers:
            m.enable_adapters(False)
        try:
            yield
        finally:
            for m in layers:
                m.enable_adapters(True)
            for q, flag in flags:
                q.requires_grad_(flag)

    # -- encoders --------------------------------------------------------------------------
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Adapted CLIP image embeddings ``[B, D]`` (unnormalised) of images in [0, 1]."""
        size, mean, std = _clip.preprocess_cfg(self.clip)
        return self.encode_crops(_clip.preprocess(images, size, mean, std))

    def encode_crops(self, x: torch.Tensor) -> torch.Tensor:
        """CLIP image embeddings ``[N, D]`` of preprocessed crops ``[N, 3, S, S]``: the image
        tower alone (what ``vlir export onnx`` exports)."""
        return self.clip.encode_image(x)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """Adapted CLIP text embeddings ``[N, D]`` (unnormalised)."""
        return _clip.encode_text(self.clip, self.tokenizer, list(texts))

    def target_text(self, captions: list[str]) -> torch.Tensor:
        """Embeddings of the high-quality captions, the alignment target."""
        if not self.params.frozen_target:
            return self.encode_text(captions)
        with torch.no_grad(), self.adapters_disabled():
            return self.encode_text(captions)

    # -- perceiver API ---------------------------------------------------------------------
    def forward(self, lq: torch.Tensor) -> Perception:
        e = self.encode_image(lq)
        d, c, logits = self.head(e)
        if not self.multilabel:
            return Perception(content=c, degradation=d, class_names=self.class_names,
                              class_probs=logits.softmax(dim=-1),
                              extras={"degradation_logits": logits, "image_embedding": e})
        raw, presence, severity = self.presence_head(d)
        return Perception(content=c, degradation=d, class_names=self.class_names,
                          class_probs=_presence.class_probs(presence), presence=presence, severity=severity,
                          extras={"degradation_logits": logits, "presence_logits": raw, "image_embedding": e})

    def objective(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Cosine alignment with the HQ caption + degradation CE + content alignment + orthogonality."""
        if self.merged:
            raise RuntimeError("lora_caption_aligner: adapters are merged into CLIP; build a fresh model to train")
        p = self.params
        lq = batch["lq"]
        if batch.get("caption") is None:
            raise KeyError("lora_caption_aligner objective: batch needs 'caption' (high-quality captions)")
        captions = list(batch["caption"])
        if len(captions) != lq.shape[0]:
            raise ValueError(f"lora_caption_aligner objective: {len(captions)} captions for {lq.shape[0]} images")
        target = self.target_text(captions)
        e = self.encode_image(lq)
        d, c, logits = self.head(e)
        out: dict[str, torch.Tensor] = {}
        align = []
        if p.align in ("image", "both"):
            out["align_image"] = _one_minus_cos(e, target)
            align.append(out["align_image"])
        lq_captions = batch.get("lq_caption")
        if p.align in ("caption", "both") and lq_captions is not None:
            lq_captions = list(lq_captions)
            if len(lq_captions) != lq.shape[0]:
                raise ValueError(f"lora_caption_aligner objective: {len(lq_captions)} lq_captions for "
                                 f"{lq.shape[0]} images")
            out["align_caption"] = _one_minus_cos(self.encode_text(lq_captions), target)
            align.append(out["align_caption"])
        elif p.align == "caption":
            raise KeyError("lora_caption_aligner objective: align='caption' needs batch['lq_caption']")
        out["content"] = _one_minus_cos(c, target)
        out["orthogonal"] = F.cosine_similarity(d, c, dim=-1).pow(2).mean()
        loss = p.w_align * sum(align) + p.w_content * out["content"] + p.w_orthogonal * out["orthogonal"]
        if self.multilabel:  # presence BCE + severity regression instead of the cross-entropy
            presence, severity = _presence.perceiver_targets(self, batch, lq.device, "lora_caption_aligner objective")
            raw, predicted = self.presence_head.raw(d)
            out.update(_presence.losses(raw, predicted, presence, severity, self.class_names))
            out["degradation"] = out["presence"] + out["severity"]
            out["loss"] = loss + p.w_degradation * out["degradation"]
            return out
        labels = self.class_labels(batch, lq.device, required=False)
        if labels is not None:
            out["degradation"] = F.cross_entropy(logits, labels)
            out["accuracy"] = (logits.argmax(dim=-1) == labels).float().mean().detach()
            loss = loss + p.w_degradation * out["degradation"]
        out["loss"] = loss
        return out

    # -- adapters --------------------------------------------------------------------------
    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """The trained part: peft's LoRA state dict under ``clip.`` and the predictor under ``head.``."""
        if self.merged:
            raise RuntimeError("lora_caption_aligner: adapters are merged into CLIP; nothing separate to save")
        sd = {f"clip.{k}": v for k, v in get_peft_model_state_dict(self.clip).items()}
        sd.update({f"head.{k}": v for k, v in self.head.state_dict().items()})
        if self.multilabel:
            sd.update({f"presence_head.{k}": v for k, v in self.presence_head.state_dict().items()})
        return sd

    def save_adapter(self, path) -> None:
        """Write the LoRA adapters and the predictor to a safetensors file."""
        from vlir.core.io import save_safetensors

        meta = {"format": ADAPTER_FORMAT, "params": json.dumps(self.params.model_dump())}
        save_safetensors(self.adapter_state_dict(), path, metadata=meta)

    def load_adapter(self, source) -> None:
        """Load adapters from a file written by ``save_adapter`` (or from such a state dict)."""
        if self.merged:
            raise RuntimeError("lora_caption_aligner: adapters are merged into CLIP; build a fresh model to load")
        if isinstance(source, Mapping):
            sd, name = dict(source), "adapter state dict"
        else:
            from vlir.core.io import load_checkpoint

            sd, name = load_checkpoint(source), str(source)
        expected = self.adapter_state_dict()
        missing = sorted(set(expected) - set(sd))
        unexpected = sorted(set(sd) - set(expected))
        shapes = sorted(k for k in set(sd) & set(expected) if tuple(sd[k].shape) != tuple(expected[k].shape))
        if missing or unexpected or shapes:
            raise ValueError(
                f"lora_caption_aligner adapter {name} does not fit this model (check lora_rank, lora_targets, "
                f"lora_towers, degradations, objective): missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}, "
                f"shape mismatch {[(k, tuple(sd[k].shape), tuple(expected[k].shape)) for k in shapes[:5]]}")
        lora = {k[len("clip."):]: v for k, v in sd.items() if k.startswith("clip.")}
        result = set_peft_model_state_dict(self.clip, lora)
        bad = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
        if bad:
            raise ValueError(f"lora_caption_aligner adapter {name}: peft did not place {bad[:5]}")
        self.head.load_state_dict({k[len("head."):]: v for k, v in sd.items() if k.startswith("head.")})
        if self.multilabel:
            self.presence_head.load_state_dict({k[len("presence_head."):]: v for k, v in sd.items()
                                                if k.startswith("presence_head.")})

    def load_weights(self, path: str, strict: bool = True) -> None:
        """A state dict of this module (with adapters, or merged), or a ``save_adapter`` file."""
        from vlir.core.io import load_checkpoint, load_state_dict_checked, unwrap_state_dict

        sd = unwrap_state_dict(load_checkpoint(path))
        if sd and all(("lora_" in k and k.startswith("clip.")) or k.startswith(("head.", "presence_head."))
                      for k in sd):
            self.load_adapter(sd)
            return
        if any(k.startswith("clip.") for k in sd) and not any("lora_" in k or ".base_layer." in k for k in sd):
            self.merge()  # a merged model's layout: drop the (untrained) wrappers, then load
        load_state_dict_checked(self, sd, source=str(path), strict=strict)

    def merge(self, safe: bool = True) -> "LoraCaptionAligner":
        """Fold the LoRA deltas into the CLIP weights and drop the wrappers (merge and unload).

        Outputs are unchanged up to rounding; the module's state dict becomes the plain CLIP
        layout plus ``head.*`` (``load_weights`` reads that layout into a fresh model; a strict
        ``load_state_dict`` into an unmerged model does not). Training or loading adapters
        afterwards is refused.
        """
        if self.merged:
            return self
        outer = [(n, m) for n, m in self.clip.named_modules() if isinstance(m, BaseTunerLayer)]
        names = {n for n, _ in outer}
        # top-level wrappers only: an MHA wrapper unloads the out_proj wrapper inside it
        outer = [(n, m) for n, m in outer if not any(n.startswith(o + ".") for o in names)]
        for name, layer in outer:
            parent_name, _, child = name.rpartition(".")
            parent = self.clip.get_submodule(parent_name) if parent_name else self.clip
            if hasattr(layer, "unload_and_optionally_merge_module"):
                base = layer.unload_and_optionally_merge_module(merge=True, safe_merge=safe, adapter_names=None)
            else:
                layer.merge(safe_merge=safe)
                base = layer.get_base_layer()
            setattr(parent, child, base)
        for q in self.clip.parameters():
            q.requires_grad_(False)
        if hasattr(self.clip, "peft_config"):
            del self.clip.peft_config
        self.merged = True
        return self
