"""vlir's pluggy hook specifications.

Plugins implement these with ``@vlir.core.hookimpl`` and are found through the entry-point
group ``vlir.hooks`` (name -> module or object). vlir's own behaviour (the built-in components
of ``registry.yaml`` and the wiring of perceivers into backbones) is a plugin like any other:
``vlir.core.builtin``.

Hooks are called through :func:`call_hook`: an exception a plugin raises stops the command with a
:class:`HookError` naming the plugin and its package (exit status 2), except a ``SpecError`` or
``UserError`` raised on purpose, which is shown as it is.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

from .errors import SpecError, UserError
from .registry import RegistryError

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


class HookError(RegistryError, UserError):
    """A hook plugin raised: the message names the plugin, its package and the hook."""


def call_hook(registry: "Registry", hook: str, /, **kwargs: Any) -> list[Any]:
    """Call ``hook`` on every plugin; an exception from a third-party plugin becomes a
    :class:`HookError` naming it (a ``SpecError`` or ``UserError`` it raises on purpose stays)."""
    caller = getattr(registry.pm.hook, hook)
    try:
        return caller(**kwargs)
    except (SpecError, UserError):
        raise
    except Exception as e:  # noqa: BLE001 - re-raised with the plugin's name
        impl = _raiser(caller, e)
        if impl is None or impl.plugin_name == "vlir.builtin":
            raise
        package, version = registry._dists.get(impl.plugin_name, (impl.plugin_name, ""))
        raise HookError(
            f"plugin {impl.plugin_name!r} (package {package} {version}".rstrip() + f") failed in {hook}: "
            f"{type(e).__name__}: {e}. Fix or uninstall it, or skip it with "
            f"VLIR_BLOCK_PLUGINS={impl.plugin_name}") from e


def _raiser(caller: Any, error: BaseException) -> Any:
    """The hook implementation whose code is on the traceback of ``error`` (outermost first)."""
    impls = {impl.function.__code__: impl for impl in caller.get_hookimpls()}
    tb = error.__traceback__
    while tb is not None:
        impl = impls.get(tb.tb_frame.f_code)
        if impl is not None:
            return impl
        tb = tb.tb_next
    return None
