"""IR-SDE process: schedule, forward marginal, maximum-likelihood loss and the three samplers."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vlir.core.components import Backbone
from vlir.core.conditioning import Conditioning
from vlir.plugins.backbones.conditional_unet import ConditionalUNet
from vlir.plugins.backbones.irsde import IRSDE

TINY = {"nf": 32, "ch_mult": [1, 1, 1, 2]}


pytestmark = pytest.mark.usefixtures("no_mkldnn")


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / F.mse_loss(a, b)))


def images(n: int, size: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Smooth random clean images and their noisy (sigma 25/255) versions."""
    g = torch.Generator().manual_seed(seed)
    gt = F.interpolate(torch.rand(n, 3, 4, 4, generator=g), size=(size, size), mode="bilinear", align_corners=False)
    lq = (gt + 25 / 255 * torch.randn(gt.shape, generator=g)).clamp(0, 1)
    return lq, gt


class OracleNoise(Backbone):
    """A diffusion backbone that knows the clean image: returns the exact noise of x_t."""

    diffusion = True

    def __init__(self, process: IRSDE, gt: torch.Tensor):
        super().__init__()
        self.process, self.gt, self.calls = process, gt, 0

    def forward(self, lq, cond=None, *, x=None, t=None):
        self.calls += 1
        t = torch.as_tensor(t)
        mean = self.process.marginal(self.gt, lq, t, torch.zeros_like(x))
        return (x - mean) / self.process._at(self.process.sigma_bars, t, x)


def test_schedule_matches_definition():
    p = IRSDE()
    lam = 50 / 255
    assert p.lam == pytest.approx(lam)
    assert p.thetas.shape == (101,) and p.thetas_cumsum[0] == 0
    # cosine theta schedule, s = 0.008 (official: 1 - alphas_cumprod over T + 2 steps)
    s, n = 0.008, 102
    f = [math.cos(((i / n) + s) / (1 + s) * math.pi / 2) ** 2 for i in range(n + 1)]
    assert p.thetas[37].item() == pytest.approx(1 - f[38] / f[0], rel=1e-5)
    assert torch.allclose(p.sigmas ** 2, 2 * lam ** 2 * p.thetas, rtol=1e-5)
    assert p.dt == pytest.approx(-math.log(0.005) / float(p.thetas_cumsum[-1].double()), rel=1e-5)
    assert p.decay[-1].item() == pytest.approx(0.005, rel=1e-4)  # a_T = eps
    assert p.sigma_bars[0] == 0 and p.sigma_bars[-1].item() == pytest.approx(lam * math.sqrt(1 - 0.005 ** 2), rel=1e-4)
    for name in ("linear", "constant"):
        q = IRSDE(schedule=name, T=20)
        assert q.decay[-1].item() == pytest.approx(0.005, rel=1e-4)
    assert IRSDE(max_sigma=25).lam == pytest.approx(25 / 255)
    with pytest.raises(ValueError):
        IRSDE(sampler="ode")
    with pytest.raises(ValueError, match="fast_steps"):
        IRSDE(T=10, fast_steps=20)


def test_forward_marginal_statistics():
    p = IRSDE()
    lq, gt = images(1, 32)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(256, *lq.shape[1:], generator=g)
    xT = p.marginal(gt.expand(256, -1, -1, -1), lq, 100, noise)
    # at T the state has nearly forgotten x0: mean lq + eps (gt - lq), std sigma_bar_T
    assert torch.allclose(xT.mean(0), (lq + 0.005 * (gt - lq))[0], atol=0.05)
    assert xT.std(0).mean().item() == pytest.approx(float(p.sigma_bars[100]), rel=0.05)
    assert torch.allclose(p.marginal(gt, lq, 0, torch.randn_like(gt)), gt, atol=1e-6)  # t = 0: the clean image


def test_timestep_grids():
    p = IRSDE()
    assert p.timesteps(100) == list(range(100, -1, -1))
    for k in (1, 7, 20, 100):
        for even_decay in (False, True):
            ts = p.timesteps(k, even_decay)
            assert len(ts) == k + 1 and ts[0] == 100 and ts[-1] == 0
            assert all(a > b for a, b in zip(ts, ts[1:]))
    with pytest.raises(ValueError, match="steps"):
        p.timesteps(101)


@pytest.mark.parametrize("sampler", ["posterior", "fast", "sde"])
def test_samplers_recover_clean_image_with_exact_noise(sampler):
    lq, gt = images(2, 16)
    p = IRSDE(sampler=sampler, clamp=False)
    oracle = OracleNoise(p, gt)
    out = p.sample(oracle, lq, generator=torch.Generator().manual_seed(0))
    assert oracle.calls == (20 if sampler == "fast" else 100)
    if sampler == "sde":  # Euler-Maruyama only approximates the reverse SDE
        assert psnr(out, gt) > 40  # about 48.6 dB measured
    else:  # the posterior (mean) with the true x0 lands exactly on it
        assert torch.allclose(out, gt, atol=1e-3)
    oracle.calls = 0
    out = p.sample(oracle, lq, steps=5, generator=torch.Generator().manual_seed(0))
    assert oracle.calls == 5
    if sampler != "sde":  # explicit Euler-Maruyama is unstable with gaps of 20 steps
        assert torch.allclose(out, gt, atol=1e-3)


def test_training_loss_prefers_exact_noise():
    lq, gt = images(2, 16)
    p = IRSDE()

    class Zero(Backbone):
        diffusion = True

        def forward(self, lq, cond=None, *, x=None, t=None):
            return torch.zeros_like(x)

    exact = p.training_loss(OracleNoise(p, gt), lq, gt, generator=torch.Generator().manual_seed(0))
    zero = p.training_loss(Zero(), lq, gt, generator=torch.Generator().manual_seed(0))
    assert exact < 0.1 * zero


def test_seeded_and_deterministic():
    torch.manual_seed(0)
    net = ConditionalUNet(**TINY).eval()
    lq, gt = images(1, 16)
    cond = Conditioning(tokens=torch.randn(1, 1, 512), vector=torch.randn(1, 512))
    for sampler in ("posterior", "sde", "fast"):
        p = IRSDE(sampler=sampler)
        a = p.sample(net, lq, cond, steps=4, generator=torch.Generator().manual_seed(3))
        b = p.sample(net, lq, cond, steps=4, generator=torch.Generator().manual_seed(3))
        c = p.sample(net, lq, cond, steps=4, generator=torch.Generator().manual_seed(4))
        assert torch.equal(a, b), sampler
        assert not torch.equal(a, c), sampler
        assert a.shape == lq.shape and a.min() >= 0 and a.max() <= 1
    p = IRSDE()
    l1 = p.training_loss(net, lq, gt, cond, generator=torch.Generator().manual_seed(1))
    l2 = p.training_loss(net, lq, gt, cond, generator=torch.Generator().manual_seed(1))
    assert torch.equal(l1, l2)


@pytest.fixture(scope="module")
def overfitted():
    """A small UNet trained with the IR-SDE loss on two 16 px images until it reproduces them."""
    torch.manual_seed(0)
    lq, gt = images(2, 16)
    lq, gt = lq.repeat(4, 1, 1, 1), gt.repeat(4, 1, 1, 1)  # 4 timesteps per image and step
    net = ConditionalUNet(nf=16, ch_mult=[1, 2], context_dim=None)
    p = IRSDE()
    steps = 1500
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    g = torch.Generator().manual_seed(0)
    before = psnr(IRSDE(sampler="fast").sample(net, lq, generator=torch.Generator().manual_seed(1)), gt)
    losses = []
    for _ in range(steps):
        loss = p.training_loss(net, lq, gt, generator=g)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 0.5)
        opt.step()
        sched.step()
        losses.append(loss.item())
    return net.eval(), lq, gt, losses, before


def test_training_loss_falls(overfitted):
    _, _, _, losses, _ = overfitted
    first, last = sum(losses[:25]) / 25, sum(losses[-25:]) / 25
    assert last < 0.2 * first, (first, last)


def test_fast_sampler_close_to_100_steps(overfitted):
    net, lq, gt, _, before = overfitted

    def run(sampler: str, steps: int | None = None) -> float:
        out = IRSDE(sampler=sampler).sample(net, lq, steps=steps, generator=torch.Generator().manual_seed(1))
        return psnr(out, gt)

    fast, fast100, posterior100 = run("fast"), run("fast", 100), run("posterior")
    print(f"PSNR lq {psnr(lq, gt):.2f}  untrained {before:.2f}  fast-20 {fast:.2f}  fast-100 {fast100:.2f}  "
          f"posterior-100 {posterior100:.2f}")
    assert fast > psnr(lq, gt) + 10  # overfitted: it reproduces its training images
    assert abs(fast - fast100) <= 0.5  # 20 network calls give the 100-step output within 0.5 dB
    # and they are no worse than the official stochastic 100-step posterior sampler (measured:
    # better, since posterior sampling adds noise at every step that an overfitted net cannot undo)
    assert fast >= posterior100 - 0.5
