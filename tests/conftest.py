"""Shared fixtures: tiny fake installed packages (real dist-info + entry points) and paths."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("VLIR_SHARED", ROOT.parent / "shared"))


def imports_torch(*modules: str) -> bool:
    """Whether importing ``modules`` in a fresh interpreter imports torch (or a torch submodule)."""
    code = (f"import sys, {', '.join(modules)}; "
            "print(any(m == 'torch' or m.startswith('torch.') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip() == "True"


def shared_path(*parts: str) -> Path:
    """A path under ../shared, or skip the test when shared/ is absent (a user's checkout)."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"{p} not found: tests with shared data need ../shared (or VLIR_SHARED)")
    return p


# a third-party backbone module's source, for the tests that install plugins (make_dist)
BACKBONE_CODE = """
import torch
from vlir.core import Backbone

class Net(Backbone):
    '''Acme's tiny residual net.'''
    class Params(Backbone.Params):
        width: int = 4
    def __init__(self, params=None, **kw):
        super().__init__(params, **kw)
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)
    def forward(self, lq, cond=None, **kw):
        return lq + self.conv(lq)
"""


def make_dist(site: Path, name: str, version: str, entry_points: dict[str, dict[str, str]],
              modules: dict[str, str]) -> Path:
    """Write an importable package with a real ``.dist-info`` (METADATA + entry_points.txt) under ``site``."""
    site.mkdir(parents=True, exist_ok=True)
    for mod, code in modules.items():
        (site / f"{mod}.py").write_text(textwrap.dedent(code))
    dist = site / f"{name.replace('-', '_')}-{version}.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = []
    for group, eps in entry_points.items():
        lines.append(f"[{group}]")
        lines += [f"{k} = {v}" for k, v in eps.items()]
    (dist / "entry_points.txt").write_text("\n".join(lines) + "\n")
    return site


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """One torch thread for the whole suite: the models here are tiny, and on a shared 2-core
    machine several threads spin-wait on each other (10-30x slower)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def no_mkldnn():
    """Small convolutions run much faster on CPU without mkldnn (use per module)."""
    import torch

    enabled = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    yield
    torch.backends.mkldnn.enabled = enabled


@pytest.fixture
def on_path(monkeypatch):
    """Put folders on sys.path (for importlib.metadata too) for one test."""
    def add(*paths: Path) -> None:
        for p in paths:
            monkeypatch.syspath_prepend(str(p))
    return add


def run_python(code: str, *paths: Path, env: dict[str, str] | None = None, timeout: int = 300):
    """Run code in a fresh interpreter with ``paths`` prepended to PYTHONPATH."""
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([*map(str, paths), e.get("PYTHONPATH", "")])
    e.update(env or {})
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=e, timeout=timeout)
