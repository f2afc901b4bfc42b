"""PSNR / SSIM wrappers equal BasicSR's numbers on real images; the fast torch PSNR agrees."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import SHARED
from vlir.core.metrics import mean_finite, psnr, psnr_torch, rgb_to_y, ssim


def set5_pair(name="butterfly_GT.bmp", size=96, sigma=20.0):
    """(clean uint8 BGR, noisy uint8 BGR) crops of a Set5 image, read with OpenCV as BasicSR does."""
    import cv2

    path = SHARED / "data" / "Set5" / name
    if not path.exists():
        pytest.skip(f"{path} not found: metric fixtures need ../shared/data/Set5 (or VLIR_SHARED)")
    gt = cv2.imread(str(path), cv2.IMREAD_COLOR)[:size, 10:10 + size]
    rng = np.random.default_rng(0)
    noisy = np.clip(gt.astype(np.float64) + rng.normal(0, sigma, gt.shape), 0, 255).round().astype(np.uint8)
    return gt, noisy


def to_tensor(bgr_u8):
    return torch.from_numpy(np.ascontiguousarray(bgr_u8[..., ::-1].transpose(2, 0, 1))).float() / 255.0


@pytest.mark.parametrize("crop", [0, 4])
@pytest.mark.parametrize("y", [False, True])
def test_equal_basicsr_on_set5(crop, y):
    from basicsr.metrics.psnr_ssim import calculate_psnr, calculate_ssim

    gt, noisy = set5_pair()
    ref_p = calculate_psnr(noisy, gt, crop_border=crop, test_y_channel=y)
    ref_s = calculate_ssim(noisy, gt, crop_border=crop, test_y_channel=y)
    a, b = to_tensor(noisy), to_tensor(gt)
    assert psnr(a, b, crop_border=crop, y_channel=y) == pytest.approx(ref_p, abs=1e-9)
    assert ssim(a, b, crop_border=crop, y_channel=y) == pytest.approx(ref_s, abs=1e-9)
    assert psnr(a[None], b[None], crop_border=crop, y_channel=y) == pytest.approx(ref_p, abs=1e-9)
    assert 15 < ref_p < 30 and 0.2 < ref_s < 0.95


def test_border_crop_matters():
    gt, noisy = set5_pair()
    noisy = noisy.copy()
    noisy[:2] = 255 - gt[:2]  # damage only the top border rows
    a, b = to_tensor(noisy), to_tensor(gt)
    assert psnr(a, b, crop_border=4) > psnr(a, b) + 1


def test_quantisation_like_tensor2img():
    # float images are clamped, scaled by 255 and rounded before scoring
    from basicsr.metrics.psnr_ssim import calculate_psnr

    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 24, 24, generator=g) * 1.2 - 0.1  # out of range on purpose
    b = torch.rand(3, 24, 24, generator=g)

    def u8(t):  # independent quantisation: clamp, x255, round half to even (numpy / torch)
        arr = (t.clamp(0, 1).permute(1, 2, 0).numpy().astype(np.float32) * np.float32(255.0)).round()
        return arr[..., ::-1].astype(np.uint8)

    assert psnr(a, b) == pytest.approx(calculate_psnr(u8(a), u8(b), crop_border=0), abs=1e-9)


def test_batches_average_and_identical_is_inf():
    gt, noisy = set5_pair()
    a, b = to_tensor(noisy), to_tensor(gt)
    batch_a, batch_b = torch.stack([a, b]), torch.stack([b, b])
    assert psnr(b, b) == float("inf")
    assert mean_finite([psnr(a, b), psnr(b, b)]) == pytest.approx(psnr(a, b))
    assert ssim(batch_a, batch_b) == pytest.approx((ssim(a, b) + 1.0) / 2, abs=1e-9)
    with pytest.raises(ValueError, match="shape"):
        psnr(a, b[:, :10])


def test_psnr_torch_matches_and_batches():
    from basicsr.metrics.psnr_ssim import calculate_psnr

    gt, noisy = set5_pair()
    a, b = to_tensor(noisy), to_tensor(gt)
    assert float(psnr_torch(a, b)) == pytest.approx(calculate_psnr(noisy, gt, 0), abs=1e-5)
    assert float(psnr_torch(a, b, crop_border=4)) == pytest.approx(calculate_psnr(noisy, gt, 4), abs=1e-5)
    # the Y channel of basicsr is computed in float32 from BGR: agree to a few millidecibels
    assert float(psnr_torch(a, b, y_channel=True)) == pytest.approx(
        calculate_psnr(noisy, gt, 0, test_y_channel=True), abs=5e-3)
    x = torch.stack([a, b, a]).requires_grad_()
    vals = psnr_torch(x, torch.stack([b, b, b]).detach())
    assert vals.shape == (3,) and vals[1] > 90 and vals[0] == vals[2]
    vals[[0, 2]].sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_rgb_to_y_range():
    y = rgb_to_y(torch.stack([torch.zeros(3, 2, 2), torch.ones(3, 2, 2)]))
    assert torch.allclose(y[0], torch.full_like(y[0], 16 / 255)) and torch.allclose(y[1], torch.full_like(y[1], 235 / 255))
