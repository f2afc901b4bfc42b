"""Built-in degradations: seeded determinism, range, shape, real degradation, and agreement with BasicSR."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from vlir.core.components import Degradation
from vlir.core.metrics import psnr_torch
from vlir.plugins.degradations.blur import GaussianBlur
from vlir.plugins.degradations.haze import Haze
from vlir.plugins.degradations.inpainting import Inpainting
from vlir.plugins.degradations.jpeg import JPEG, jpeg_roundtrip
from vlir.plugins.degradations.low_light import LowLight
from vlir.plugins.degradations.motion_blur import MotionBlur
from vlir.plugins.degradations.noise import GaussianNoise
from vlir.plugins.degradations.rain import Rain

ALL = {
    GaussianNoise: "noisy", JPEG: "jpeg-compressed", GaussianBlur: "blurry", MotionBlur: "motion-blurry",
    LowLight: "low-light", Haze: "hazy", Rain: "rainy", Inpainting: "uncompleted",
}


def textured(b=2, h=37, w=45, seed=0):
    """Natural-ish test images: smooth colour gradients plus texture, in [0.05, 0.95]."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    base = torch.stack([xx, yy, (xx + yy) / 2])[None].repeat(b, 1, 1, 1)
    tex = torch.nn.functional.avg_pool2d(torch.rand(b, 3, h, w, generator=g), 3, 1, 1)
    return (0.05 + 0.9 * (0.6 * base + 0.4 * tex)).clamp(0, 1)


def seeded(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("cls", list(ALL), ids=lambda c: c.__name__)
def test_contract(cls):
    d = cls()
    assert isinstance(d, Degradation) and d.label == ALL[cls]
    x = textured()
    y1 = d(x, generator=seeded(1))
    y2 = d(x, generator=seeded(1))
    y3 = d(x, generator=seeded(2))
    assert y1.shape == x.shape and y1.dtype == x.dtype
    assert torch.equal(y1, y2), "same seed must give the same output"
    assert not torch.equal(y1, y3), "different seeds must give different outputs"
    assert y1.min() >= 0 and y1.max() <= 1 and torch.isfinite(y1).all()
    assert (psnr_torch(y1, x) < 40).all(), f"{cls.__name__} barely changes the image"
    assert torch.equal(x, textured())  # input untouched
    single = d(x[:1], generator=seeded(1))
    assert single.shape == (1, *x.shape[1:])
    # no generator: global RNG, still valid
    y = d(x)
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1


@pytest.mark.parametrize("cls", list(ALL), ids=lambda c: c.__name__)
def test_tiny_and_half_images(cls):
    d = cls()
    x = torch.rand(1, 3, 5, 7, generator=seeded(0))
    y = d(x, generator=seeded(0))
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    y = d(x.half(), generator=seeded(0))
    assert y.dtype == torch.float16


def test_rejects_bad_input_shape():
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        GaussianNoise()(torch.rand(3, 8, 8))


def test_params_validation():
    with pytest.raises(ValidationError, match="low <= high"):
        GaussianNoise(sigma=(50, 15))
    with pytest.raises(ValidationError, match=r"\[1, 100\]"):
        JPEG(quality=(0, 30))
    with pytest.raises(ValidationError, match="odd"):
        GaussianBlur(kernel_size=20)
    with pytest.raises(ValidationError):
        Haze(unknown=1)
    assert JPEG(quality=[20, 30]).params.quality == (20, 30)  # lists from YAML become ranges


def test_parameters_drawn_per_image():
    x = torch.full((2, 3, 64, 64), 0.5)
    y = GaussianNoise(sigma=(5, 50))(x, generator=seeded(0))
    stds = (y - x).std(dim=(1, 2, 3)) * 255
    assert abs(float(stds[0] - stds[1])) > 1
    same = textured(1, 32, 32).repeat(2, 1, 1, 1)
    q = JPEG(quality=(5, 95))(same, generator=seeded(0))
    assert not torch.equal(q[0], q[1])


def test_noise_sigma_fixed_value():
    x = torch.full((1, 3, 96, 96), 0.5)
    y = GaussianNoise(sigma=25)(x, generator=seeded(0))
    assert abs(float((y - x).std()) * 255 - 25) < 0.5


def test_blur_kernel_equals_basicsr():
    from basicsr.data.degradations import bivariate_Gaussian

    from vlir.plugins.degradations._common import gaussian_kernels

    for s in (0.8, 2.0, 3.0):
        ref = bivariate_Gaussian(21, s, s, 0, isotropic=True)
        ours = gaussian_kernels(torch.tensor([s]), 21)[0].numpy()
        np.testing.assert_allclose(ours, ref, atol=1e-7)
    # a constant image stays constant; a fixed sigma blurs
    d = GaussianBlur(sigma=2.0)
    assert torch.allclose(d(torch.full((1, 3, 30, 30), 0.3)), torch.full((1, 3, 30, 30), 0.3), atol=1e-6)


def test_jpeg_equals_basicsr():
    import cv2  # noqa: F401  (basicsr needs it)
    from basicsr.data.degradations import add_jpg_compression

    x = textured(1, 40, 56)[0]
    for q in (10, 35, 90):
        ours = jpeg_roundtrip(x, q)
        bgr = np.ascontiguousarray(x.numpy().transpose(1, 2, 0)[..., ::-1]).astype(np.float32)
        ref = add_jpg_compression(bgr, q)[..., ::-1].transpose(2, 0, 1)
        np.testing.assert_array_equal(ours.numpy(), np.ascontiguousarray(ref))
    # lower quality, lower fidelity
    y10, y90 = JPEG(quality=10)(x[None]), JPEG(quality=90)(x[None])
    assert psnr_torch(y10, x[None]) < psnr_torch(y90, x[None])


def test_motion_blur_direction():
    # horizontal stripes are unchanged by horizontal motion, destroyed by vertical motion
    h = w = 40
    rows = (torch.arange(h) % 6 < 3).float()[:, None].expand(h, w)
    x = (0.2 + 0.6 * rows)[None, None].expand(1, 3, h, w).contiguous()
    horiz = MotionBlur(length=15, angle=0)(x)
    vert = MotionBlur(length=15, angle=90)(x)
    assert torch.allclose(horiz, x, atol=1e-5)
    assert float((vert - x).abs().mean()) > 0.1


def test_low_light_haze_rain_inpainting_behaviour():
    x = textured(2, 48, 48)
    dark = LowLight()(x, generator=seeded(0))
    assert (dark.mean(dim=(1, 2, 3)) < 0.6 * x.mean(dim=(1, 2, 3))).all()
    hazy = Haze()(x, generator=seeded(0))
    assert (hazy.std(dim=(1, 2, 3)) < x.std(dim=(1, 2, 3))).all()  # contrast drops
    veil = Haze(ramp=1.0)(torch.zeros(1, 3, 48, 48), generator=seeded(0))  # black scene: only A (1 - t)
    assert veil[:, :, :8].mean() > veil[:, :, -8:].mean()  # far (top) is hazier
    rainy = Rain()(x, generator=seeded(0))
    assert (rainy >= x - 1e-6).all()  # screen blending only brightens
    d = Inpainting(fill="zeros")
    m = d.mask(2, 48, 48, generator=seeded(3))
    assert m.any() and not m.all()
    out = d(x, generator=seeded(3))
    assert (out.masked_select(m.expand_as(out)) == 0).all()
    boxes = Inpainting(masks="boxes", fill="ones")(x, generator=seeded(0))
    assert ((boxes == 1).all(dim=1)).any()


def test_registry_builds_degradations():
    try:
        from vlir.core.registry import get_registry

        reg = get_registry()
        d = reg.build("degradation", "noise", params={"sigma": 25})
    except Exception as e:  # the registry is another component; report, don't fail here
        pytest.skip(f"registry not usable yet: {e}")
    assert isinstance(d, GaussianNoise) and d.params.sigma == 25
    for name, cls in [("jpeg", JPEG), ("blur", GaussianBlur), ("motion_blur", MotionBlur), ("low_light", LowLight),
                      ("haze", Haze), ("rain", Rain), ("inpainting", Inpainting)]:
        assert reg.load("degradation", name) is cls


def test_declared_symmetries_match_what_the_degradations_do():
    """Rain and haze have a direction, so the self-ensemble must not turn them (SYMMETRIES)."""
    from vlir.core.components import SYMMETRIES

    assert all(cls.symmetry in SYMMETRIES for cls in ALL)
    assert {cls.__name__ for cls in ALL if cls.symmetry != "dihedral"} == {"Rain", "Haze"}
    flat = torch.full((4, 3, 64, 64), 0.3)
    streaks = Rain()(flat, generator=seeded(0)) - flat
    across, along = streaks.diff(dim=-1).abs().mean(), streaks.diff(dim=-2).abs().mean()
    assert across > 1.5 * along  # near-vertical streaks; a quarter turn (not in "flips") swaps the two
    hazy = Haze()(flat, generator=seeded(0))
    assert hazy[..., :32, :].mean() > hazy[..., 32:, :].mean() + 0.02  # far at the top: only "mirror" keeps it
    assert set(SYMMETRIES[Rain.symmetry]) == {0, 2, 4, 6} and set(SYMMETRIES[Haze.symmetry]) == {0, 4}


def test_unknown_symmetry_is_refused_when_the_class_is_defined():
    with pytest.raises(TypeError, match=r"Sideways: symmetry 'diagonal' is not one of dihedral, flips, mirror"):
        class Sideways(Degradation):
            symmetry = "diagonal"


def test_clean_is_the_identity_with_its_own_label():
    from vlir.core.registry import get_registry
    from vlir.plugins.degradations.clean import Clean

    d = get_registry().build("degradation", "clean")
    assert isinstance(d, Clean) and d.label == "clean"
    x = textured()
    assert torch.equal(d(x, generator=seeded(1)), x) and torch.equal(d(x), x)
    assert d(x.half()).dtype == torch.float16
    assert torch.equal(d(torch.full((1, 3, 4, 4), 1.5)), torch.ones(1, 3, 4, 4))  # clamped like the others
    with pytest.raises(ValueError, match="clean: expected images"):
        d(torch.rand(3, 4, 4))


def test_clean_can_be_saved_as_high_quality_jpeg():
    from vlir.core.registry import get_registry
    from vlir.plugins.degradations.jpeg import jpeg_roundtrip

    x = textured()
    always = get_registry().build("degradation", "clean", params={"jpeg": [95, 95], "jpeg_probability": 1.0})
    y = always(x, generator=seeded(0))
    assert torch.equal(y[0], jpeg_roundtrip(x[0], 95)) and not torch.equal(y, x)
    never = get_registry().build("degradation", "clean", params={"jpeg_probability": 0.0})
    assert torch.equal(never(x, generator=seeded(0)), x)
