"""vlir's pluggy hook specifications.

Plugins implement these with ``@vlir.core.hookimpl`` and are found through the entry-point
group ``vlir.hooks`` (name -> module or object). vlir's own behaviour (the built-in components
of ``registry.yaml`` and the wiring of perceivers into backbones) is a plugin like any other:
``vlir.core.builtin``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    from .pipeline import Pipeline
    from .registry import Registry

PROJECT = "vlir"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def vlir_components() -> list[dict[str, Any]]:
    """Contribute components programmatically.

    Return a list of dicts with keys ``kind`` (perceiver, backbone, loss, process,
    degradation), ``name``, ``target`` (``"module:Class"`` or the class itself), and optionally
    ``summary``, ``presets`` (name -> params overrides) and ``provider`` (package name).
    """


@hookspec
def vlir_adjust_spec(spec: dict[str, Any], registry: "Registry") -> None:
    """Check or adjust a raw spec (a plain dict, after YAML parsing) before it is validated and built.

    Mutate ``spec`` in place; raise ``vlir.core.SpecError("why")`` (or with a list of
    ``(yaml path, why)``) to refuse it. Not called for a saved pipeline's spec (``Pipeline.load``):
    a saved model is rebuilt as it was saved.
    """


@hookspec
def vlir_pipeline_built(pipeline: "Pipeline") -> None:
    """Called after ``Pipeline.from_spec`` or ``Pipeline.load`` built a pipeline."""


@hookspec
def vlir_pipeline_saved(pipeline: "Pipeline", path: str) -> None:
    """Called after a pipeline was saved to the folder ``path``."""


@hookspec
def vlir_train_step_end(trainer: Any, step: int, logs: dict[str, float]) -> None:
    """Called by the trainer after each optimisation step with the step's logged values."""


@hookspec
def vlir_train_epoch_end(trainer: Any, epoch: int, logs: dict[str, float]) -> None:
    """Called by the trainer at the end of each epoch (pass over the data) or validation round."""
