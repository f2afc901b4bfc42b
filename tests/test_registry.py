"""Registry: built-ins, entry points, hook plugins, errors."""
from __future__ import annotations

import sys

import pytest

from conftest import BACKBONE_CODE, make_dist, run_python
from vlir.core.errors import SpecError
from vlir.core.registry import (ComponentLoadError, DuplicateComponentError, Registry, UnknownComponentError)

def test_builtins_come_from_registry_yaml():
    reg = Registry(autoload=False)
    names = {(e.kind, e.name) for e in reg.list()}
    assert {("backbone", "nafnet"), ("backbone", "restormer"), ("backbone", "conditional_unet"),
            ("perceiver", "daclip"), ("loss", "l1"), ("process", "irsde")} <= names
    e = reg.get("backbone", "nafnet")
    assert e.provider == "vlir" and e.source == "builtin"
    assert "sidd-width32" in e.presets and "gopro-width64" in e.presets


def test_wildcards_and_kinds():
    reg = Registry(autoload=False)
    assert [e.name for e in reg.list("backbone", "naf*")] == ["nafnet"]
    assert [e.name for e in reg.list("backbones", "*ormer")] == ["restormer"]
    assert all(e.kind == "loss" for e in reg.list("loss"))
    with pytest.raises(LookupError, match="kinds are"):
        reg.list("widget")


def test_unknown_name_suggests_and_hints_install():
    reg = Registry(autoload=False)
    with pytest.raises(UnknownComponentError) as info:
        reg.get("backbone", "nafnt")
    msg = str(info.value)
    assert "backbone registry" in msg and "did you mean 'nafnet'? Known backbones:" in msg
    assert "pip install" in msg and "vlir.backbones" in msg
    with pytest.raises(UnknownComponentError, match="is a perceiver"):
        reg.get("backbone", "daclip")


def test_unknown_preset():
    reg = Registry(autoload=False)
    with pytest.raises(SpecError, match="presets: .*sidd-width32") as info:
        reg.resolve("backbone", {"type": "nafnet", "preset": "gopro"}, path="backbone")
    assert [p for p, _ in info.value.errors] == ["backbone.preset"]


def test_entry_point_component_is_listed_lazily_and_loads(tmp_path, on_path, monkeypatch):
    monkeypatch.delitem(sys.modules, "acme_nets", raising=False)  # another test may have imported its own
    make_dist(tmp_path, "acme-nets", "1.2.3", {"vlir.backbones": {"acmenet": "acme_nets:Net"}},
              {"acme_nets": BACKBONE_CODE})
    on_path(tmp_path)
    reg = Registry()
    e = reg.get("backbone", "acmenet")
    assert (e.provider, e.version, e.source) == ("acme-nets", "1.2.3", "entry-point")
    assert "acme_nets" not in sys.modules  # listing reads metadata only
    m = reg.build("backbone", "acmenet", params={"width": 8})
    assert m.params.width == 8 and type(m).name == "acmenet"
    assert "acme_nets" in sys.modules


def test_duplicate_names_from_two_packages_is_an_error_naming_both(tmp_path, on_path):
    for pkg, mod in (("pkg-one", "pkg_one"), ("pkg-two", "pkg_two")):
        make_dist(tmp_path / pkg, pkg, "0.1", {"vlir.backbones": {"dupnet": f"{mod}:Net"}}, {mod: BACKBONE_CODE})
        on_path(tmp_path / pkg)
    reg = Registry()
    with pytest.raises(DuplicateComponentError) as info:
        reg.get("backbone", "dupnet")
    assert "pkg-one" in str(info.value) and "pkg-two" in str(info.value)
    assert any(c[0].name == "dupnet" for c in reg.conflicts())
    # a block list resolves it
    reg = Registry(block=["pkg-two"])
    assert reg.get("backbone", "dupnet").provider == "pkg-one"


def test_duplicate_of_a_builtin_keeps_the_builtin(tmp_path, on_path):
    make_dist(tmp_path, "fake-naf", "0.1", {"vlir.backbones": {"nafnet": "fake_naf:Net"}}, {"fake_naf": BACKBONE_CODE})
    on_path(tmp_path)
    reg = Registry()
    assert reg.get("backbone", "nafnet").provider == "vlir"  # more in test_plugins.py
    assert reg.get("backbone", "fake-naf:nafnet").provider == "fake-naf"


def test_broken_plugins_are_reported_and_do_not_break_others(tmp_path, on_path):
    make_dist(tmp_path, "broken-hooks", "0.1", {"vlir.hooks": {"broken": "broken_hooks"}},
              {"broken_hooks": "raise ImportError('needs libfoo')\n"})
    make_dist(tmp_path / "b", "broken-net", "0.2", {"vlir.backbones": {"brokennet": "broken_net:Net"}},
              {"broken_net": "import not_a_real_module_xyz\n"})
    on_path(tmp_path, tmp_path / "b")
    reg = Registry()
    assert [(e.provider, e.name) for e in reg.errors] == [("broken-hooks", "broken")]
    assert "needs libfoo" in str(reg.errors[0])
    assert reg.get("backbone", "nafnet")  # the others still work
    with pytest.raises(ComponentLoadError) as info:
        reg.load("backbone", "brokennet")
    assert "broken-net" in str(info.value) and "not_a_real_module_xyz" in str(info.value)


def test_not_a_component_class(tmp_path, on_path):
    make_dist(tmp_path, "odd", "0.1", {"vlir.losses": {"odd": "odd_mod:thing"}}, {"odd_mod": "thing = 3\n"})
    on_path(tmp_path)
    with pytest.raises(ComponentLoadError, match="not a subclass of vlir.core.Loss"):
        Registry().load("loss", "odd")


def test_autoload_can_be_disabled(tmp_path, on_path, monkeypatch):
    make_dist(tmp_path, "acme-nets", "1.0", {"vlir.backbones": {"acmenet": "acme_nets:Net"}}, {"acme_nets": BACKBONE_CODE})
    on_path(tmp_path)
    monkeypatch.setenv("VLIR_DISABLE_PLUGIN_AUTOLOAD", "1")
    reg = Registry()
    assert "acmenet" not in reg.names("backbone") and "nafnet" in reg.names("backbone")
    with pytest.raises(UnknownComponentError, match="VLIR_DISABLE_PLUGIN_AUTOLOAD"):
        reg.get("backbone", "acmenet")
    monkeypatch.delenv("VLIR_DISABLE_PLUGIN_AUTOLOAD")
    monkeypatch.setenv("VLIR_BLOCK_PLUGINS", "acme-nets")
    assert "acmenet" not in Registry().names("backbone")


HOOK_PLUGIN = """
from vlir.core import hookimpl, Loss

CALLS = []

class Zero(Loss):
    inputs = ("restored",)
    def forward(self, restored):
        return restored.sum() * 0

@hookimpl
def vlir_components():
    return [{"kind": "loss", "name": "zero", "target": Zero, "summary": "always zero"}]

@hookimpl
def vlir_adjust_spec(spec, registry):
    spec.setdefault("name", "adjusted by hook")

@hookimpl
def vlir_pipeline_built(pipeline):
    CALLS.append(("built", pipeline.spec.name))

@hookimpl
def vlir_pipeline_saved(pipeline, path):
    CALLS.append(("saved", path))
"""


def test_hook_plugin_contributes_components_and_sees_pipelines(tmp_path, on_path):
    make_dist(tmp_path, "zero-plugin", "0.3", {"vlir.hooks": {"zero": "zero_plugin"}}, {"zero_plugin": HOOK_PLUGIN})
    on_path(tmp_path)
    from vlir.core import Pipeline

    reg = Registry()
    e = reg.get("loss", "zero")
    assert (e.provider, e.source) == ("zero-plugin", "hook")
    pipe = Pipeline.from_spec({"backbone": {"type": "nafnet", "preset": "tiny"}, "losses": [{"type": "zero"}]},
                              registry=reg)
    pipe.save(tmp_path / "out")
    import zero_plugin

    assert zero_plugin.CALLS == [("built", "adjusted by hook"), ("saved", str(tmp_path / "out"))]


def test_importing_vlir_and_listing_imports_no_models():
    r = run_python("""
        import sys
        import vlir.core
        from vlir.core import get_registry
        reg = get_registry()
        reg.list()
        heavy = [m for m in ("torch", "open_clip", "torchvision", "peft", "vlir.plugins.backbones.nafnet",
                             "vlir.plugins.perceivers.daclip") if m in sys.modules]
        print("HEAVY", heavy)
    """)
    assert r.returncode == 0, r.stderr
    assert "HEAVY []" in r.stdout
