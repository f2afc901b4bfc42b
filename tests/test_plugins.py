"""Third-party plugins that fail or collide: clear errors naming the plugin, broken modules found by
``vlir components --check``, load errors reported once per command, and a third-party component
re-registering a built-in name cannot hide the built-in (the default model stays usable)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import BACKBONE_CODE as NET, make_dist
from vlir.core.cli import main
from vlir.core.errors import SpecError
from vlir.core.hookspecs import HookError
from vlir.core.registry import Registry, UnknownComponentError, get_registry

RAISING_HOOKS = """
from vlir.core import hookimpl

@hookimpl
def vlir_pipeline_built(pipeline):
    raise RuntimeError("boom in built")
"""

ADJUST_HOOKS = """
from vlir.core import hookimpl, SpecError

@hookimpl
def vlir_adjust_spec(spec, registry):
    if spec.get("name") == "refuse":
        raise SpecError([("name", "refused by policy")])
    if spec.get("name") == "crash":
        {}["missing"]
"""

TINY = {"backbone": {"type": "nafnet", "preset": "tiny"}}


@pytest.fixture
def fresh(on_path):
    """Put fake distributions on the path and rebuild the cached registry around the test."""
    def add(*paths: Path) -> None:
        on_path(*paths)
        get_registry(refresh=True)
    yield add
    get_registry(refresh=True)


def _image(path: Path) -> Path:
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(path)
    return path


def _spec(path: Path, name: str = "t") -> Path:
    path.write_text(f"vlir: 1\nname: {name}\nbackbone: {{type: nafnet, preset: tiny}}\n")
    return path


# -- a hook that raises ---------------------------------------------------------------------------
def test_a_raising_built_hook_is_an_error_naming_the_plugin(tmp_path, fresh):
    make_dist(tmp_path, "bad-hooks", "0.4", {"vlir.hooks": {"bad": "bad_hooks"}}, {"bad_hooks": RAISING_HOOKS})
    fresh(tmp_path)
    from vlir.core.pipeline import Pipeline

    with pytest.raises(HookError) as e:
        Pipeline.from_spec(TINY, registry=Registry())
    msg = str(e.value)
    assert "plugin 'bad' (package bad-hooks 0.4) failed in vlir_pipeline_built: RuntimeError: boom in built" in msg
    assert "VLIR_BLOCK_PLUGINS=bad" in msg


def test_restore_with_a_raising_hook_exits_2_without_traceback(tmp_path, fresh, capsys, monkeypatch):
    make_dist(tmp_path / "site", "bad-hooks", "0.4", {"vlir.hooks": {"bad": "bad_hooks"}},
              {"bad_hooks": RAISING_HOOKS})
    fresh(tmp_path / "site")
    image, spec = _image(tmp_path / "in.png"), _spec(tmp_path / "tiny.yaml")
    assert main(["restore", str(image), "--spec", str(spec), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "plugin 'bad' (package bad-hooks 0.4) failed in vlir_pipeline_built" in err
    assert "Traceback" not in err
    monkeypatch.setenv("VLIR_BLOCK_PLUGINS", "bad")  # the advice in the message works
    get_registry(refresh=True)
    assert main(["restore", str(image), "--spec", str(spec), "-o", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "in.png").is_file()


def test_adjust_hook_spec_errors_stay_and_crashes_name_the_plugin(tmp_path, fresh):
    make_dist(tmp_path, "policy", "1.0", {"vlir.hooks": {"policy": "policy_hooks"}}, {"policy_hooks": ADJUST_HOOKS})
    fresh(tmp_path)
    from vlir.core.spec import load_spec

    reg = Registry()
    with pytest.raises(SpecError, match="name: refused by policy"):
        load_spec({**TINY, "name": "refuse"}, reg)
    with pytest.raises(HookError, match="plugin 'policy' .*failed in vlir_adjust_spec: KeyError"):
        load_spec({**TINY, "name": "crash"}, reg)
    assert load_spec({**TINY, "name": "fine"}, reg).name == "fine"


# -- broken modules and load errors ---------------------------------------------------------------
def test_components_check_imports_each_and_reports_broken(tmp_path, fresh, capsys):
    make_dist(tmp_path / "a", "acme-nets", "1.0", {"vlir.backbones": {"acmenet": "acme_nets:Net"}},
              {"acme_nets": NET})
    meta = next((tmp_path / "a").glob("*.dist-info")) / "METADATA"
    meta.write_text(meta.read_text() + "Summary: Acme restoration networks\n")
    make_dist(tmp_path / "b", "broken-net", "0.2", {"vlir.backbones": {"brokennet": "broken_net:Net"}},
              {"broken_net": "import not_a_real_module_xyz\n"})
    fresh(tmp_path / "a", tmp_path / "b")

    assert main(["components", "--kind", "backbone"]) == 0  # listing imports nothing: both look fine
    out = capsys.readouterr().out
    assert "acmenet" in out and "Acme restoration networks" in out and "brokennet" in out
    assert "BROKEN" not in out

    assert main(["components", "--kind", "backbone", "--check"]) == 1
    captured = capsys.readouterr()
    lines = {line.split()[1]: line for line in captured.out.splitlines()}
    assert "[BROKEN:" in lines["brokennet"] and "not_a_real_module_xyz" in lines["brokennet"]
    assert "broken-net" in lines["brokennet"]
    assert "BROKEN" not in lines["acmenet"] and "Acme's tiny residual net." in lines["acmenet"]
    assert "BROKEN" not in lines["nafnet"]
    assert "broken: backbone brokennet" in captured.err

    assert main(["components", "acmenet", "--check", "--json"]) == 0
    import json

    row = json.loads(capsys.readouterr().out)["components"][0]
    assert row["ok"] is True and row["error"] is None


def test_hook_module_load_errors_are_reported_once_per_command(tmp_path, fresh, capsys):
    make_dist(tmp_path, "broken-hooks", "0.1", {"vlir.hooks": {"broken": "broken_hooks"}},
              {"broken_hooks": "raise ImportError('needs libfoo')\n"})
    fresh(tmp_path)
    spec = _spec(tmp_path / "tiny.yaml")
    for argv in (["components"], ["spec", "validate", str(spec)], ["inspect", "backbone", "nafnet", "--no-keys"]):
        get_registry(refresh=True)
        assert main(argv) == 0
        err = capsys.readouterr().err
        assert err.count("needs libfoo") == 1, (argv, err)
        assert "plugin load error" in err and "broken-hooks" in err


# -- a third-party component with a built-in's name -------------------------------------------------
@pytest.fixture
def fake_nafnet(tmp_path, fresh):
    make_dist(tmp_path / "fake", "fake-naf", "0.1", {"vlir.backbones": {"nafnet": "fake_naf:Net"}}, {"fake_naf": NET})
    fresh(tmp_path / "fake")
    return Registry()


def test_a_builtin_name_keeps_the_builtin_and_the_other_is_reached_by_package(fake_nafnet):
    reg = fake_nafnet
    assert any(c[0].name == "nafnet" for c in reg.conflicts())
    assert reg.load("backbone", "nafnet").__module__ == "vlir.plugins.backbones.nafnet"
    assert reg.load("backbone", "fake-naf:nafnet").__module__ == "fake_naf"
    assert reg.load("backbone", "fake_naf:nafnet").__module__ == "fake_naf"  # as pip compares names
    assert reg.load("backbone", "vlir:nafnet").__module__ == "vlir.plugins.backbones.nafnet"
    with pytest.raises(UnknownComponentError, match="not provided by 'acme'; it is provided by 'vlir', 'fake-naf'"):
        reg.get("backbone", "acme:nafnet")


def test_the_saved_provider_decides(fake_nafnet, tmp_path):
    from vlir.core.pipeline import Pipeline
    from vlir.core.spec import load_spec

    reg = fake_nafnet
    spec = load_spec({"backbone": {"type": "nafnet", "provider": "fake-naf"}}, reg)
    assert spec.backbone.params == {"width": 4} and spec.backbone.provider == "fake-naf"
    pipe = Pipeline.from_spec({"backbone": {"type": "fake-naf:nafnet"}}, registry=reg)
    assert type(pipe.backbone).__module__ == "fake_naf"
    pipe.save(tmp_path / "p")
    again = Pipeline.load(tmp_path / "p", registry=reg)
    assert type(again.backbone).__module__ == "fake_naf"
    assert "provider: fake-naf" in (tmp_path / "p" / "spec.yaml").read_text()
    builtin = Pipeline.from_spec(TINY, registry=reg)
    assert type(builtin.backbone).__module__ == "vlir.plugins.backbones.nafnet"


def test_the_default_model_restores_unchanged_with_a_fake_nafnet_installed(fake_nafnet):
    from vlir.core.default import bundled_dir
    from vlir.core.pipeline import Pipeline

    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain, _ = Pipeline.load(bundled_dir(), registry=Registry(autoload=False)).restore(x)
        pipe = Pipeline.load(bundled_dir(), registry=fake_nafnet)
        assert all(type(n).__module__ != "fake_naf" for n in pipe.backbone.nets)
        restored, _ = pipe.restore(x)
    assert torch.equal(restored, plain)


# -- the README's plugin section ------------------------------------------------------------------
def test_a_backbone_written_from_the_readme_reads_the_conditioning(tmp_path):
    """The README's example, as written there, is sized from the perceiver and uses its vector."""
    import re
    import types

    from vlir.core import hookimpl
    from vlir.core.pipeline import Pipeline

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("## Writing a plugin"):readme.index("## Architecture")]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    mod = types.ModuleType("readme_backbone")
    exec(compile(code, "README.md", "exec"), mod.__dict__)

    class Plugin:
        @staticmethod
        @hookimpl
        def vlir_components():
            return [{"kind": "backbone", "name": "tinyres", "target": mod.TinyRes}]

    reg = Registry(autoload=False, plugins=[Plugin])
    spec = {"perceivers": [{"type": "daclip", "preset": "tiny"}], "backbone": {"type": "tinyres"}}
    pipe = Pipeline.from_spec(spec, registry=reg)
    assert pipe.backbone.params.cond_dim == pipe.perceivers["daclip"].output_dims(pipe.perceivers["daclip"].params)[0]
    torch.nn.init.normal_(pipe.backbone.film.weight)
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        cond = pipe.perceivers["daclip"](x).to_conditioning()
        assert not torch.allclose(pipe.backbone(x, cond), pipe.backbone(x))
    assert reg.get("backbone", "tinyres").summary == "Residual conv stack with FiLM from the degradation vector."
