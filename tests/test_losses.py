"""Tests of the built-in losses: values and gradients on hand-checked tiny cases."""
from __future__ import annotations

import copy
import math
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vlir.core.components import Perceiver
from vlir.core.conditioning import Perception
from vlir.core.io import CheckpointError
from vlir.plugins.losses.charbonnier import Charbonnier
from vlir.plugins.losses.clip_quality import CLIPQuality
from vlir.plugins.losses.daclip_contrastive import DACLIPContrastive
from vlir.plugins.losses.degradation_contrastive import DegradationContrastive
from vlir.plugins.losses.difficulty_adaptive_perceptual import DifficultyAdaptivePerceptual
from vlir.plugins.losses.l1 import L1
from vlir.plugins.losses.mse import MSE
from vlir.plugins.losses.psnr import PSNR

PLUGINS = Path(__file__).resolve().parents[1] / "plugins"

# conv layers of torchvision's vgg16().features up to relu3_3: index -> (in, out)
VGG_CONVS = {0: (3, 64), 2: (64, 64), 5: (64, 128), 7: (128, 128), 10: (128, 256), 12: (256, 256), 14: (256, 256)}


@pytest.fixture
def empty_hub(tmp_path):
    """Point torch.hub at an empty folder (no cached VGG16), restoring it afterwards."""
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield tmp_path / "hub"
    torch.hub.set_dir(old)


def random_dap(**kw) -> DifficultyAdaptivePerceptual:
    with pytest.warns(UserWarning, match="RANDOM VGG16"):
        return DifficultyAdaptivePerceptual(allow_random_vgg=True, **kw)


@pytest.fixture(scope="module")
def shared_dap():
    torch.manual_seed(0)
    return random_dap()


@pytest.fixture
def dap(shared_dap):
    """A random-VGG perceptual loss (built once per module) with its probe reset to 0 dB."""
    shared_dap.update_probe(0.0)
    return shared_dap


# -- l1 / mse / charbonnier / psnr ------------------------------------------------------

@pytest.mark.parametrize("loss, value, grad", [
    # d/dr mean|r - g| = sign(r - g) / N
    (L1(), (0.5 + 0.5 + 0.1 + 0.75) / 4, [-0.25, 0.25, -0.25, -0.25]),
    # d/dr mean (r - g)^2 = 2 (r - g) / N
    (MSE(), (0.25 + 0.25 + 0.01 + 0.5625) / 4, [-0.25, 0.25, -0.05, -0.375]),
], ids=["l1", "mse"])
def test_l1_and_mse_value_and_gradient(loss, value, grad):
    r = torch.tensor([0.0, 1.0, 0.4, 0.25]).view(1, 1, 2, 2).requires_grad_()
    g = torch.tensor([0.5, 0.5, 0.5, 1.0]).view(1, 1, 2, 2)
    out = loss(restored=r, gt=g)
    assert out.item() == pytest.approx(value)
    out.backward()
    assert torch.allclose(r.grad.flatten(), torch.tensor(grad))


def test_charbonnier_value_and_gradient():
    loss = Charbonnier()
    assert loss.params.eps == 1e-3
    r = torch.tensor([0.0, 1.0]).view(1, 1, 1, 2)
    assert loss(restored=r, gt=torch.zeros_like(r)).item() == pytest.approx((1e-3 + math.sqrt(1 + 1e-6)) / 2)

    # eps 3 and differences 4, 0, -4: sqrt(16 + 9) = 5, sqrt(9) = 3
    loss = Charbonnier(eps=3.0)
    r = torch.tensor([5.0, 1.0, -3.0]).view(1, 1, 1, 3).requires_grad_()
    g = torch.tensor([1.0, 1.0, 1.0]).view(1, 1, 1, 3)
    value = loss(restored=r, gt=g)
    assert value.item() == pytest.approx(13 / 3)
    value.backward()
    # d/dr = (r - g) / sqrt((r - g)^2 + eps^2) / N
    assert torch.allclose(r.grad.flatten(), torch.tensor([4 / 5, 0.0, -4 / 5]) / 3)


def test_charbonnier_rejects_bad_eps():
    with pytest.raises(Exception, match="eps"):
        Charbonnier(eps=0.0)

def test_psnr_loss_is_minus_the_mean_psnr():
    g = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    r = (g + torch.tensor([0.1, 0.02, 0.3]).view(3, 1, 1, 1)).requires_grad_()
    loss = PSNR()(restored=r, gt=g)
    # per-image PSNR (peak 1) of errors 0.1, 0.02, 0.3: 20, 33.98, 10.46 dB
    psnr = [10 * math.log10(1 / e ** 2) for e in (0.1, 0.02, 0.3)]
    assert loss.item() == pytest.approx(-sum(psnr) / 3, abs=1e-4)
    loss.backward()
    # d/dr 10/ln10 * ln(mse_i) / B = 10/ln10 * 2 (r - g) / (N_i mse_i) / B: each image the same total pull
    per_image = r.grad.flatten(1).sum(1)
    expected = 10 / math.log(10) * 2 / torch.tensor([0.1, 0.02, 0.3]) / 3
    assert torch.allclose(per_image, expected, rtol=1e-4)


@pytest.mark.parametrize("loss", [L1(), Charbonnier(), MSE(), PSNR()], ids=lambda x: type(x).__name__)
def test_pixel_losses_name_themselves_on_a_shape_mismatch(loss):
    with pytest.raises(ValueError, match=f"{loss.name or type(loss).__name__}: restored .* differ in shape"):
        loss(restored=torch.zeros(1, 3, 4, 4), gt=torch.zeros(1, 3, 4, 5))


def test_psnr_rejects_bad_eps():
    with pytest.raises(Exception, match="eps"):
        PSNR(eps=-1.0)


# -- degradation contrastive (SupCon) ----------------------------------------------------

def supcon_by_hand(z: list[list[float]], labels: list[int], tau: float) -> float:
    """SupCon written out with python loops (independent of the implementation)."""
    unit = [[v / math.sqrt(sum(c * c for c in row)) for v in row] for row in z]
    n = len(unit)

    def sim(i, j):
        return sum(a * b for a, b in zip(unit[i], unit[j])) / tau

    terms = []
    for i in range(n):
        positives = [p for p in range(n) if p != i and labels[p] == labels[i]]
        if not positives:
            continue
        denom = sum(math.exp(sim(i, a)) for a in range(n) if a != i)
        terms.append(-sum(math.log(math.exp(sim(i, p)) / denom) for p in positives) / len(positives))
    return sum(terms) / len(terms)


def test_supcon_matches_direct_computation():
    z = [[1.0, 0.0], [0.8, 0.6], [0.0, 2.0], [-0.6, 0.8]]
    labels = [0, 0, 1, 1]
    emb = torch.tensor(z, requires_grad=True)
    loss = DegradationContrastive()
    assert loss.params.tau == 0.1
    value = loss(perception={"p": Perception(degradation=emb)}, degradation=torch.tensor(labels))
    assert value.item() == pytest.approx(supcon_by_hand(z, labels, 0.1), rel=1e-5)
    value.backward()
    assert emb.grad is not None and torch.isfinite(emb.grad).all() and emb.grad.abs().sum() > 0

    # anchors without a positive (labels 1 and 2 once each) are left out of the mean
    labels = [0, 0, 1, 2]
    value = loss(perception={"p": Perception(degradation=emb)}, degradation=torch.tensor(labels))
    assert value.item() == pytest.approx(supcon_by_hand(z, labels, 0.1), rel=1e-5)
    # another temperature
    value = DegradationContrastive(tau=0.5)(perception={"p": Perception(degradation=emb)},
                                            degradation=torch.tensor([0, 1, 0, 1]))
    assert value.item() == pytest.approx(supcon_by_hand(z, [0, 1, 0, 1], 0.5), rel=1e-5)


def test_supcon_gradient_matches_finite_differences():
    torch.manual_seed(0)
    emb = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 0, 2, 1, 0])
    loss = DegradationContrastive()

    def f(e):
        return loss(perception={"p": Perception(degradation=e)}, degradation=labels)

    assert torch.autograd.gradcheck(f, (emb,))


def test_supcon_example_inputs_run():
    loss = DegradationContrastive()
    assert torch.isfinite(loss(**loss.example_inputs(batch=4)))


def test_supcon_no_positive_pairs_is_zero_and_attached():
    emb = torch.randn(3, 4, requires_grad=True)
    value = DegradationContrastive()(perception={"p": Perception(degradation=emb)},
                                     degradation=torch.tensor([0, 1, 2]))
    assert value.item() == 0.0
    value.backward()
    assert torch.equal(emb.grad, torch.zeros_like(emb))


def test_supcon_picks_the_perceiver_role():
    a = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.8, 0.6], [0.0, 1.0]])
    b = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [0.1, 0.9]])
    labels = torch.tensor([0, 0, 1, 1])
    perception = {"quality": Perception(quality_probs=torch.rand(4, 3)),
                  "first": Perception(degradation=a), "second": Perception(degradation=b)}
    default = DegradationContrastive()(perception=perception, degradation=labels)
    assert default.item() == pytest.approx(supcon_by_hand(a.tolist(), [0, 0, 1, 1], 0.1), rel=1e-5)
    second = DegradationContrastive(perceiver="second")(perception=perception, degradation=labels)
    assert second.item() == pytest.approx(supcon_by_hand(b.tolist(), [0, 0, 1, 1], 0.1), rel=1e-5)
    with pytest.raises(KeyError, match="nope"):
        DegradationContrastive(perceiver="nope")(perception=perception, degradation=labels)
    with pytest.raises(ValueError, match="no degradation embedding"):
        DegradationContrastive(perceiver="quality")(perception=perception, degradation=labels)
    with pytest.raises(ValueError, match="no perceiver gives a degradation embedding"):
        DegradationContrastive()(perception={"quality": perception["quality"]}, degradation=labels)


# -- difficulty-adaptive perceptual ------------------------------------------------------

def taps_by_hand(vgg, x: torch.Tensor) -> list[torch.Tensor]:
    """relu1_2, relu2_2, relu3_1, relu3_3 of VGG16 written out with functional ops."""
    mean = torch.tensor([0.485, 0.456, 0.406], dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], dtype=x.dtype).view(1, 3, 1, 1)
    f = vgg.features

    def conv(i, h):
        return F.relu(F.conv2d(h, f[i].weight, f[i].bias, padding=1))

    h = (x - mean) / std
    r12 = conv(2, conv(0, h))
    r22 = conv(7, conv(5, F.max_pool2d(r12, 2)))
    r31 = conv(10, F.max_pool2d(r22, 2))
    r33 = conv(14, conv(12, r31))
    return [r12, r22, r31, r33]


def dap_by_hand(loss, r, gt, lq, proxies, masks, omegas, lq_weight=2.0, eps=1e-6,
                weights=(1 / 12, 1 / 6, 1 / 3, 1.0)):
    """The Perceive-IR formula, per sample then batch mean, from hand-computed taps."""
    def d(a, b):
        return (a - b).abs().flatten(1).mean(1)

    fr, fg, fl = taps_by_hand(loss.vgg, r), taps_by_hand(loss.vgg, gt), taps_by_hand(loss.vgg, lq)
    fp = [taps_by_hand(loss.vgg, p) for p in proxies]
    total = torch.zeros(r.shape[0], dtype=r.dtype)
    for j, w in enumerate(weights):
        den = lq_weight * d(fr[j], fl[j])
        for k in range(len(proxies)):
            den = den + masks[:, k] * omegas[:, k] * d(fr[j], fp[k][j])
        total = total + w * d(fr[j], fg[j]) / torch.clamp(den, min=eps)
    return total.mean()


def images(batch=2, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    gt = torch.rand(batch, 3, size, size, generator=g)
    lq = (gt + 0.3 * torch.randn(batch, 3, size, size, generator=g)).clamp(0, 1)
    restored = (gt + 0.1 * torch.randn(batch, 3, size, size, generator=g)).clamp(0, 1)
    near = (gt + 0.02 * torch.randn(batch, 3, size, size, generator=g)).clamp(0, 1)  # high PSNR
    far = (gt + 0.25 * torch.randn(batch, 3, size, size, generator=g)).clamp(0, 1)  # low PSNR
    return restored, gt, lq, near, far


def psnr(a, b):
    return 10 * torch.log10(1 / (a - b).pow(2).flatten(1).mean(1))


def test_dap_state_is_only_probe_psnr():
    loss = random_dap()
    assert list(loss.state_dict()) == ["probe_psnr"]
    assert list(loss.parameters()) == []
    assert loss.probe_psnr.item() == 0.0
    loss.update_probe(27.5)
    other = random_dap()
    other.load_state_dict(loss.state_dict())
    assert other.probe_psnr.item() == 27.5
    with pytest.raises(ValueError, match="finite"):
        loss.update_probe(float("nan"))


def test_dap_equals_formula_without_proxies(dap):
    loss = dap
    r, gt, lq, _, _ = images()
    value = loss(restored=r, gt=gt, lq=lq)
    expect = dap_by_hand(loss, r, gt, lq, [], torch.ones(2, 0), torch.ones(2, 0))
    assert value.item() == pytest.approx(expect.item(), rel=1e-4)
    assert loss(restored=r, gt=gt, lq=lq, proxies=[], proxy_masks=None).item() == pytest.approx(value.item())


def test_dap_accepts_proxy_tensors(dap):
    r, gt, lq, near, far = images()
    listed = dap(restored=r, gt=gt, lq=lq, proxies=[near, far])
    stacked = dap(restored=r, gt=gt, lq=lq, proxies=torch.stack([near, far], dim=1))
    assert stacked.item() == pytest.approx(listed.item(), rel=1e-6)
    single = dap(restored=r, gt=gt, lq=lq, proxies=near)
    assert single.item() == pytest.approx(dap(restored=r, gt=gt, lq=lq, proxies=[near]).item(), rel=1e-6)


def test_dap_hard_and_easy_proxy_weights(dap):
    loss = dap
    r, gt, lq, near, far = images()
    p_near, p_far = psnr(near, gt), psnr(far, gt)
    assert (p_far + 3 < p_near).all()
    # probe between the two proxies: the far proxy (PSNR <= probe) is hard, the near one easy
    loss.update_probe(float((p_near.min() + p_far.max()) / 2))
    omegas = loss.proxy_weights([near, far], gt)
    assert torch.equal(omegas, torch.tensor([[0.75, 1.25], [0.75, 1.25]]))
    value = loss(restored=r, gt=gt, lq=lq, proxies=[near, far])
    expect = dap_by_hand(loss, r, gt, lq, [near, far], torch.ones(2, 2), omegas)
    assert value.item() == pytest.approx(expect.item(), rel=1e-4)

    # the comparison is per sample and the boundary (PSNR == probe) counts as hard
    loss.update_probe(float(p_near[0]))
    assert loss.proxy_weights([near], gt)[0, 0].item() == 1.25
    # probe above both: both hard; probe at 0 dB (initial): both easy
    loss.update_probe(100.0)
    assert torch.equal(loss.proxy_weights([near, far], gt), torch.full((2, 2), 1.25))
    loss.update_probe(0.0)
    assert torch.equal(loss.proxy_weights([near, far], gt), torch.full((2, 2), 0.75))
    # custom weights
    custom = random_dap(hard_weight=2.0, easy_weight=0.5, lq_weight=1.0)
    custom.update_probe(float((p_near.min() + p_far.max()) / 2))
    assert torch.equal(custom.proxy_weights([near, far], gt), torch.tensor([[0.5, 2.0], [0.5, 2.0]]))


def test_dap_masks_remove_proxies(dap):
    loss = dap
    r, gt, lq, near, far = images(seed=1)
    loss.update_probe(25.0)
    only_near = loss(restored=r, gt=gt, lq=lq, proxies=[near])
    masked = loss(restored=r, gt=gt, lq=lq, proxies=[near, far], proxy_masks=torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
    assert masked.item() == pytest.approx(only_near.item(), rel=1e-5)
    none = loss(restored=r, gt=gt, lq=lq, proxies=[near, far], proxy_masks=torch.zeros(2, 2))
    assert none.item() == pytest.approx(loss(restored=r, gt=gt, lq=lq).item(), rel=1e-5)
    # per-sample masks match the formula
    masks = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    value = loss(restored=r, gt=gt, lq=lq, proxies=[near, far], proxy_masks=masks)
    expect = dap_by_hand(loss, r, gt, lq, [near, far], masks, loss.proxy_weights([near, far], gt))
    assert value.item() == pytest.approx(expect.item(), rel=1e-4)
    with pytest.raises(ValueError, match="proxy_masks"):
        loss(restored=r, gt=gt, lq=lq, proxies=[near, far], proxy_masks=torch.ones(2, 3))
    with pytest.raises(ValueError, match="lq"):
        loss(restored=r, gt=gt, lq=lq[:, :, :8])


def test_dap_gradient_reaches_restored_only(dap):
    loss = dap
    r, gt, lq, near, far = images(batch=1, size=8, seed=2)
    r.requires_grad_()
    near.requires_grad_()
    loss.update_probe(20.0)
    loss(restored=r, gt=gt, lq=lq, proxies=[near, far]).backward()
    assert r.grad is not None and r.grad.abs().sum() > 0
    assert near.grad is None  # proxies are targets, not trained through

    # autograd's directional derivative matches central finite differences (float64)
    loss64 = copy.deepcopy(loss).double()
    x, gt, lq, near, far = (t.detach().double() for t in (r, gt, lq, near, far))
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x.requires_grad_()

    def f(y):
        return loss64(restored=y, gt=gt, lq=lq, proxies=[near, far])

    f(x).backward()
    h = 1e-6
    with torch.no_grad():
        numeric = (f(x + h * v) - f(x - h * v)) / (2 * h)
    assert (x.grad * v).sum().item() == pytest.approx(numeric.item(), rel=1e-4, abs=1e-8)


def test_dap_without_weights_is_a_clear_error(empty_hub):
    with pytest.raises(FileNotFoundError) as e:
        DifficultyAdaptivePerceptual()
    msg = str(e.value)
    assert "vgg16-397923af.pth" in msg and "vgg_weights" in msg and str(empty_hub) in msg
    with pytest.raises(FileNotFoundError, match="no such file"):
        DifficultyAdaptivePerceptual(vgg_weights=str(empty_hub / "missing.pth"))
    with pytest.warns(UserWarning, match="RANDOM VGG16"):
        DifficultyAdaptivePerceptual(allow_random_vgg=True)


def torchvision_like_state_dict(seed=0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for i, (cin, cout) in VGG_CONVS.items():
        sd[f"features.{i}.weight"] = torch.randn(cout, cin, 3, 3, generator=g) * 0.05
        sd[f"features.{i}.bias"] = torch.randn(cout, generator=g) * 0.01
    sd["features.17.weight"] = torch.zeros(512, 256, 3, 3)  # deeper layers and the classifier are ignored
    sd["classifier.6.bias"] = torch.zeros(1000)
    return sd


def check_loaded(loss, sd):
    for i in VGG_CONVS:
        assert torch.equal(loss.vgg.features[i].weight, sd[f"features.{i}.weight"])
        assert torch.equal(loss.vgg.features[i].bias, sd[f"features.{i}.bias"])
    assert list(loss.state_dict()) == ["probe_psnr"]


def test_dap_loads_vgg_from_local_files(tmp_path, empty_hub):
    from safetensors.torch import save_file

    sd = torchvision_like_state_dict()
    path = tmp_path / "vgg16-397923af.pth"
    torch.save(sd, path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no random-weights warning
        loss = DifficultyAdaptivePerceptual(vgg_weights=str(path))
    check_loaded(loss, sd)
    assert loss.vgg.source == str(path)
    r, gt, lq, near, _ = images(batch=1, size=8)
    value = loss(restored=r, gt=gt, lq=lq, proxies=[near])
    expect = dap_by_hand(loss, r, gt, lq, [near], torch.ones(1, 1), loss.proxy_weights([near], gt))
    assert value.item() == pytest.approx(expect.item(), rel=1e-4)

    st = tmp_path / "vgg16.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(st))
    check_loaded(DifficultyAdaptivePerceptual(vgg_weights=str(st)), sd)

    # torchvision's cache is used when no path is given
    cache = empty_hub / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(sd, cache / "vgg16-397923af.pth")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_loaded(DifficultyAdaptivePerceptual(), sd)


def test_dap_rejects_incomplete_vgg_file(tmp_path):
    sd = torchvision_like_state_dict()
    del sd["features.12.weight"]
    path = tmp_path / "broken.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match="12.weight"):
        DifficultyAdaptivePerceptual(vgg_weights=str(path))
    path = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match="features.N.weight"):
        DifficultyAdaptivePerceptual(vgg_weights=str(path))


def test_dap_layer_weights_validated():
    with pytest.raises(Exception, match="layer_weights"):
        DifficultyAdaptivePerceptual(allow_random_vgg=True, layer_weights=[1.0, 1.0])


# -- clip quality ------------------------------------------------------------------------

class TinyQuality(Perceiver):
    """A small trainable stand-in quality perceiver (real torch layers)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.head = nn.Linear(3, 3)

    def forward(self, lq):
        return Perception(quality_probs=self.head(lq.mean(dim=(2, 3))).softmax(-1))


def test_clip_quality_value_and_gradient_with_frozen_perceiver():
    perceiver = TinyQuality()  # parameters require grad: the loss must still not train it
    pipeline = SimpleNamespace(perceivers=nn.ModuleDict({"quality": perceiver}))
    r = torch.rand(2, 3, 8, 8, requires_grad=True)
    loss = CLIPQuality()
    value = loss(restored=r, pipeline=pipeline)
    with torch.no_grad():
        expect = (1 - perceiver(r).quality_probs[:, 2]).mean()
    assert value.item() == pytest.approx(expect.item(), rel=1e-6)
    value.backward()
    assert r.grad is not None and r.grad.abs().sum() > 0
    assert all(p.grad is None for p in perceiver.parameters())
    # the gradient is that of mean(1 - p_high) through the perceiver
    r2 = r.detach().clone().requires_grad_()
    (1 - perceiver(r2).quality_probs[:, 2]).mean().backward()
    assert torch.allclose(r.grad, r2.grad)


def test_clip_quality_finds_the_perceiver():
    other = TinyQuality()
    pipeline = SimpleNamespace(perceivers=nn.ModuleDict({"a": other, "b": TinyQuality()}))
    with pytest.raises(ValueError, match="set Params 'perceiver'"):
        CLIPQuality()(restored=torch.rand(1, 3, 4, 4), pipeline=pipeline)
    with pytest.raises(KeyError, match="roles"):
        CLIPQuality(perceiver="c")(restored=torch.rand(1, 3, 4, 4), pipeline=pipeline)
    assert CLIPQuality(perceiver="b")(restored=torch.rand(1, 3, 4, 4), pipeline=pipeline).dim() == 0
    bad = SimpleNamespace(perceivers=nn.ModuleDict({"x": nn.Identity()}))
    with pytest.raises(ValueError, match="quality_probs"):
        CLIPQuality()(restored=torch.rand(1, 3, 4, 4), pipeline=bad)


@pytest.mark.skipif(not (PLUGINS / "perceivers" / "quality_perceiver.py").exists(),
                    reason="plugins/perceivers/quality_perceiver.py not written yet")
def test_clip_quality_through_the_quality_perceiver():
    from vlir.plugins.perceivers.quality_perceiver import QualityPerceiver

    torch.manual_seed(0)
    perceiver = QualityPerceiver(model="vlir-tiny", pretrained=None, n_ctx=4)
    trainable = {n for n, p in perceiver.named_parameters() if p.requires_grad}
    pipeline = SimpleNamespace(perceivers=nn.ModuleDict({"quality": perceiver}))
    r = torch.rand(2, 3, 32, 32, requires_grad=True)
    value = CLIPQuality()(restored=r, pipeline=pipeline)
    with torch.no_grad():
        expect = (1 - perceiver(r).quality_probs[:, 2]).mean()
    assert 0.0 <= value.item() <= 1.0
    assert value.item() == pytest.approx(expect.item(), rel=1e-5)
    value.backward()
    assert r.grad is not None and r.grad.abs().sum() > 0
    assert all(p.grad is None for p in perceiver.parameters())
    assert {n for n, p in perceiver.named_parameters() if p.requires_grad} == trainable


# -- daclip contrastive ------------------------------------------------------------------

class TinyObjective(Perceiver):
    """A stand-in perceiver with a training objective (real torch layers)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(3, 2)

    def forward(self, lq):
        return Perception(degradation=self.lin(lq.mean(dim=(2, 3))))

    def objective(self, batch):
        logits = self.lin(batch["lq"].mean(dim=(2, 3)))
        ce = F.cross_entropy(logits, batch["degradation"])
        return {"ce": ce, "loss": 2 * ce}


def test_daclip_contrastive_delegates_to_the_objective():
    assert DACLIPContrastive.inputs == ("pipeline", "batch")
    p = TinyObjective()
    pipeline = SimpleNamespace(perceivers=nn.ModuleDict({"deg": p}))
    batch = {"lq": torch.rand(4, 3, 8, 8), "degradation": torch.tensor([0, 1, 1, 0]), "caption": ["a"] * 4}
    value = DACLIPContrastive()(pipeline=pipeline, batch=batch)
    assert value.item() == pytest.approx(p.objective(batch)["loss"].item())
    value.backward()
    assert p.lin.weight.grad is not None  # the perceiver's objective trains the perceiver
    bad = SimpleNamespace(perceivers=nn.ModuleDict({"x": TinyQuality()}))
    with pytest.raises(NotImplementedError):
        DACLIPContrastive()(pipeline=bad, batch=batch)
    with pytest.raises(TypeError, match="perceivers"):
        DACLIPContrastive()(pipeline=object(), batch=batch)


@pytest.mark.skipif(not (PLUGINS / "perceivers" / "daclip.py").exists(),
                    reason="plugins/perceivers/daclip.py not written yet")
def test_daclip_contrastive_with_the_daclip_perceiver():
    from vlir.plugins.perceivers.daclip import DACLIP

    torch.manual_seed(0)
    daclip = DACLIP(model="vlir-tiny", pretrained=None).eval()
    pipeline = SimpleNamespace(perceivers=nn.ModuleDict({"quality": TinyQuality(), "daclip": daclip}))
    batch = {"lq": torch.rand(2, 3, 32, 32), "gt": torch.rand(2, 3, 32, 32),
             "caption": ["a photo of a cat", "a red car"], "degradation": torch.tensor([0, 4])}
    value = DACLIPContrastive()(pipeline=pipeline, batch=batch)
    assert value.dim() == 0 and torch.isfinite(value)
    assert value.item() == pytest.approx(daclip.objective(batch)["loss"].item(), rel=1e-5)
    value.backward()
    assert any(q.grad is not None for q in daclip.visual_control.parameters())
