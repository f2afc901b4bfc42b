"""Restormer (Zamir et al., CVPR 2022) with optional degradation / content conditioning.

With ``cond_dim`` and ``context_dim`` left at ``None`` the state dict is exactly the official
one (``{'params': sd}`` checkpoints load with ``strict=True``). ``cond_dim`` adds a
zero-initialised FiLM after the first norm of every transformer block, driven by the
degradation vector; ``context_dim`` adds zero-initialised cross-attention to content tokens
in every latent (lowest level) block.
"""
from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from vlir.core.components import Backbone, Blocks, Dim, Levels, Width
from vlir.core.tiling import global_sum, sharing_sums

from ._blocks import (example_cond, full_precision, CondEmbed, CrossAttention, FiLM, LayerNorm2d, pad_to_multiple,
                      read_cond)


class Norm(nn.Module):
    """Official ``LayerNorm`` wrapper (keeps the ``.body.`` key level)."""

    def __init__(self, dim: int, kind: str):
        super().__init__()
        self.body = LayerNorm2d(dim, eps=1e-5, bias=kind == "WithBias")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class MDTA(nn.Module):
    """Multi-Dconv-head Transposed Attention: attention across channels, per head."""

    def __init__(self, dim: int, heads: int, bias: bool):
        super().__init__()
        self.heads = heads
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.qkv = nn.Conv2d(dim, dim * 3, 1, bias=bias)
        self.qkv_dwconv = nn.Conv2d(dim * 3, dim * 3, 3, padding=1, groups=dim * 3, bias=bias)
        self.project_out = nn.Conv2d(dim, dim, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv_dwconv(self.qkv(x)).reshape(b, 3, self.heads, c // self.heads, h * w).unbind(1)
        if sharing_sums():  # tiled inference: q k^T and the norms are sums over the whole image
            attn = self._shared_attention(q, k, (h, w))
        else:
            attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        out = (attn * self.temperature.to(q.dtype)).softmax(dim=-1) @ v
        return self.project_out(out.reshape(b, c, h, w))

    @staticmethod
    def _shared_attention(q: torch.Tensor, k: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """normalize(q) @ normalize(k)^T (L2 over all pixels) from image-wide sums, in float32."""
        dtype = q.dtype
        with torch.autocast(q.device.type, enabled=False):
            q, k = q.float(), k.float()

            def sums(rows: slice, cols: slice):
                qw, kw = (t.unflatten(-1, size)[..., rows, cols].flatten(-2) for t in (q, k))
                return qw @ kw.transpose(-2, -1), qw.square().sum(-1), kw.square().sum(-1)

            gram, qq, kk = global_sum(sums, size)
            eps = 1e-12  # F.normalize's
            attn = gram / (qq.sqrt().clamp_min(eps)[..., :, None] * kk.sqrt().clamp_min(eps)[..., None, :])
        return attn.to(dtype)


class GDFN(nn.Module):
    """Gated-Dconv feed-forward network."""

    def __init__(self, dim: int, expansion: float, bias: bool):
        super().__init__()
        hidden = int(dim * expansion)
        self.project_in = nn.Conv2d(dim, hidden * 2, 1, bias=bias)
        self.dwconv = nn.Conv2d(hidden * 2, hidden * 2, 3, padding=1, groups=hidden * 2, bias=bias)
        self.project_out = nn.Conv2d(hidden, dim, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(self.project_in(x))
        a, g = y.chunk(2, dim=1)
        if not y.is_contiguous() and y.is_contiguous(memory_format=torch.channels_last):
            # a channel slice of a channels-last map is strided, and GELU is much faster on a dense copy
            # (benchmarks/backbones.py --precisions); contiguous maps (the fp32 default) are left as they are
            a = a.contiguous(memory_format=torch.channels_last)
        return self.project_out(F.gelu(a) * g)


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, expansion: float, bias: bool, norm: str,
                 emb_dim: int | None = None, context_dim: int | None = None):
        super().__init__()
        self.norm1 = Norm(dim, norm)
        self.attn = MDTA(dim, heads, bias)
        self.norm2 = Norm(dim, norm)
        self.ffn = GDFN(dim, expansion, bias)
        self.film = FiLM(emb_dim, dim) if emb_dim else None
        self.xattn = CrossAttention(dim, context_dim, heads) if context_dim else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None,
                tokens: torch.Tensor | None = None) -> torch.Tensor:
        h = self.norm1(x)
        if self.film is not None and emb is not None:
            h = self.film(h, emb)
        x = x + self.attn(h)
        if self.xattn is not None and tokens is not None:
            x = self.xattn(x, tokens)
        return x + self.ffn(self.norm2(x))


class Down(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(dim, dim // 2, 3, padding=1, bias=False), nn.PixelUnshuffle(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Up(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(dim, dim * 2, 3, padding=1, bias=False), nn.PixelShuffle(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class PatchEmbed(nn.Module):
    def __init__(self, in_channels: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def _run(blocks: nn.Sequential, x: torch.Tensor, emb, tokens=None) -> torch.Tensor:
    for blk in blocks:
        x = blk(x, emb, tokens)
    return x


class Restormer(Backbone):
    """Restormer: 4-level transformer U-Net with transposed (channel) attention.

    ``forward(lq, cond=None)`` returns ``output(features) + lq`` (official residual); any
    H, W >= 1 (padded to a multiple of 8 by ``pad_mode`` and cropped back).
    """

    multiple_of: ClassVar[int] = 8
    tile_passes: ClassVar[int] = 1  # channel attention reduces over the image
    bf16_safe: ClassVar[bool] = True  # bf16 autocast: see benchmarks/results/backbones_precision.md

    class Params(Backbone.Params):
        inp_channels: Width = 3
        out_channels: Width = 3
        dim: Width = 48
        num_blocks: Levels = [4, 6, 6, 8]
        num_refinement_blocks: Blocks = 4
        heads: list[Annotated[int, Field(ge=1, le=256)]] = [1, 2, 4, 8]
        ffn_expansion_factor: float = 2.66
        bias: bool = False
        layer_norm: Literal["WithBias", "BiasFree"] = "WithBias"
        dual_pixel_task: bool = False  # dual-pixel defocus deblurring (inp_channels 6, no input residual)
        cond_dim: Dim | None = None  # degradation-vector dim: FiLM in every block
        cond_hidden: Dim = 128  # width of the shared embedding feeding the FiLMs
        context_dim: Dim | None = None  # content-token dim: cross-attention in the latent blocks
        pad_mode: Literal["reflect", "replicate", "zeros"] = "reflect"

    def __init__(self, params=None, **overrides: Any):
        super().__init__(params, **overrides)
        p = self.params
        if len(p.num_blocks) != 4 or len(p.heads) != 4:
            raise ValueError(f"Restormer: num_blocks and heads need 4 entries, got {p.num_blocks}, {p.heads}")
        for i, hd in enumerate(p.heads):
            width = p.dim * 2 ** i
            if hd < 1 or width % hd:
                raise ValueError(f"Restormer: heads[{i}]={hd} does not divide the level width {width}")
        emb = p.cond_hidden if p.cond_dim else None

        def level(n, width, heads, context=None):
            return nn.Sequential(*[TransformerBlock(width, heads, p.ffn_expansion_factor, p.bias, p.layer_norm,
                                                    emb, context) for _ in range(n)])

        d = p.dim
        self.patch_embed = PatchEmbed(p.inp_channels, d)
        self.encoder_level1 = level(p.num_blocks[0], d, p.heads[0])
        self.down1_2 = Down(d)
        self.encoder_level2 = level(p.num_blocks[1], d * 2, p.heads[1])
        self.down2_3 = Down(d * 2)
        self.encoder_level3 = level(p.num_blocks[2], d * 4, p.heads[2])
        self.down3_4 = Down(d * 4)
        self.latent = level(p.num_blocks[3], d * 8, p.heads[3], p.context_dim)
        self.up4_3 = Up(d * 8)
        self.reduce_chan_level3 = nn.Conv2d(d * 8, d * 4, 1, bias=p.bias)
        self.decoder_level3 = level(p.num_blocks[2], d * 4, p.heads[2])
        self.up3_2 = Up(d * 4)
        self.reduce_chan_level2 = nn.Conv2d(d * 4, d * 2, 1, bias=p.bias)
        self.decoder_level2 = level(p.num_blocks[1], d * 2, p.heads[1])
        self.up2_1 = Up(d * 2)
        self.decoder_level1 = level(p.num_blocks[0], d * 2, p.heads[0])
        self.refinement = level(p.num_refinement_blocks, d * 2, p.heads[0])
        if p.dual_pixel_task:
            self.skip_conv = nn.Conv2d(d, d * 2, 1, bias=p.bias)
        self.output = nn.Conv2d(d * 2, p.out_channels, 3, padding=1, bias=p.bias)
        self.cond_embed = CondEmbed(p.cond_dim, p.cond_hidden) if p.cond_dim else None

    @classmethod
    def condition_params(cls, vector_dim: int | None, token_dim: int | None) -> dict[str, Any]:
        return {"cond_dim": vector_dim, "context_dim": token_dim}

    def example_inputs(self, size: tuple[int, int] = (64, 64), batch: int = 1) -> dict[str, Any]:
        p = self.params
        return {"lq": torch.rand(batch, p.inp_channels, *size), "cond": example_cond(batch, p.cond_dim, p.context_dim)}

    def forward(self, lq: torch.Tensor, cond: Any = None, **kw: Any) -> torch.Tensor:
        p = self.params
        if lq.dim() != 4 or lq.shape[1] != p.inp_channels:
            raise ValueError(f"Restormer: expected lq of shape [B, {p.inp_channels}, H, W], got {list(lq.shape)}")
        h, w = lq.shape[-2:]
        vector, tokens = read_cond(cond, lq.shape[0], p.cond_dim, p.context_dim, "Restormer")
        emb = None
        if vector is not None:
            emb = self.cond_embed(vector.to(self.cond_embed.proj.weight.dtype))
        if tokens is not None:
            tokens = tokens.to(self.latent[0].xattn.kv.weight.dtype)
        inp = pad_to_multiple(lq, 8, p.pad_mode)

        e1_in = full_precision(self.patch_embed, inp)
        e1 = _run(self.encoder_level1, e1_in, emb)
        e2 = _run(self.encoder_level2, self.down1_2(e1), emb)
        e3 = _run(self.encoder_level3, self.down2_3(e2), emb)
        lat = _run(self.latent, self.down3_4(e3), emb, tokens)
        d3 = self.reduce_chan_level3(torch.cat([self.up4_3(lat), e3], 1))
        d3 = _run(self.decoder_level3, d3, emb)
        d2 = self.reduce_chan_level2(torch.cat([self.up3_2(d3), e2], 1))
        d2 = _run(self.decoder_level2, d2, emb)
        d1 = _run(self.decoder_level1, torch.cat([self.up2_1(d2), e1], 1), emb)
        d1 = _run(self.refinement, d1, emb)
        if p.dual_pixel_task:
            out = self.output(d1 + self.skip_conv(e1_in))
        else:
            out = self.output(d1) + inp
        return out[:, :, :h, :w]


def _count(sd: dict, prefix: str) -> int:
    """Number of consecutive ``{prefix}{i}.`` blocks in a state dict."""
    n = 0
    while any(k.startswith(f"{prefix}{n}.") for k in sd):
        n += 1
    return n


def detect(sd: dict) -> "Restormer.Params | None":
    """The Params of a state dict in Restormer's official layout (vlir's conditioning included), or None."""
    if not {"patch_embed.proj.weight", "output.weight", "latent.0.attn.temperature"} <= sd.keys():
        return None
    dim, inp = sd["patch_embed.proj.weight"].shape[:2]
    levels = ["encoder_level1", "encoder_level2", "encoder_level3", "latent"]
    defaults = Restormer.Params()
    heads = [sd[f"{lv}.0.attn.temperature"].shape[0] if f"{lv}.0.attn.temperature" in sd else h
             for lv, h in zip(levels, defaults.heads)]
    # GDFN hidden width = int(width * factor) at every level: the factor that gives all of them
    hidden = {dim * 2 ** i: sd[f"{lv}.0.ffn.project_out.weight"].shape[1]
              for i, lv in enumerate(levels) if f"{lv}.0.ffn.project_out.weight" in sd}
    first = hidden.get(dim, next(iter(hidden.values())))
    factors = [defaults.ffn_expansion_factor, 2.0, 3.0, 4.0, 2.5, 1.5, 1.0, (first + 0.5) / dim]
    factor = next((f for f in factors if all(int(w * f) == h for w, h in hidden.items())), None)
    if factor is None:
        raise ValueError(f"Restormer layout: no ffn_expansion_factor gives the feed-forward widths {hidden}")
    embed, xattn = sd.get("cond_embed.proj.weight"), sd.get("latent.0.xattn.kv.weight")
    return Restormer.Params(
        inp_channels=inp, out_channels=sd["output.weight"].shape[0], dim=dim,
        num_blocks=[_count(sd, f"{lv}.") for lv in levels], num_refinement_blocks=_count(sd, "refinement."),
        heads=heads, ffn_expansion_factor=factor, bias="encoder_level1.0.attn.qkv.bias" in sd,
        layer_norm="WithBias" if "encoder_level1.0.norm1.body.bias" in sd else "BiasFree",
        dual_pixel_task="skip_conv.weight" in sd,
        cond_dim=None if embed is None else embed.shape[1], cond_hidden=128 if embed is None else embed.shape[0],
        context_dim=None if xattn is None else xattn.shape[1])
