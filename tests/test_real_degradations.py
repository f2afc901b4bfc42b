"""Realistic degradations (camera noise, rain layers, lens blur, shake, coloured haze, colour-cast low
light) and their physical-order mix: contract, physics, and agreement with BasicSR's kernels."""
from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from test_degradations import textured as natural
from vlir.core.metrics import psnr_torch
from vlir.core.registry import get_registry
from vlir.plugins.degradations._common import anisotropic_gaussian_kernels, disc_kernels
from vlir.plugins.degradations.camera_noise import CameraNoise, bayer_masks, demosaic
from vlir.plugins.degradations.haze import Haze
from vlir.plugins.degradations.lens_blur import LensBlur
from vlir.plugins.degradations.low_light import LowLight
from vlir.plugins.degradations.mix import SCENE, Mix
from vlir.plugins.degradations.rain_streaks import RainStreaks
from vlir.plugins.degradations.shake import trajectory_kernels

NEW = {"camera_noise": "noisy", "rain_streaks": "rainy", "lens_blur": "blurry", "shake": "motion-blurry",
       "mix": "mixed"}


def textured(b=2, h=48, w=52, seed=0):
    return natural(b, h, w, seed)


def seeded(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("name", list(NEW))
def test_contract(name):
    reg = get_registry()
    d = reg.load("degradation", name)()
    assert d.label == NEW[name]
    x = textured()
    y1, y2, y3 = d(x, generator=seeded(1)), d(x, generator=seeded(1)), d(x, generator=seeded(2))
    assert y1.shape == x.shape and y1.dtype == x.dtype
    assert torch.equal(y1, y2) and not torch.equal(y1, y3)
    assert y1.min() >= 0 and y1.max() <= 1 and torch.isfinite(y1).all()
    assert (psnr_torch(y1, x) < 40).all(), f"{name} barely changes the image"
    assert torch.equal(x, textured())
    assert d(x[:1], generator=seeded(1)).shape == (1, *x.shape[1:])


def test_demosaic_keeps_flat_colours():
    raw = (torch.tensor([0.2, 0.5, 0.8])[:, None, None] * bayer_masks(8, 10)).sum(0)[None, None]
    out = demosaic(raw, bayer_masks(8, 10))
    assert torch.allclose(out[0, :, 2:-2, 2:-2], torch.tensor([0.2, 0.5, 0.8])[:, None, None].expand(3, 4, 6), atol=1e-6)


def test_camera_noise_is_signal_dependent_and_correlated():
    x = torch.cat([torch.full((1, 3, 64, 64), 0.1), torch.full((1, 3, 64, 64), 0.8)])
    d = CameraNoise(shot=0.01, read=1e-4, jpeg_probability=0.0, gamma=1.0)
    res = d(x, generator=seeded(0)) - x
    dark, bright = res[0, :, 4:-4, 4:-4].std(), res[1, :, 4:-4, 4:-4].std()
    assert bright > 2 * dark  # variance shot * x: brighter pixels are noisier
    # demosaicing spreads each raw sample over its neighbours: adjacent residuals correlate
    r = res[1, 1, 4:-4, 4:-4]
    corr = torch.corrcoef(torch.stack([r[:, :-1].flatten(), r[:, 1:].flatten()]))[0, 1]
    assert corr > 0.2
    white = torch.randn(60, 60, generator=seeded(1))
    assert abs(torch.corrcoef(torch.stack([white[:, :-1].flatten(), white[:, 1:].flatten()]))[0, 1]) < 0.1
    with pytest.raises(ValidationError):
        CameraNoise(shot=-1.0)


def test_anisotropic_kernels_equal_basicsr():
    degradations = pytest.importorskip("basicsr.data.degradations")
    sx, sy, th = torch.tensor([0.8, 3.0]), torch.tensor([2.5, 1.1]), torch.tensor([0.3, 2.0])
    ours = anisotropic_gaussian_kernels(sx, sy, th, 21)
    for i in range(2):
        ref = degradations.bivariate_Gaussian(21, float(sx[i]), float(sy[i]), float(th[i]), isotropic=False)
        assert torch.allclose(ours[i], torch.from_numpy(ref).float(), atol=1e-7)


def test_disc_and_lens_blur():
    k = disc_kernels(torch.tensor([3.0]), 11)[0]
    assert math.isclose(float(k.sum()), 1.0, rel_tol=1e-6) and k[5, 5] > 0 and k[5, 0] == 0 and k[0, 0] == 0
    x = textured(1)
    sharp = LensBlur(sigma=0.5, radius=1.0)(x, generator=seeded(0))
    soft = LensBlur(sigma=3.0, radius=5.0)(x, generator=seeded(0))
    assert psnr_torch(soft, x) < psnr_torch(sharp, x)


def test_shake_trajectories():
    k = trajectory_kernels(torch.tensor([12.0, 12.0]), torch.tensor([0.0, 0.5]), 17, seeded(0))
    assert torch.allclose(k.sum((1, 2)), torch.ones(2))
    yy, xx = torch.meshgrid(torch.arange(17.0), torch.arange(17.0), indexing="ij")
    pts = torch.stack([xx.flatten(), yy.flatten()], 1)
    w = k[0].flatten()[:, None]
    centred = pts - (w * pts).sum(0)
    cov = (w * centred).T @ centred
    lo, hi = torch.linalg.eigvalsh(cov)
    assert hi > 8 and lo / hi < 0.02  # curl 0: a straight line of about 12 pixels
    ys, xs = torch.nonzero(k[1] > 1e-3, as_tuple=True)
    assert len(xs) > 8


def test_rain_heavy_is_heavier_and_streaks_are_near_vertical():
    reg = get_registry()
    entry = reg.get("degradation", "rain_streaks")
    light, heavy = RainStreaks(**entry.presets["light"]), RainStreaks(**entry.presets["heavy"])
    x = torch.full((2, 3, 96, 96), 0.3)
    yl, yh = light(x, generator=seeded(0)), heavy(x, generator=seeded(0))
    assert (yh - x).abs().mean() > 2 * (yl - x).abs().mean()
    rain = RainStreaks(angle=0.0, spread=0.0, veil=0.0)(x, generator=seeded(3)) - x
    gy = (rain[..., 1:, :] - rain[..., :-1, :]).abs().mean()
    gx = (rain[..., :, 1:] - rain[..., :, :-1]).abs().mean()
    assert gx > 2 * gy  # vertical streaks change fast across, slowly along
    summed = RainStreaks(blend="sum")(x, generator=seeded(0))
    assert summed.shape == x.shape


def test_haze_tint_and_low_light_cast_leave_plain_models_unchanged():
    x = textured()
    assert torch.equal(Haze()(x, generator=seeded(0)), Haze(tint=0.0)(x, generator=seeded(0)))
    plain = LowLight()(x, generator=seeded(0))
    g = seeded(0)  # the plain formula: y = scale x^gamma + noise of variance shot y + read^2
    from vlir.plugins.degradations._common import randn, uniform
    n = x.shape[0]
    gamma, scale, shot, read = (uniform(v, n, g).float()[:, None, None, None] for v in
                                ((1.5, 2.5), (0.1, 0.5), (0.0, 0.01), (0.0, 0.01)))
    y = scale * x ** gamma
    assert torch.allclose(plain, (y + (shot * y + read ** 2).sqrt() * randn(x.shape, g)).clamp(0, 1))
    grey = torch.full((1, 3, 32, 32), 0.5)
    tinted = Haze(tint=0.3, beta=3.0, ramp=0.0)(grey, generator=seeded(1))
    assert tinted.mean((2, 3)).std() > 0.01  # coloured airlight
    cast = LowLight(cast=0.3, shot=0.0, read=0.0)(grey, generator=seeded(1))
    means = cast.mean((2, 3))
    assert means.max() / means.min() > 1.05  # per-channel gains
    bright = LowLight(gain=4.0, shot=0.0, read=0.0)(grey, generator=seeded(1))
    dim = LowLight(shot=0.0, read=0.0)(grey, generator=seeded(1))
    assert bright.mean() > 2 * dim.mean()


def test_mix_physical_order_and_labels():
    m = Mix()
    x = textured(b=12)
    out, labels = m.compose(x, seeded(0))
    order = list(m.parts)
    scene = {c.label for c in SCENE}
    for words in labels:
        assert 2 <= len(words) <= 3 and len(set(words)) == len(words)
        assert [order.index(w) for w in words] == sorted(order.index(w) for w in words)
        assert sum(w in scene for w in words) <= 1
    # the composition is the parts applied in that order with the same generator
    g = seeded(0)
    chosen = m.choose(12, g)
    assert chosen == labels
    y = x[:1]
    for w in chosen[0]:
        y = m.parts[w](y, generator=g)
    assert torch.equal(y, out[:1])
    assert torch.equal(m(x, generator=seeded(0)), out)


def test_mix_params_are_checked():
    with pytest.raises(ValidationError, match="unknown class word"):
        Mix(include=["noisy", "foggy"])
    with pytest.raises(ValidationError):
        Mix(params={"noisy": {"shott": 0.1}})
    with pytest.raises(ValueError, match="count"):
        Mix(include=["hazy", "rainy"], count=2)
    only = Mix(include=["noisy", "jpeg-compressed"], count=2)
    _, labels = only.compose(textured(b=3), seeded(0))
    assert labels == [["noisy", "jpeg-compressed"]] * 3
