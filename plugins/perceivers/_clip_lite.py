"""open_clip's plain ViT CLIP, built without importing open_clip (which imports torchvision,
torch._dynamo and transformers: most of ``vlir restore``'s start-up).

Used by ``_clip.create_clip`` only where the weights come from a file right after building
(``Pipeline.load`` builds components on the meta device): the module tree, parameter names and
shapes and the arithmetic (op for op, so outputs are equal bit for bit) are open_clip's
``CLIP`` with a ``VisionTransformer`` and its text transformer, for configs that use nothing
beyond the plain architecture (:func:`supports`). Random initialisation stays open_clip's own.

The tokenizer is open_clip's ``SimpleTokenizer``, read from open_clip's ``tokenizer.py`` file
(it imports only ftfy, regex, numpy and torch) without running open_clip's package import.
"""
from __future__ import annotations

import copy
import importlib.util
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

_VISION_KEYS = {"image_size", "layers", "width", "patch_size", "head_width", "mlp_ratio"}
_TEXT_KEYS = {"context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio"}


def supports(cfg: dict[str, Any]) -> bool:
    """Whether an open_clip model config is the plain ViT CLIP this module builds."""
    vision, text = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
    return (set(cfg) <= {"embed_dim", "vision_cfg", "text_cfg"} and set(vision) <= _VISION_KEYS
            and set(text) <= _TEXT_KEYS and isinstance(vision.get("layers", 12), int)
            and isinstance(vision.get("image_size", 224), int) and isinstance(vision.get("patch_size", 16), int))


class LayerNorm(nn.LayerNorm):
    """LayerNorm whose output has its input's dtype (open_clip's)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kind = x.dtype
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps).to(kind)


class Block(nn.Module):
    """Pre-norm residual attention block (``ln_1``, ``attn``, ``ln_2``, ``mlp.c_fc/gelu/c_proj``)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.ln_1 = LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ls_1 = nn.Identity()
        self.ln_2 = LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(width, hidden)), ("gelu", nn.GELU()),
                                              ("c_proj", nn.Linear(hidden, width))]))
        self.ls_2 = nn.Identity()

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        mask = attn_mask.to(x.dtype) if attn_mask is not None else None
        q = self.ln_1(x)
        x = x + self.ls_1(self.attn(q, q, q, need_weights=False, attn_mask=mask)[0])
        return x + self.ls_2(self.mlp(self.ln_2(x)))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.width, self.layers, self.batch_first = width, layers, True
        self.resblocks = nn.ModuleList(Block(width, heads, mlp_ratio) for _ in range(layers))

    def get_cast_dtype(self) -> torch.dtype:
        return self.resblocks[0].mlp.c_fc.weight.dtype

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x, attn_mask=attn_mask)
        return x


class VisionTransformer(nn.Module):
    def __init__(self, image_size: int, patch_size: int, width: int, layers: int, heads: int, mlp_ratio: float,
                 output_dim: int):
        super().__init__()
        self.image_size, self.patch_size = (image_size, image_size), (patch_size, patch_size)
        self.grid_size = (image_size // patch_size, image_size // patch_size)
        self.output_dim = output_dim
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.empty(width))
        self.positional_embedding = nn.Parameter(torch.empty(self.grid_size[0] * self.grid_size[1] + 1, width))
        self.patch_dropout = nn.Identity()
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, layers, heads, mlp_ratio)
        self.attn_pool = None
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(torch.empty(width, output_dim))
        self.preprocess_cfg = {"size": self.image_size, "mean": OPENAI_MEAN, "std": OPENAI_STD}

    def _embeds(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        cls = self.class_embedding.view(1, 1, -1).expand(x.shape[0], -1, -1).to(x.dtype)
        x = torch.cat([cls, x], dim=1)
        x = x + self.positional_embedding.to(x.dtype)
        return self.ln_pre(self.patch_dropout(x))

    def _pool(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.ln_post(x)
        return x[:, 0], x[:, 1:]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled, _ = self._pool(self.transformer(self._embeds(x)))
        return pooled @ self.proj


class CLIP(nn.Module):
    """Image tower ``visual`` and the text transformer at the top level, as open_clip's ``CLIP``."""

    def __init__(self, embed_dim: int, vision_cfg: dict[str, Any], text_cfg: dict[str, Any]):
        super().__init__()
        v = {"image_size": 224, "layers": 12, "width": 768, "patch_size": 16, "head_width": 64, "mlp_ratio": 4.0,
             **vision_cfg}
        t = {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12, "mlp_ratio": 4.0,
             **text_cfg}
        self.visual = VisionTransformer(v["image_size"], v["patch_size"], v["width"], v["layers"],
                                        v["width"] // v["head_width"], v["mlp_ratio"], embed_dim)
        self.transformer = Transformer(t["width"], t["layers"], t["heads"], t["mlp_ratio"])
        self.context_length, self.vocab_size = t["context_length"], t["vocab_size"]
        # an empty table: Embedding's normal_ init would import torch._dynamo on the meta device
        self.token_embedding = nn.Embedding(t["vocab_size"], t["width"], _weight=torch.empty(t["vocab_size"], t["width"]))
        self.positional_embedding = nn.Parameter(torch.empty(t["context_length"], t["width"]))
        self.ln_final = LayerNorm(t["width"])
        self.text_projection = nn.Parameter(torch.empty(t["width"], embed_dim))
        self.text_pool_type = "argmax"
        self.logit_scale = nn.Parameter(torch.empty(()))
        self.logit_bias = None

    def causal_mask(self, device: torch.device) -> torch.Tensor:
        n = self.context_length
        return torch.full((n, n), float("-inf"), device=device).triu_(1)  # additive: -inf above the diagonal

    def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        features = self.visual(image)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        kind = self.transformer.get_cast_dtype()
        x = self.token_embedding(text).to(kind)
        x = x + self.positional_embedding.to(kind)
        x = self.ln_final(self.transformer(x, attn_mask=self.causal_mask(x.device)))
        x = x[torch.arange(x.shape[0], device=x.device), text.argmax(dim=-1)] @ self.text_projection
        return F.normalize(x, dim=-1) if normalize else x


def build(cfg: dict[str, Any]) -> CLIP:
    """The CLIP of a config that :func:`supports` (parameters uninitialised: load weights next)."""
    return CLIP(int(cfg["embed_dim"]), cfg.get("vision_cfg", {}), cfg.get("text_cfg", {}))


def tokenizer(context_length: int) -> Any:
    """open_clip's ``SimpleTokenizer`` for ``context_length`` tokens, from its file (no package import)."""
    name = "vlir.plugins.perceivers._open_clip_tokenizer"
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.find_spec("open_clip")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("open_clip is not installed (pip install open_clip_torch)")
        file = Path(next(iter(spec.submodule_search_locations))) / "tokenizer.py"
        loader_spec = importlib.util.spec_from_file_location(name, file)
        module = importlib.util.module_from_spec(loader_spec)
        loader_spec.loader.exec_module(module)
        sys.modules[name] = module
    # the module made one at import (_tokenizer, 77 tokens): a copy with our length, not a second
    # reading of the vocabulary; same tokens as open_clip.get_tokenizer (tests/test_precision.py)
    tok = copy.copy(module._tokenizer)
    tok.context_length = context_length
    return tok
