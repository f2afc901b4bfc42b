"""vlir: vision-language image restoration.

``vlir.load(name_or_path)`` gives a ready pipeline (eval mode): the built-in ``"default"``
model, a saved pipeline folder, a spec file, or a Hugging Face repository id. Importing
``vlir`` imports nothing heavy (no torch): names resolve on first use.

This is the only file of the folder ``pkg/``, which ``pyproject.toml`` maps to ``vlir`` as it maps
``core/`` to ``vlir.core`` and ``plugins/`` to ``vlir.plugins``; a folder named ``vlir/`` would
shadow the installed package when Python runs in a source checkout.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vlir.core import __version__

_LAZY = {"load": "vlir.core.api", "Pipeline": "vlir.core.pipeline"}
__all__ = ["Pipeline", "__version__", "load"]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'vlir' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # pragma: no cover
    from vlir.core.api import load
    from vlir.core.pipeline import Pipeline
