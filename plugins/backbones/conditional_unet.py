"""DA-CLIP's conditional UNet (Luo et al., ICLR 2024), the noise network of IR-SDE.

Same layout and state-dict keys as the official ``ConditionalUNet`` of ``Algolzw/daclip-uir``
(``universal-ir.pth`` loads with ``strict=True``). Conditioning:

- ``cond.vector`` (degradation embedding ``[B, D]``): MLP -> softmax weights times a learned
  prompt -> Linear, added to the time embedding (the "prompt module");
- ``cond.tokens`` (content tokens ``[B, N, D]``; DA-CLIP uses one): cross-attention in the
  spatial transformers of the deepest levels (H/8) and the middle.

The network sees ``cat(x_t - lq, lq)`` and predicts the noise of ``x_t``. Attention uses
``scaled_dot_product_attention`` (no N x N buffers).
"""
from __future__ import annotations

import math
from typing import Annotated, Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from vlir.core.components import Backbone, Dim, Width
from vlir.core.conditioning import Conditioning

HEAD_CHANNELS = 32  # channels per attention head (official num_head_channels)
FIRST_CROSS_LEVEL = 3  # levels from this index on use a spatial transformer (official: i >= 3)


def _conv(cin: int, cout: int, k: int = 3, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, padding=k // 2, bias=bias)


class TimeEmbedding(nn.Module):
    """Sinusoidal embedding of (possibly fractional) timesteps: [B] -> [B, dim]."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        step = math.log(10000) / (half - 1)
        freqs = torch.exp(torch.arange(half, device=t.device, dtype=torch.float32) * -step)
        angles = t.float()[:, None] * freqs[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=-1)


class ChannelNorm(nn.Module):
    """Layer norm over channels of a B x C x H x W map, scale only (no bias)."""

    def __init__(self, dim: int):
        super().__init__()
        self.g = nn.Parameter(torch.ones(1, dim, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        eps = 1e-5 if x.dtype == torch.float32 else 1e-3
        var, mean = torch.var_mean(x, dim=1, unbiased=False, keepdim=True)
        return (x - mean) * (var + eps).rsqrt() * self.g


class ConvAct(nn.Module):
    """3x3 conv, optional (scale, shift) modulation, SiLU."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.proj = _conv(cin, cout)

    def forward(self, x: torch.Tensor, scale_shift: tuple[torch.Tensor, torch.Tensor] | None = None):
        x = self.proj(x)
        if scale_shift is not None:
            scale, shift = scale_shift
            x = x * (scale + 1) + shift
        return F.silu(x)


class ResBlock(nn.Module):
    """Two ConvAct blocks, the first modulated by the (time + prompt) embedding."""

    def __init__(self, cin: int, cout: int, emb_dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, cout * 2))
        self.block1 = ConvAct(cin, cout)
        self.block2 = ConvAct(cout, cout)
        self.res_conv = _conv(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        scale, shift = self.mlp(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.block2(self.block1(x, (scale, shift)))
        return h + self.res_conv(x)


class LinearAttention(nn.Module):
    """Linear (channel) attention, 4 heads of 32 channels; ignores the context."""

    def __init__(self, dim: int, heads: int = 4, dim_head: int = 32):
        super().__init__()
        self.heads = heads
        self.scale = dim_head ** -0.5
        hidden = heads * dim_head
        self.to_qkv = nn.Conv2d(dim, hidden * 3, 1, bias=False)
        self.to_out = nn.Sequential(nn.Conv2d(hidden, dim, 1), ChannelNorm(dim))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        b, _, h, w = x.shape
        q, k, v = (z.reshape(b, self.heads, -1, h * w) for z in self.to_qkv(x).chunk(3, dim=1))
        q = q.softmax(dim=-2) * self.scale
        k = k.softmax(dim=-1)
        v = v / (h * w)
        kv = torch.einsum("bhdn,bhen->bhde", k, v)
        out = torch.einsum("bhde,bhdn->bhen", kv, q)
        return self.to_out(out.reshape(b, -1, h, w))


class Attention(nn.Module):
    """Multi-head (cross-)attention on token sequences with scaled_dot_product_attention."""

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int | None = None):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim or dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim or dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(0.0))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        b = x.shape[0]

        def split(z: torch.Tensor) -> torch.Tensor:
            return z.reshape(z.shape[0], z.shape[1], self.heads, -1).transpose(1, 2)

        q, k, v = split(self.to_q(x)), split(self.to_k(context)), split(self.to_v(context))
        if k.shape[0] != b:  # one context for the whole batch
            k, v = k.expand(b, *k.shape[1:]), v.expand(b, *v.shape[1:])
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(b, x.shape[1], -1))


class GEGLU(nn.Module):
    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, gate = self.proj(x).chunk(2, dim=-1)
        return a * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, dim * mult), nn.Dropout(0.0), nn.Linear(dim * mult, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TransformerBlock(nn.Module):
    """Self-attention, cross-attention to the context (skipped when there is none), GEGLU FFN."""

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int):
        super().__init__()
        self.attn1 = Attention(dim, heads, dim_head)
        self.ff = FeedForward(dim)
        self.attn2 = Attention(dim, heads, dim_head, context_dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x))
        if context is not None:
            x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """GroupNorm, 1x1 in, transformer block(s) over the H*W tokens, zero-initialised 1x1 out."""

    def __init__(self, channels: int, heads: int, dim_head: int, context_dim: int, depth: int = 1):
        super().__init__()
        inner = heads * dim_head
        self.norm = nn.GroupNorm(32, channels, eps=1e-6)
        self.proj_in = nn.Conv2d(channels, inner, 1)
        self.transformer_blocks = nn.ModuleList(
            [TransformerBlock(inner, heads, dim_head, context_dim) for _ in range(depth)])
        self.proj_out = nn.Conv2d(inner, channels, 1)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        b, _, h, w = x.shape
        y = self.proj_in(self.norm(x)).flatten(2).transpose(1, 2)
        for block in self.transformer_blocks:
            y = block(y, context)
        y = y.transpose(1, 2).reshape(b, -1, h, w)
        return x + self.proj_out(y)


class PreNorm(nn.Module):
    def __init__(self, dim: int, fn: nn.Module):
        super().__init__()
        self.fn = fn
        self.norm = ChannelNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        return self.fn(self.norm(x), context)


class Residual(nn.Module):
    def __init__(self, fn: nn.Module):
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        return x + self.fn(x, context)


class ConditionalUNet(Backbone):
    """DA-CLIP's conditional UNet: ``forward(lq, cond, x=x_t, t=t)`` -> predicted noise."""

    diffusion = True
    bf16_safe = False  # bf16 autocast loses accuracy (37.7 dB against fp32, as the official code does)
    multiple_of = 16  # 2 ** len(ch_mult) for the default depth

    class Params(Backbone.Params):
        in_nc: Width = 3
        out_nc: Width = 3
        nf: Width = 64
        ch_mult: list[Annotated[int, Field(ge=1, le=64)]] = Field([1, 2, 4, 8], min_length=1, max_length=8)
        context_dim: Annotated[int, Field(le=65536)] | None = 512  # None or <= 0: no conditioning
        use_degra_context: bool = True  # prompt module on cond.vector
        use_image_context: bool = True  # cross-attention on cond.tokens
        upscale: int = 1  # official field, unused there; only 1 is supported
        degra_dim: Dim | None = None  # cond.vector size when it differs from context_dim (not official)

    def __init__(self, params=None, **overrides: Any):
        super().__init__(params, **overrides)
        p = self.params
        if p.upscale != 1:
            raise ValueError(f"ConditionalUNet.Params.upscale: only 1 is supported (got {p.upscale})")
        if not p.ch_mult or any(m < 1 for m in p.ch_mult):
            raise ValueError(f"ConditionalUNet.Params.ch_mult: expected positive integers, got {p.ch_mult}")
        if p.nf < 4 or p.nf % 2:
            raise ValueError(f"ConditionalUNet.Params.nf: expected an even width >= 4, got {p.nf}")
        self.depth = len(p.ch_mult)
        self.multiple_of = 2 ** self.depth
        ctx = p.context_dim if p.context_dim is not None and p.context_dim > 0 else None
        self.context_dim = ctx
        self.use_degra = ctx is not None and p.use_degra_context
        self.use_image = ctx is not None and p.use_image_context
        self.degra_dim = (p.degra_dim or ctx) if self.use_degra else None
        mults = [1, *p.ch_mult]
        widths = [p.nf * m for m in mults]
        if self.use_image:
            for i in range(FIRST_CROSS_LEVEL, self.depth):
                for c in (widths[i], widths[i + 1]):
                    if c % HEAD_CHANNELS:
                        raise ValueError(
                            f"ConditionalUNet.Params: level {i} width {c} (nf * ch_mult) must be a multiple of "
                            f"{HEAD_CHANNELS} for its spatial transformer")
            if widths[-1] % HEAD_CHANNELS:
                raise ValueError(f"ConditionalUNet.Params: middle width {widths[-1]} must be a multiple of "
                                 f"{HEAD_CHANNELS}")

        nf = p.nf
        emb = nf * 4
        self.init_conv = _conv(p.in_nc * 2, nf, 7)
        self.time_mlp = nn.Sequential(TimeEmbedding(nf), nn.Linear(nf, emb), nn.GELU(), nn.Linear(emb, emb))
        if self.use_degra:
            self.prompt = nn.Parameter(torch.rand(1, emb))
            self.text_mlp = nn.Sequential(nn.Linear(self.degra_dim, emb), nn.SiLU(), nn.Linear(emb, emb))
            self.prompt_mlp = nn.Linear(emb, emb)

        def attention(c: int, level: int) -> nn.Module:
            if self.use_image and level >= FIRST_CROSS_LEVEL:
                inner = SpatialTransformer(c, c // HEAD_CHANNELS, HEAD_CHANNELS, ctx)
            else:
                inner = LinearAttention(c)
            return Residual(PreNorm(c, inner))

        self.downs = nn.ModuleList()
        self.ups = nn.ModuleList()
        for i in range(self.depth):
            cin, cout = widths[i], widths[i + 1]
            last = i == self.depth - 1
            self.downs.append(nn.ModuleList([
                ResBlock(cin, cin, emb),
                ResBlock(cin, cin, emb),
                attention(cin, i),
                _conv(cin, cout) if last else nn.Conv2d(cin, cout, 4, 2, 1),
            ]))
            self.ups.insert(0, nn.ModuleList([
                ResBlock(cout + cin, cout, emb),
                ResBlock(cout + cin, cout, emb),
                attention(cout, i),
                _conv(cout, cin) if i == 0 else nn.Sequential(
                    nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(cout, cin, 3, 1, 1)),
            ]))
        mid = widths[-1]
        self.mid_block1 = ResBlock(mid, mid, emb)
        if self.use_image:
            self.mid_attn = Residual(PreNorm(mid, SpatialTransformer(mid, mid // HEAD_CHANNELS, HEAD_CHANNELS, ctx)))
        else:
            self.mid_attn = Residual(PreNorm(mid, LinearAttention(mid)))
        self.mid_block2 = ResBlock(mid, mid, emb)
        self.final_res_block = ResBlock(nf * 2, nf, emb)
        self.final_conv = nn.Conv2d(nf, p.out_nc, 3, 1, 1)

    @classmethod
    def condition_params(cls, vector_dim: int | None, token_dim: int | None) -> dict[str, Any]:
        """One ``context_dim`` for both inputs (512 for ViT-B-32); ``degra_dim`` when they differ."""
        if vector_dim is None and token_dim is None:
            return {}
        if vector_dim and token_dim and vector_dim != token_dim:
            return {"context_dim": token_dim, "degra_dim": vector_dim}
        return {"context_dim": vector_dim or token_dim}

    def example_inputs(self, size: tuple[int, int] = (64, 64), batch: int = 1) -> dict[str, Any]:
        lq = torch.rand(batch, self.params.in_nc, *size)
        cond = Conditioning(
            tokens=torch.randn(batch, 1, self.context_dim) if self.use_image else None,
            vector=torch.randn(batch, self.degra_dim) if self.use_degra else None,
        )
        return {"lq": lq, "cond": cond, "x": lq + 0.1 * torch.randn_like(lq),
                "t": torch.full((batch,), 50, dtype=torch.long)}

    # -- helpers -----------------------------------------------------------------------------
    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        s = self.multiple_of
        h, w = x.shape[-2:]
        ph, pw = (s - h % s) % s, (s - w % s) % s
        if ph == 0 and pw == 0:
            return x
        mode = "reflect" if ph < h and pw < w else "replicate"  # reflect needs pad < size
        return F.pad(x, (0, pw, 0, ph), mode=mode)

    def _timesteps(self, t: Any, batch: int, device: torch.device) -> torch.Tensor:
        if t is None:
            t = 0
        t = torch.as_tensor(t, device=device)
        if t.dim() == 0:
            t = t.expand(batch)
        elif t.dim() > 1:
            t = t.reshape(-1)
        if t.shape[0] == 1 and batch > 1:
            t = t.expand(batch)
        if t.shape[0] != batch:
            raise ValueError(f"ConditionalUNet: t has {t.shape[0]} timesteps for a batch of {batch}")
        return t

    def _context(self, cond: Conditioning | None, batch: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        vector = tokens = None
        if cond is None:
            return None, None
        if self.use_degra and cond.vector is not None:
            vector = cond.vector
            if vector.dim() != 2 or vector.shape[-1] != self.degra_dim or vector.shape[0] not in (1, batch):
                raise ValueError(f"ConditionalUNet: cond.vector must be [B, {self.degra_dim}] with B={batch}, "
                                 f"got {tuple(vector.shape)}")
        if self.use_image and cond.tokens is not None:
            tokens = cond.tokens
            if tokens.dim() == 2:
                tokens = tokens[:, None, :]
            if tokens.dim() != 3 or tokens.shape[-1] != self.context_dim or tokens.shape[0] not in (1, batch):
                raise ValueError(f"ConditionalUNet: cond.tokens must be [B, N, {self.context_dim}] with "
                                 f"B={batch}, got {tuple(cond.tokens.shape)}")
        return vector, tokens

    def forward(self, lq: torch.Tensor, cond: Conditioning | None = None, *,
                x: torch.Tensor | None = None, t: Any = None) -> torch.Tensor:
        """Predicted noise of ``x`` (= x_t, default ``lq``) at timestep ``t`` (default 0)."""
        if lq.dim() != 4 or lq.shape[1] != self.params.in_nc:
            raise ValueError(f"ConditionalUNet: lq must be [B, {self.params.in_nc}, H, W], got {tuple(lq.shape)}")
        x = lq if x is None else x
        if x.shape != lq.shape:
            raise ValueError(f"ConditionalUNet: x {tuple(x.shape)} and lq {tuple(lq.shape)} differ in shape")
        b, _, h, w = lq.shape
        t = self._timesteps(t, b, lq.device)
        vector, tokens = self._context(cond, b)

        y = self._pad(torch.cat([x - lq, lq], dim=1))
        y = self.init_conv(y)
        first = y
        emb = self.time_mlp[1:](self.time_mlp[0](t).to(self.init_conv.weight.dtype))
        if vector is not None:
            weights = torch.softmax(self.text_mlp(vector.to(emb.dtype)), dim=1)
            emb = emb + self.prompt_mlp(weights * self.prompt)
        if tokens is not None:
            tokens = tokens.to(y.dtype)

        skips = []
        for block1, block2, attn, down in self.downs:
            y = block1(y, emb)
            skips.append(y)
            y = attn(block2(y, emb), tokens)
            skips.append(y)
            y = down(y)
        y = self.mid_block2(self.mid_attn(self.mid_block1(y, emb), tokens), emb)
        for block1, block2, attn, up in self.ups:
            y = block1(torch.cat([y, skips.pop()], dim=1), emb)
            y = block2(torch.cat([y, skips.pop()], dim=1), emb)
            y = up(attn(y, tokens))
        y = self.final_res_block(torch.cat([y, first], dim=1), emb)
        y = self.final_conv(y)
        return y[..., :h, :w].contiguous()


def detect(sd: dict) -> "ConditionalUNet.Params | None":
    """The Params of a state dict in DA-CLIP's official ConditionalUNet layout, or None."""
    if not {"init_conv.weight", "final_conv.weight", "mid_block1.block1.proj.weight"} <= sd.keys():
        return None
    nf, in2 = sd["init_conv.weight"].shape[:2]
    depth = 0
    while f"downs.{depth}.0.block1.proj.weight" in sd:
        depth += 1
    widths = [sd[f"downs.{i}.0.block1.proj.weight"].shape[0] for i in range(depth)]
    widths.append(sd["mid_block1.block1.proj.weight"].shape[0])
    text = sd.get("text_mlp.0.weight")
    cross = sd.get("mid_attn.fn.fn.transformer_blocks.0.attn2.to_k.weight")
    context = cross.shape[1] if cross is not None else text.shape[1] if text is not None else None
    degra = text.shape[1] if text is not None else None
    return ConditionalUNet.Params(
        in_nc=in2 // 2, out_nc=sd["final_conv.weight"].shape[0], nf=nf,
        ch_mult=[w // nf for w in widths[1:]], context_dim=context,
        use_degra_context=text is not None, use_image_context=cross is not None,
        degra_dim=degra if degra is not None and degra != context else None)
