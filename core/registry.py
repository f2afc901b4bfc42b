"""The component registry: built-ins, entry points and hook-contributed components.

Where components come from:
- built-ins: ``registry.yaml``, contributed by the built-in plugin ``vlir.core.builtin`` through
  the ``vlir_components`` hook, exactly as a third-party hook plugin would;
- third-party packages: entry-point groups ``vlir.perceivers``, ``vlir.backbones``,
  ``vlir.losses``, ``vlir.processes``, ``vlir.degradations`` (entry-point name = component name);
- hook plugins: entry-point group ``vlir.hooks`` (pluggy), implementing ``vlir_components``.

Listing reads metadata only; a component's module is imported when it is first loaded.
``VLIR_DISABLE_PLUGIN_AUTOLOAD=1`` skips every third-party entry point; ``VLIR_BLOCK_PLUGINS``
(comma-separated package, plugin or component names) skips the ones named.
"""
from __future__ import annotations

import difflib
import fnmatch
import importlib
import os
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import metadata
from typing import Any, Iterable

from .kinds import GROUPS, HOOK_GROUP, KINDS, PLURAL, normalise_kind  # noqa: F401  (re-exported)
from .errors import UserError


class RegistryError(UserError, LookupError):
    """Base of registry errors."""


class UnknownComponentError(RegistryError):
    """A spec or command named a component no installed package provides."""


class DuplicateComponentError(RegistryError):
    """Two packages provide a component of the same kind and name."""


class ComponentLoadError(RegistryError):
    """A component's module could not be imported or its target is not a component class."""


@dataclass
class Entry:
    """A registered component: metadata only, the class is imported on :meth:`Registry.load`."""

    kind: str
    name: str
    target: Any  # "module:Class" or a class object
    summary: str = ""
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)
    provider: str = "vlir"
    version: str = ""
    source: str = "builtin"  # builtin | entry-point | hook

    @property
    def target_path(self) -> str:
        if isinstance(self.target, str):
            return self.target
        return f"{self.target.__module__}:{self.target.__qualname__}"


@dataclass
class PluginError:
    """A plugin that failed to load; it is reported and the others go on."""

    provider: str
    name: str
    group: str
    error: str

    def __str__(self) -> str:
        return f"{self.group}:{self.name} from {self.provider}: {self.error}"


def did_you_mean(name: str, names: "list[str] | set[str]") -> str:
    """``"; did you mean 'a', 'b'?"`` for up to three of ``names`` close to ``name``, else ``""``."""
    close = difflib.get_close_matches(name, sorted(names), n=3, cutoff=0.5)
    return f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def _dist_name(ep: metadata.EntryPoint) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "?", ""
    return dist.metadata["Name"] or "?", dist.version or ""


def _same_dist(a: str, b: str) -> bool:
    """Distribution names compare as pip does: case, '-', '_' and '.' do not matter."""
    norm = lambda n: n.lower().replace("_", "-").replace(".", "-")  # noqa: E731
    return norm(a) == norm(b)


def _dist_summary(ep: metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return (dist.metadata["Summary"] or "") if dist is not None else ""


@lru_cache(maxsize=4)
def _all_entry_points(path: tuple[str, ...]) -> metadata.EntryPoints:
    """Every distribution's entry points, read once per ``sys.path`` (each read scans them all)."""
    return metadata.entry_points()


def _entry_points(group: str) -> list[metadata.EntryPoint]:
    seen, out = set(), []
    for ep in _all_entry_points(tuple(sys.path)).select(group=group):
        key = (ep.name, ep.value, _dist_name(ep)[0])
        if key not in seen:  # the same distribution found twice on sys.path
            seen.add(key)
            out.append(ep)
    return out


class Registry:
    """All components visible in this environment.

    Build one with :func:`get_registry` (cached, from the environment) or directly, e.g.
    ``Registry(autoload=False)`` for built-ins only, ``Registry(plugins=[my_module])`` to add
    hook plugins programmatically.
    """

    def __init__(self, autoload: bool | None = None, block: Iterable[str] | None = None,
                 plugins: Iterable[Any] = ()):
        import pluggy

        from . import builtin, hookspecs

        if autoload is None:
            autoload = os.environ.get("VLIR_DISABLE_PLUGIN_AUTOLOAD", "") not in ("1", "true", "yes")
        if block is None:
            block = [b.strip() for b in os.environ.get("VLIR_BLOCK_PLUGINS", "").split(",") if b.strip()]
        self.autoload = autoload
        self.block = set(block)
        self.errors: list[PluginError] = []
        self._entries: dict[tuple[str, str], list[Entry]] = {}
        self._classes: dict[tuple[str, str], type] = {}

        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.pm.register(builtin, name="vlir.builtin")
        self._dists: dict[str, tuple[str, str]] = {"vlir.builtin": ("vlir", _vlir_version())}
        if autoload:
            self._load_hook_plugins()
        for p in plugins:
            name = getattr(p, "__name__", None) or repr(p)
            self.pm.register(p, name=name)
            self._dists[name] = (getattr(p, "__vlir_provider__", name), "")
        self._collect_hook_components()
        if autoload:
            self._collect_entry_points()

    # -- discovery ---------------------------------------------------------------------------
    def _blocked(self, *names: str) -> bool:
        return any(n in self.block for n in names if n)

    def _load_hook_plugins(self) -> None:
        for ep in _entry_points(HOOK_GROUP):
            dist, version = _dist_name(ep)
            if self._blocked(ep.name, dist):
                continue
            try:
                plugin = ep.load()
                self.pm.register(plugin, name=ep.name)
                self._dists[ep.name] = (dist, version)
            except Exception as e:  # noqa: BLE001 - a broken plugin must not break the others
                self.errors.append(PluginError(dist, ep.name, HOOK_GROUP, f"{type(e).__name__}: {e}"))

    def _collect_hook_components(self) -> None:
        for impl in self.pm.hook.vlir_components.get_hookimpls():
            provider, version = self._dists.get(impl.plugin_name, (impl.plugin_name, ""))
            source = "builtin" if impl.plugin_name == "vlir.builtin" else "hook"
            try:
                items = impl.function() or []
                for d in items:
                    kind = normalise_kind(d["kind"])
                    if self._blocked(d["name"], provider):
                        continue
                    self._add(Entry(kind=kind, name=d["name"], target=d["target"], summary=d.get("summary", ""),
                                    presets=dict(d.get("presets") or {}), provider=d.get("provider", provider),
                                    version=d.get("version", version), source=source))
            except Exception as e:  # noqa: BLE001
                self.errors.append(PluginError(provider, impl.plugin_name, "vlir_components", f"{type(e).__name__}: {e}"))

    def _collect_entry_points(self) -> None:
        for kind, group in GROUPS.items():
            for ep in _entry_points(group):
                dist, version = _dist_name(ep)
                if self._blocked(ep.name, dist):
                    continue
                self._add(Entry(kind=kind, name=ep.name, target=ep.value, provider=dist, version=version,
                                source="entry-point", summary=_dist_summary(ep)))

    def _add(self, entry: Entry) -> None:
        same = self._entries.setdefault((entry.kind, entry.name), [])
        if any(e.provider == entry.provider and e.target_path == entry.target_path for e in same):
            return
        same.append(entry)

    # -- queries -----------------------------------------------------------------------------
    def list(self, kind: str | None = None, pattern: str = "*") -> list[Entry]:
        """Entries of ``kind`` (all kinds if None) whose name matches the wildcard ``pattern``."""
        kinds = KINDS if kind is None else (normalise_kind(kind),)
        out = []
        for (k, name), entries in sorted(self._entries.items(), key=lambda kv: (KINDS.index(kv[0][0]), kv[0][1])):
            if k in kinds and fnmatch.fnmatchcase(name, pattern):
                out.extend(entries)
        return out

    def names(self, kind: str) -> list[str]:
        kind = normalise_kind(kind)
        return sorted(n for k, n in self._entries if k == kind)

    def conflicts(self) -> list[list[Entry]]:
        return [v for v in self._entries.values() if len(v) > 1]

    def get(self, kind: str, name: str, provider: str | None = None) -> Entry:
        """The entry of a component. ``name`` may be ``package:name`` (that package's component, or an
        error). When several packages provide ``name``: the one ``provider`` names (a saved spec's
        ``provider:``) if among them, else the built-in, else an error naming them all."""
        kind = normalise_kind(kind)
        strict = ":" in name
        if strict:
            provider, name = name.split(":", 1)
        entries = self._entries.get((kind, name))
        if not entries:
            raise UnknownComponentError(self._unknown_message(kind, name))
        if provider:
            mine = [e for e in entries if _same_dist(e.provider, provider)]
            if mine:
                return mine[0]
            if strict:
                raise UnknownComponentError(
                    f"{kind} {name!r} is not provided by {provider!r}; it is provided by "
                    f"{', '.join(repr(e.provider) for e in entries)}")
        if len(entries) == 1:
            return entries[0]
        builtin = [e for e in entries if e.source == "builtin"]
        if builtin:  # a third-party name never hides a built-in; it is reached as 'package:name'
            return builtin[0]
        who = " and ".join(f"{e.provider} {e.version} ({e.target_path})".replace("  ", " ") for e in entries)
        raise DuplicateComponentError(
            f"{kind} {name!r} is provided by two packages: {who}; name one as 'package:{name}' (or "
            f"provider: package), uninstall one, or block one with VLIR_BLOCK_PLUGINS=<package>")

    def _unknown_message(self, kind: str, name: str) -> str:
        names = self.names(kind)
        msg = f"unknown {kind} {name!r} in the vlir {kind} registry"
        msg += did_you_mean(name, names)
        elsewhere = [k for k in KINDS if k != kind and (k, name) in self._entries]
        if elsewhere:
            msg += f" ({name!r} is a {elsewhere[0]}, not a {kind})"
        broken = [e for e in self.errors if e.name == name]
        if broken:
            msg += f"; a plugin of that name failed to load: {broken[0]}"
        msg += (f"{' ' if msg.endswith('?') else '. '}Known {PLURAL[kind]}: {', '.join(names) or 'none'}. If it comes from another package, install it "
                f"(pip install <package>); the package must declare an entry point in group '{GROUPS[kind]}'.")
        if not self.autoload:
            msg += " Third-party plugins are disabled (VLIR_DISABLE_PLUGIN_AUTOLOAD=1)."
        return msg

    def load(self, kind: str, name: str, provider: str | None = None) -> type:
        """Import and return the component class (cached); ``name`` and ``provider`` as for :meth:`get`."""
        from .components import API_VERSION, BASES

        entry = self.get(kind, name, provider)
        name = entry.name
        key = (entry.kind, name, entry.provider)
        if key in self._classes:
            return self._classes[key]
        target = entry.target
        try:
            if isinstance(target, str):
                module, _, attr = target.partition(":")
                obj: Any = importlib.import_module(module)
                for part in attr.split(".") if attr else []:
                    obj = getattr(obj, part)
            else:
                obj = target
        except Exception as e:  # noqa: BLE001
            raise ComponentLoadError(
                f"{entry.kind} {name!r} from {entry.provider} could not be imported ({entry.target_path}): "
                f"{type(e).__name__}: {e}") from e
        base = BASES[entry.kind]
        if not (isinstance(obj, type) and issubclass(obj, base)):
            raise ComponentLoadError(
                f"{entry.kind} {name!r} from {entry.provider}: {entry.target_path} is not a subclass of "
                f"vlir.core.{base.__name__}")
        if getattr(obj, "api_version", API_VERSION) > API_VERSION:
            raise ComponentLoadError(
                f"{entry.kind} {name!r} from {entry.provider} needs vlir component API "
                f"{obj.api_version}; this vlir has {API_VERSION}: upgrade vlir")
        if "name" not in vars(obj) or not vars(obj)["name"]:
            obj.name = name
        doc = (vars(obj).get("__doc__") or "").strip()
        if doc and (entry.source == "entry-point" or not entry.summary):
            entry.summary = doc.splitlines()[0].strip()  # once imported, its own docstring's first line
        self._classes[key] = obj
        return obj

    def check(self, entries: "Iterable[Entry] | None" = None) -> list[tuple[Entry, str | None]]:
        """Import components (default: all): (entry, None) for those that load, (entry, error) if not."""
        out: list[tuple[Entry, str | None]] = []
        for entry in self.list() if entries is None else entries:
            try:
                self.load(entry.kind, f"{entry.provider}:{entry.name}")
                out.append((entry, None))
            except RegistryError as e:
                out.append((entry, str(e)))
        return out

    def presets(self, kind: str, name: str, provider: str | None = None) -> dict[str, dict[str, Any]]:
        entry = self.get(kind, name, provider)
        cls_presets = getattr(self.load(kind, name, provider), "presets", {}) if entry.source != "builtin" else {}
        return {**cls_presets, **entry.presets}

    def resolve(self, kind: str, entry: Any, *, path: str = "", preset: str | None = None,
                params: dict[str, Any] | None = None, provider: str | None = None):
        """Validated ``Params`` of a spec entry: its preset's values, then its ``params`` on top.

        ``entry`` is a spec entry (a mapping or model with ``type``, ``preset``, ``params``) or a
        component name (with ``preset`` and ``params`` given here). Every error is a
        :class:`~vlir.core.errors.SpecError` whose paths start at ``path`` (the entry's YAML path):
        ``<path>.type``, ``<path>.preset``, ``<path>.params.<field>``. ``provider`` (default: the
        entry's ``provider:``) picks among packages that register the same name (:meth:`get`).
        """
        from pydantic import ValidationError

        from .errors import SpecError
        from .spec import pydantic_errors

        kind = normalise_kind(kind)
        name, preset, params = _entry_fields(entry, preset, params)
        provider = provider or _entry_provider(entry)
        who = f"{kind} {name!r}"
        try:
            cls = self.load(kind, name, provider)
        except RegistryError as e:
            raise SpecError([(_join(path, "type"), str(e))], source=who) from e
        values: dict[str, Any] = {}
        if preset is not None:
            presets = self.presets(kind, name, provider)
            if preset not in presets:
                raise SpecError([(_join(path, "preset"), f"{kind} {name!r} has no preset {preset!r}; "
                                                         f"presets: {', '.join(presets) or 'none'}")], source=who)
            values.update(presets[preset])
        if not isinstance(params, dict):
            raise SpecError([(_join(path, "params"), f"expected a mapping of {kind} {name!r} params, "
                                                     f"got {type(params).__name__}")], source=who)
        values.update(params)
        try:
            return cls.Params.model_validate(values)
        except ValidationError as e:
            raise SpecError(pydantic_errors(e, _join(path, "params"), cls.Params), source=who) from e

    def resolve_params(self, kind: str, name: str, preset: str | None = None,
                       params: dict[str, Any] | None = None, provider: str | None = None):
        """:meth:`resolve` of a component name (kept for scripts)."""
        return self.resolve(kind, name, preset=preset, params=params, provider=provider)

    def build(self, kind: str, entry: Any, preset: str | None = None, params: dict[str, Any] | None = None, *,
              path: str = "", device: Any = None, load_weights: bool = True, skip_pretrained: bool = False,
              provider: str | None = None):
        """Build a component from a spec entry (or a name with ``preset`` and ``params``).

        Params come from :meth:`resolve`. ``device`` (e.g. ``"meta"`` for a dry run) is the default
        device of the construction; ``skip_pretrained`` leaves out a ``pretrained`` download (the
        weights come from elsewhere); ``load_weights`` reads the entry's ``weights`` file. A
        component that builds sub-components through the registry (``experts``) receives it as its
        ``registry`` argument. Spec errors of sub-components come back under ``<path>.params``.
        """
        import contextlib

        from .errors import SpecError

        kind = normalise_kind(kind)
        provider = provider or _entry_provider(entry)
        p = self.resolve(kind, entry, path=path, preset=preset, params=params, provider=provider)
        if skip_pretrained and "pretrained" in type(p).model_fields:
            p = p.model_copy(update={"pretrained": None})
        cls = self.load(kind, _entry_fields(entry, preset, params)[0], provider)
        extra = {"registry": self} if _takes_registry(cls) else {}
        if device is None:
            ctx: Any = contextlib.nullcontext()
        else:
            import torch

            ctx = torch.device(device)
        try:
            with ctx:
                module = cls(p, **extra)
        except SpecError as e:
            raise SpecError([(_join(_join(path, "params"), sub), msg) for sub, msg in e.errors],
                            source=f"{kind} {(cls.name or cls.__name__)!r}") from e
        weights = _entry_weights(entry)
        if load_weights and weights:
            module.load_weights(os.path.expanduser(weights))
        return module


def _join(path: str, key: str) -> str:
    """YAML path ``path`` + ``key`` (``key`` may start with an index ``[0]``)."""
    if not path:
        return key
    if not key:
        return path
    return path + key if key.startswith("[") else f"{path}.{key}"


def _get(entry: Any, key: str, default: Any = None) -> Any:
    if isinstance(entry, dict):
        return entry.get(key, default)
    return getattr(entry, key, default)


def _entry_fields(entry: Any, preset: str | None, params: dict[str, Any] | None) -> tuple[str, Any, Any]:
    """(name, preset, params) of a spec entry or of a name and its separate preset and params."""
    if isinstance(entry, str):
        return entry, preset, dict(params or {})
    name = _get(entry, "type") or _get(entry, "name")
    if not isinstance(name, str) or not name:
        raise TypeError(f"a component entry needs a 'type' (the registry name), got {entry!r}")
    own = _get(entry, "params")
    return name, _get(entry, "preset", preset), ({} if own is None else own) if params is None else params


def _entry_weights(entry: Any) -> str | None:
    return None if isinstance(entry, str) else _get(entry, "weights")


def _entry_provider(entry: Any) -> str | None:
    return None if isinstance(entry, str) else _get(entry, "provider")


@lru_cache(maxsize=None)
def _takes_registry(cls: type) -> bool:
    import inspect

    try:
        return "registry" in inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return False


def _vlir_version() -> str:
    try:
        return metadata.version("vlir")
    except metadata.PackageNotFoundError:  # running from a source tree
        from . import __version__

        return __version__


@lru_cache(maxsize=1)
def _default_registry() -> Registry:
    return Registry()


def get_registry(refresh: bool = False) -> Registry:
    """The registry of this environment (built once; ``refresh=True`` re-reads entry points)."""
    if refresh:
        _default_registry.cache_clear()
    return _default_registry()
