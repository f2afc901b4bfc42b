"""Packaging: the wheel holds vlir.core, vlir.plugins and registry.yaml, and works installed."""
from __future__ import annotations

import subprocess
import sys
import zipfile

from conftest import ROOT, run_python


def test_wheel_ships_registry_and_plugins_and_works(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                        "-q", "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    wheel = next(tmp_path.glob("vlir-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "vlir/core/registry.yaml" in names
    assert "vlir/plugins/backbones/nafnet.py" in names and "vlir/core/pipeline.py" in names
    assert {"vlir/core/assets/serve/index.html", "vlir/core/assets/serve/app.js"} <= set(names)  # vlir serve's page
    assert not any(n.startswith(("tests/", "core/", "plugins/")) for n in names)
    text = zipfile.ZipFile(wheel).read("vlir/core/registry.yaml").decode()
    assert text == (ROOT / "registry.yaml").read_text()
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "vlir = vlir.core.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
    # installed from the wheel alone (no source tree on the path), the registry and a build work
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    r = run_python(f"""
        import sys
        sys.path = [p for p in sys.path if "__editable__" not in p]
        for name in [m for m in sys.modules if m.startswith("vlir")]:
            del sys.modules[name]
        sys.meta_path = [f for f in sys.meta_path if "editable" not in type(f).__module__.lower()]
        import vlir.core
        assert vlir.core.__file__.startswith({str(site)!r}), vlir.core.__file__
        from vlir.core import get_registry
        m = get_registry().build("backbone", "nafnet", preset="tiny")
        print("OK", type(m).__module__)
    """, site)
    assert r.returncode == 0, r.stderr
    assert "OK vlir.plugins.backbones.nafnet" in r.stdout
