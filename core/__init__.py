"""vlir core: components, registry, specs, pipelines.

Importing ``vlir.core`` is cheap: names are resolved lazily (PEP 562), so ``import vlir.core``
imports neither torch models, open_clip nor any plugin.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "Component": "components", "Params": "components", "Backbone": "components",
    "Perceiver": "components", "Loss": "components", "Process": "components",
    "Degradation": "components", "KINDS": "kinds",
    "Conditioning": "conditioning", "Perception": "conditioning",
    "Registry": "registry", "get_registry": "registry", "UnknownComponentError": "registry",
    "DuplicateComponentError": "registry",
    "PipelineSpec": "spec", "SpecError": "spec", "load_spec": "spec",
    "Pipeline": "pipeline",
    "hookimpl": "hookspecs",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'vlir.core' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{mod}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # pragma: no cover
    from .components import KINDS, Backbone, Component, Degradation, Loss, Params, Perceiver, Process
    from .conditioning import Conditioning, Perception
    from .hookspecs import hookimpl
    from .pipeline import Pipeline
    from .registry import DuplicateComponentError, Registry, UnknownComponentError, get_registry
    from .spec import PipelineSpec, SpecError, load_spec
