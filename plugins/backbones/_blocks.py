"""Layers shared by the convolutional backbones: channel LayerNorm, conditioning.

Conditioning layers are zero-initialised so that a pretrained backbone with conditioning
switched on computes exactly its unconditioned output until it is trained.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vlir.core.tiling import pad_to_multiple  # noqa: F401  (re-exported for the backbones)

_LOW = (torch.float16, torch.bfloat16)


def full_precision(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` outside autocast, in float32: for the first layer that reads the image.

    Under bf16 autocast the image itself would be rounded to bf16 (8 mantissa bits: about one
    8-bit grey level above 0.5), noise that a deblurring network amplifies (the default model's
    blur expert: benchmarks/results/default_model_bf16.md). Without autocast it is ``module(x)``.
    """
    if not torch.is_autocast_enabled(x.device.type):
        return module(x)
    with torch.autocast(x.device.type, enabled=False):
        return module(x.float())


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of a ``(B, C, H, W)`` tensor.

    ``bias=False`` is Restormer's "BiasFree" variant: ``x / sqrt(var + eps) * weight``
    (the variance is taken around the mean, but the mean is not subtracted).
    Statistics are computed in float32 for half / bfloat16 inputs.
    """

    def __init__(self, channels: int, eps: float = 1e-6, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels)) if bias else None
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        if dtype in _LOW:
            x = x.float()
        weight = self.weight.to(x.dtype)
        xt = x.permute(0, 2, 3, 1)  # channels last: one fused kernel normalises each pixel
        if self.bias is not None:
            y = F.layer_norm(xt, weight.shape, weight, self.bias.to(x.dtype), self.eps)
        else:  # the fused kernel's 1 / sqrt(var + eps), applied to x itself (not x - mean)
            rstd = torch.native_layer_norm(xt, weight.shape, None, None, self.eps)[2]
            y = xt * rstd * weight
        return y.permute(0, 3, 1, 2).to(dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}, bias={self.bias is not None}"


class CondEmbed(nn.Module):
    """Degradation vector ``[B, cond_dim]`` -> shared embedding ``[B, hidden]`` for every FiLM."""

    def __init__(self, cond_dim: int, hidden: int):
        super().__init__()
        self.proj = nn.Linear(cond_dim, hidden)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return F.silu(self.proj(v))


class FiLM(nn.Module):
    """Feature-wise ``x * (1 + scale) + shift`` from an embedding; zero-initialised (identity)."""

    def __init__(self, emb_dim: int, channels: int):
        super().__init__()
        self.proj = nn.Linear(emb_dim, 2 * channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        scale, shift = self.proj(emb).to(x.dtype)[:, :, None, None].chunk(2, dim=1)
        return x * (1 + scale) + shift


class CrossAttention(nn.Module):
    """Residual cross-attention from image features to content tokens (SDPA).

    ``x + out(attn(q(norm(x)), k(tokens), v(tokens)))``; ``out`` is zero-initialised so the
    block starts as the identity.
    """

    def __init__(self, channels: int, context_dim: int, heads: int | None = None):
        super().__init__()
        if heads is None:
            heads = max(1, channels // 64)
        while channels % heads:
            heads -= 1
        self.heads = heads
        self.norm = nn.LayerNorm(channels)
        self.context_norm = nn.LayerNorm(context_dim)
        self.q = nn.Linear(channels, channels, bias=False)
        self.kv = nn.Linear(context_dim, 2 * channels, bias=False)
        self.out = nn.Linear(channels, channels)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        seq = x.flatten(2).transpose(1, 2)  # B, HW, C
        q = self.q(self.norm(seq))
        k, v = self.kv(self.context_norm(tokens)).chunk(2, dim=-1)
        if k.shape[0] != b:
            k, v = k.expand(b, -1, -1), v.expand(b, -1, -1)
        d = c // self.heads
        q = q.reshape(b, h * w, self.heads, d).transpose(1, 2)
        k = k.reshape(b, -1, self.heads, d).transpose(1, 2)
        v = v.reshape(b, -1, self.heads, d).transpose(1, 2)
        q, k, v = (t.to(q.dtype) for t in (q, k, v))
        o = F.scaled_dot_product_attention(q, k, v)
        o = self.out(o.transpose(1, 2).reshape(b, h * w, c))
        return x + o.transpose(1, 2).reshape(b, c, h, w).to(x.dtype)


def read_cond(cond: Any, batch: int, cond_dim: int | None, context_dim: int | None, owner: str
              ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The (vector, tokens) of a ``Conditioning`` a backbone can use, checked against its dims.

    Missing parts, or parts the backbone was not built for, come back as ``None``.
    """
    if cond is None:
        return None, None
    vector = getattr(cond, "vector", None) if cond_dim else None
    tokens = getattr(cond, "tokens", None) if context_dim else None
    if vector is not None:
        if vector.dim() != 2 or vector.shape[-1] != cond_dim or vector.shape[0] not in (1, batch):
            raise ValueError(f"{owner}: cond.vector must be [B={batch}, cond_dim={cond_dim}], "
                             f"got {list(vector.shape)}")
    if tokens is not None:
        if tokens.dim() == 2:
            tokens = tokens[:, None, :]
        if tokens.dim() != 3 or tokens.shape[-1] != context_dim or tokens.shape[0] not in (1, batch):
            raise ValueError(f"{owner}: cond.tokens must be [B={batch}, N, context_dim={context_dim}], "
                             f"got {list(tokens.shape)}")
    return vector, tokens


def example_cond(batch: int, cond_dim: int | None, context_dim: int | None):
    """Random conditioning of the given sizes (None when both are off), for ``example_inputs``."""
    from vlir.core.conditioning import Conditioning

    if not (cond_dim or context_dim):
        return None
    return Conditioning(vector=torch.randn(batch, cond_dim) if cond_dim else None,
                        tokens=torch.randn(batch, 1, context_dim) if context_dim else None)
