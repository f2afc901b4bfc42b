"""NAFNet (Chen et al., ECCV 2022) with optional degradation / content conditioning.

With ``cond_dim`` and ``context_dim`` left at ``None`` the state dict is exactly the official
one (``{'params': sd}`` checkpoints load with ``strict=True``). ``cond_dim`` adds a
zero-initialised FiLM after the first norm of every NAFBlock, driven by the degradation
vector; ``context_dim`` adds zero-initialised cross-attention to content tokens in every
middle block. ``tlc=True`` is the official test-time network "NAFNetLocal" (TLC, Chu et al.
2021): channel attention pools over a local window instead of the whole image.
"""
from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, ValidationInfo, field_validator
from torch import nn

from vlir.core.components import Backbone, Blocks, Dim, Levels, Width
from vlir.core.tiling import global_sum, sharing_sums

from ._blocks import (example_cond, full_precision, CondEmbed, CrossAttention, FiLM, LayerNorm2d, pad_to_multiple,
                      read_cond)


def _gate(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=1)
    return a * b


def _residual(stream: torch.Tensor, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``stream + x * scale``, the block's residual update. Under reduced-precision autocast ``x`` is
    bf16/fp16 while the stream stays fp32 (so do the fp32 ``beta``/``gamma``): one fused ``addcmul`` in
    fp32 then, about 1.7x faster on the CPU than the two passes; otherwise the plain expression (fp32
    outputs stay bit for bit what they were)."""
    if x.dtype != stream.dtype:
        return torch.addcmul(stream, x.to(stream.dtype), scale.to(stream.dtype))
    return stream + x * scale


class GlobalPool(nn.Module):
    """Mean over H and W (``AdaptiveAvgPool2d(1)``), shared across tiles by tiled inference."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not sharing_sums():
            return x.mean((-2, -1), keepdim=True)

        def window(rows: slice, cols: slice):
            part = x[..., rows, cols]
            return part.sum((-2, -1), keepdim=True), x.new_tensor(part.shape[-2] * part.shape[-1])

        total, n = global_sum(window, x.shape[-2:])
        return total / n


def _box_mean(x: torch.Tensor, kh: int, kw: int) -> torch.Tensor:
    """Mean of every ``kh`` x ``kw`` window lying inside ``x`` (valid positions only), from
    running sums along W then H (cost independent of the window size)."""
    s = F.pad(x.cumsum(-1), (1, 0))
    x = s[..., kw:] - s[..., :-kw]
    s = F.pad(x.cumsum(-2), (0, 0, 1, 0))
    return (s[..., kh:, :] - s[..., :-kh, :]) / (kh * kw)


class LocalPool(nn.Module):
    """TLC's test-time local pooling: each pixel gets the mean over a ``kernel`` x ``kernel``
    window (clipped to the feature map) instead of the image mean. Window means exist for the
    positions where the window fits; the border, as in the official ``AvgPool2d``
    (``fast_imp=False``), repeats the nearest one (replicate padding, split evenly). A window
    covering the whole map gives the global mean, as ``GlobalPool``.
    """

    def __init__(self, kernel: int):
        super().__init__()
        self.kernel = kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if self.kernel >= h and self.kernel >= w:
            return x.mean((-2, -1), keepdim=True)
        dtype = x.dtype
        out = _box_mean(x.float() if dtype in (torch.float16, torch.bfloat16) else x,
                        min(h, self.kernel), min(w, self.kernel))
        ph, pw = h - out.shape[-2], w - out.shape[-1]
        return F.pad(out, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), mode="replicate").to(dtype)

    def extra_repr(self) -> str:
        return f"kernel={self.kernel}"


class NAFBlock(nn.Module):
    """Norm -> 1x1 -> depthwise 3x3 -> gate -> channel attention -> 1x1, then a gated FFN;
    both branches scaled by learned per-channel factors (``beta``, ``gamma``, zero at init)."""

    def __init__(self, c: int, emb_dim: int | None = None, context_dim: int | None = None):
        super().__init__()
        dw = 2 * c
        self.conv1 = nn.Conv2d(c, dw, 1)
        self.conv2 = nn.Conv2d(dw, dw, 3, padding=1, groups=dw)
        self.conv3 = nn.Conv2d(dw // 2, c, 1)
        self.sca = nn.Sequential(GlobalPool(), nn.Conv2d(dw // 2, dw // 2, 1))
        self.conv4 = nn.Conv2d(c, 2 * c, 1)
        self.conv5 = nn.Conv2d(c, c, 1)
        self.norm1 = LayerNorm2d(c)
        self.norm2 = LayerNorm2d(c)
        self.beta = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.film = FiLM(emb_dim, c) if emb_dim else None
        self.xattn = CrossAttention(c, context_dim) if context_dim else None

    def forward(self, inp: torch.Tensor, emb: torch.Tensor | None = None,
                tokens: torch.Tensor | None = None) -> torch.Tensor:
        x = self.norm1(inp)
        if self.film is not None and emb is not None:
            x = self.film(x, emb)
        x = _gate(self.conv2(self.conv1(x)))
        x = self.conv3(x * self.sca(x))
        y = _residual(inp, x, self.beta)
        if self.xattn is not None and tokens is not None:
            y = self.xattn(y, tokens)
        x = self.conv5(_gate(self.conv4(self.norm2(y))))
        return _residual(y, x, self.gamma)


def _run(blocks: nn.Sequential, x: torch.Tensor, emb, tokens=None) -> torch.Tensor:
    for blk in blocks:
        x = blk(x, emb, tokens)
    return x


class NAFNet(Backbone):
    """NAFNet U-Net. ``forward(lq, cond=None)`` returns ``ending(features) + lq`` (official
    residual); any H, W >= 1 (padded to a multiple of ``2 ** levels`` and cropped back).

    ``pad_mode`` defaults to the official zeros (the official outputs at every size);
    ``reflect`` avoids dark borders on sizes that are not multiples of 16 (the default model's
    experts were trained with it). ``tlc`` swaps every channel-attention pool for
    :class:`LocalPool` with a window of ``tlc_base_size`` full-resolution pixels (the official
    NAFNetLocal: 1.5 x its 256-pixel training crops), so images up to that size are unchanged.
    Tiled inference then runs without shared sums (``tile_passes = 0``): each tile pools
    locally within itself, which matches the whole image where the overlap covers half a window.
    """

    multiple_of = 16  # default config; instances set 2 ** len(enc_blk_nums)
    tile_passes = 1  # channel attention pools over the image
    bf16_safe = True  # bf16 autocast: see benchmarks/results/backbones_precision.md

    class Params(Backbone.Params):
        img_channel: Width = 3
        width: Width = 32
        enc_blk_nums: Levels = [2, 2, 4, 8]
        middle_blk_num: Blocks = 12
        dec_blk_nums: Levels = [2, 2, 2, 2]
        cond_dim: Dim | None = None  # degradation-vector dim: FiLM in every block
        cond_hidden: Dim = 128  # width of the shared embedding feeding the FiLMs
        context_dim: Dim | None = None  # content-token dim: cross-attention in the middle blocks
        pad_mode: Literal["reflect", "replicate", "zeros"] = "zeros"
        tlc: bool = False  # test-time local pooling (official NAFNetLocal)
        tlc_base_size: int = Field(384, ge=8)  # TLC window in input pixels (official: 1.5 x the 256 training crop)

        @field_validator("dec_blk_nums")
        @classmethod
        def _levels(cls, v: list[int], info: ValidationInfo) -> list[int]:
            enc = info.data.get("enc_blk_nums")
            if enc is not None and len(enc) != len(v):
                raise ValueError(f"dec_blk_nums {v} and enc_blk_nums {enc} need the same length "
                                 "(one decoder level per encoder level)")
            return v

    def __init__(self, params=None, **overrides: Any):
        super().__init__(params, **overrides)
        p = self.params
        emb = p.cond_hidden if p.cond_dim else None
        self.intro = nn.Conv2d(p.img_channel, p.width, 3, padding=1)
        self.ending = nn.Conv2d(p.width, p.img_channel, 3, padding=1)
        self.encoders = nn.ModuleList()
        self.decoders = nn.ModuleList()
        self.middle_blks = nn.Sequential()
        self.ups = nn.ModuleList()
        self.downs = nn.ModuleList()
        chan = p.width
        for n in p.enc_blk_nums:
            self.encoders.append(nn.Sequential(*[NAFBlock(chan, emb) for _ in range(n)]))
            self.downs.append(nn.Conv2d(chan, 2 * chan, 2, 2))
            chan *= 2
        for _ in range(p.middle_blk_num):
            self.middle_blks.append(NAFBlock(chan, emb, p.context_dim))
        for n in p.dec_blk_nums:
            self.ups.append(nn.Sequential(nn.Conv2d(chan, chan * 2, 1, bias=False), nn.PixelShuffle(2)))
            chan //= 2
            self.decoders.append(nn.Sequential(*[NAFBlock(chan, emb) for _ in range(n)]))
        self.cond_embed = CondEmbed(p.cond_dim, p.cond_hidden) if p.cond_dim else None
        self.multiple_of = 2 ** len(p.enc_blk_nums)
        if p.tlc:  # window in feature pixels: tlc_base_size / stride of the level (official NAFNetLocal)
            levels = [(enc, 2 ** i) for i, enc in enumerate(self.encoders)]
            levels += [(self.middle_blks, self.multiple_of)]
            levels += [(dec, self.multiple_of // 2 ** (i + 1)) for i, dec in enumerate(self.decoders)]
            for blocks, stride in levels:
                for blk in blocks:
                    blk.sca[0] = LocalPool(max(1, p.tlc_base_size // stride))
            self.tile_passes = 0

    @classmethod
    def condition_params(cls, vector_dim: int | None, token_dim: int | None) -> dict[str, Any]:
        return {"cond_dim": vector_dim, "context_dim": token_dim}

    def example_inputs(self, size: tuple[int, int] = (64, 64), batch: int = 1) -> dict[str, Any]:
        p = self.params
        return {"lq": torch.rand(batch, p.img_channel, *size), "cond": example_cond(batch, p.cond_dim, p.context_dim)}

    def forward(self, lq: torch.Tensor, cond: Any = None, **kw: Any) -> torch.Tensor:
        p = self.params
        if lq.dim() != 4 or lq.shape[1] != p.img_channel:
            raise ValueError(f"NAFNet: expected lq of shape [B, {p.img_channel}, H, W], got {list(lq.shape)}")
        h, w = lq.shape[-2:]
        vector, tokens = read_cond(cond, lq.shape[0], p.cond_dim, p.context_dim, "NAFNet")
        emb = None
        if vector is not None:
            emb = self.cond_embed(vector.to(self.cond_embed.proj.weight.dtype))
        if tokens is not None and len(self.middle_blks):
            tokens = tokens.to(self.middle_blks[0].xattn.kv.weight.dtype)
        inp = pad_to_multiple(lq, self.multiple_of, p.pad_mode)

        x = full_precision(self.intro, inp)
        skips = []
        for enc, down in zip(self.encoders, self.downs):
            x = _run(enc, x, emb)
            skips.append(x)
            x = down(x)
        x = _run(self.middle_blks, x, emb, tokens)
        for dec, up, skip in zip(self.decoders, self.ups, reversed(skips)):
            x = _run(dec, up(x) + skip, emb)
        x = self.ending(x) + inp
        return x[:, :, :h, :w]


def _count(sd: dict, prefix: str) -> int:
    """Number of consecutive ``{prefix}{i}.`` blocks in a state dict."""
    n = 0
    while any(k.startswith(f"{prefix}{n}.") for k in sd):
        n += 1
    return n


def detect(sd: dict) -> "NAFNet.Params | None":
    """The Params of a state dict in NAFNet's official layout (vlir's conditioning included), or None."""
    if not {"intro.weight", "ending.weight", "downs.0.weight"} <= sd.keys():
        return None
    levels = _count(sd, "downs.")
    embed, xattn = sd.get("cond_embed.proj.weight"), sd.get("middle_blks.0.xattn.kv.weight")
    return NAFNet.Params(
        img_channel=sd["intro.weight"].shape[1], width=sd["intro.weight"].shape[0],
        enc_blk_nums=[_count(sd, f"encoders.{i}.") for i in range(levels)],
        middle_blk_num=_count(sd, "middle_blks."),
        dec_blk_nums=[_count(sd, f"decoders.{i}.") for i in range(_count(sd, "ups."))],
        cond_dim=None if embed is None else embed.shape[1], cond_hidden=128 if embed is None else embed.shape[0],
        context_dim=None if xattn is None else xattn.shape[1])
