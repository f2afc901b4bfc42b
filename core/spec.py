"""Pipeline specs: YAML validated in two steps (structure, then each component's ``Params``).

Example::

    perceivers:
      - {type: daclip, preset: tiny}
    backbone: {type: nafnet, preset: tiny}
    condition: {perceiver: daclip}     # which perceiver feeds the backbone (default: the first)
    losses:
      - {type: l1, weight: 1.0}

All errors are reported together with their YAML paths, e.g.
``backbone.params.width: Input should be a valid integer``. Each component entry is resolved by
:meth:`vlir.core.registry.Registry.resolve` (preset, params, validation); how the sections fit
together is checked by :func:`vlir.core.validate.check_wiring`, and ``vlir spec validate``
(:func:`vlir.core.validate.validate`) adds input paths and a meta-device build of everything.
Relative input paths in a spec file are read from the file's folder (:data:`INPUT_PATHS`).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_serializer

from . import yamlsafe
from .errors import SpecError
from .io import file_problem
from .sections import DataSpec, EvalSpec, TrainSpec

if TYPE_CHECKING:  # pragma: no cover
    from .registry import Registry

SPEC_VERSION = 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class ComponentSpec(_Strict):
    """One component: registry ``type`` (name), optional ``preset``, ``params`` overrides, ``weights`` file."""

    type: str
    preset: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    weights: str | None = Field(None, description="checkpoint to load (official format or safetensors)")
    role: str | None = Field(None, description="name of this component in the pipeline (default: its type)")
    provider: str | None = Field(None, description="providing package (written on save)")
    version: str | None = Field(None, description="providing package's version (written on save)")


class LossSpec(ComponentSpec):
    weight: float = 1.0


class ConditionSpec(_Strict):
    """How perceiver outputs feed the backbone."""

    perceiver: str | None = Field(None, description="role of the perceiver that feeds the backbone; default: the first")
    tokens: bool = Field(True, description="pass content tokens (cross-attention)")
    vector: bool | Literal["degradation", "probs", "quality"] = Field(
        True, description="the vector the backbone reads (FiLM / prompt module / routing): the degradation "
                          "embedding (true = degradation), the degradation class probabilities (probs), the "
                          "quality probabilities (quality), or false for none")

    teacher: bool = Field(
        False, description="training (and its validation): with vector: probs, route by the batch's degradation labels (one-hot "
                           "over the perceiver's classes) instead of the perceiver's predictions (teacher forcing)")

    @model_serializer(mode="wrap")
    def _set_only(self, handler):
        # written as given: a saved spec reloads with the same explicit fields (validate reads them)
        return {k: v for k, v in handler(self).items() if k in self.model_fields_set}

    @property
    def vector_source(self) -> str | None:
        if self.vector is False:
            return None
        return "degradation" if self.vector is True else self.vector


class PipelineSpec(_Strict):
    vlir: int = Field(SPEC_VERSION, description="spec format version")

    @field_validator("vlir")
    @classmethod
    def _version(cls, v: int) -> int:
        if v != SPEC_VERSION:
            raise ValueError(f"spec format version {v} is not supported: this vlir reads version {SPEC_VERSION}"
                             + (" (a newer vlir wrote it; upgrade vlir)" if v > SPEC_VERSION else ""))
        return v

    name: str | None = None
    perceivers: list[ComponentSpec] = Field(default_factory=list)
    backbone: ComponentSpec
    process: ComponentSpec | None = Field(None, description="sampling process for diffusion backbones (irsde)")
    condition: ConditionSpec | None = None
    losses: list[LossSpec] = Field(default_factory=list)
    data: DataSpec | None = None
    train: TrainSpec | None = None
    eval: EvalSpec | None = None
    versions: dict[str, str] | None = Field(None, description="package versions (written on save)")

    def roles(self) -> list[str]:
        return [p.role or p.type for p in self.perceivers]

    def feeding_role(self) -> str | None:
        """Role of the perceiver that conditions the backbone, or None."""
        if not self.perceivers:
            return None
        cond = self.condition or ConditionSpec()
        if cond.perceiver in ("none",) or not (cond.tokens or cond.vector):
            return None
        return cond.perceiver or self.roles()[0]

    def to_dict(self) -> dict[str, Any]:
        """A plain dict that validates back to this spec: nulls only where they differ from the
        default (``train.grad_clip: null`` is kept: it turns clipping off)."""
        return _explicit_nulls(self, self.model_dump(mode="json"))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _explicit_nulls(model: Any, data: Any) -> Any:
    """``data`` (the JSON dump of ``model``) without the null fields whose default is null."""
    if isinstance(model, BaseModel) and isinstance(data, dict):
        fields = type(model).model_fields
        return {k: _explicit_nulls(getattr(model, k, None), v) for k, v in data.items()
                if not (v is None and k in fields and fields[k].default is None)}
    if isinstance(model, (list, tuple)) and isinstance(data, list):
        return [_explicit_nulls(m, d) for m, d in zip(model, data)]
    return data


def _loc(prefix: str, loc: tuple) -> str:
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _step(node: Any, part: Any) -> Any:
    """The annotation one step (a field name or an index) inside ``node``, or None."""
    import types
    import typing

    origin = typing.get_origin(node)
    if origin is typing.Annotated:
        return _step(typing.get_args(node)[0], part)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(node):
            found = _step(arg, part)
            if found is not None:
                return found
        return None
    if isinstance(node, type) and issubclass(node, BaseModel):
        field = node.model_fields.get(part) if isinstance(part, str) else None
        return None if field is None else field.annotation
    args = typing.get_args(node)
    if origin in (list, tuple, set) and isinstance(part, int) and args:
        return args[0]
    if origin is dict and len(args) == 2:
        return args[1]
    return None


def _keys_at(model: Any, loc: tuple) -> list[str] | None:
    """The field names of the model at ``loc`` inside ``model``, or None if it is not a model."""
    import typing

    node = model
    for part in loc:
        node = _step(node, part)
        if node is None:
            return None
    for arg in (node, *typing.get_args(node)):  # Optional[Model]
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return list(arg.model_fields)
    return None


def pydantic_errors(e: ValidationError, prefix: str = "", model: Any = None) -> list[tuple[str, str]]:
    """(YAML path, message) of each error of a pydantic validation; unknown keys (``extra="forbid"``)
    name the close keys of ``model`` (the validated class) instead of "Extra inputs are not permitted"."""
    from .registry import did_you_mean

    out = []
    for err in e.errors():
        loc, msg = tuple(err["loc"]), err["msg"]
        if err["type"] == "extra_forbidden" and loc and model is not None:
            keys = _keys_at(model, loc[:-1])
            if keys is not None:
                key = str(loc[-1])
                hint = did_you_mean(key, keys)
                msg = f"unknown key {key!r}" + (hint or "; ") + (" " if hint else "") + \
                      f"keys here: {', '.join(keys) or 'none'}"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        out.append((_loc(prefix, loc), msg))
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with ``yaml.safe_load`` (no Python tags), with clear errors."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise SpecError([("", f"cannot read spec file: {e.strerror or e}")], source=str(path)) from e
    try:
        data = yamlsafe.load(text, source=str(path))  # bounded: no alias bombs, no deep nesting
    except yaml.YAMLError as e:
        raise SpecError([("", f"not valid YAML (only plain YAML is accepted, no Python tags): {e}")],
                        source=str(path)) from e
    if not isinstance(data, dict):
        raise SpecError([("", f"expected a mapping at the top level, got {type(data).__name__}")], source=str(path))
    return data


# input files and folders of a spec (YAML paths; "[]" = each item of a list); relative ones are read
# from the spec file's folder. train.out is an output and stays relative to the working directory.
INPUT_PATHS = ("data.train[]", "data.val[]", "data.pairs[].lq", "data.pairs[].gt", "data.captions", "eval.data[]",
               "train.proxies[]", "perceivers[].weights", "backbone.weights", "process.weights", "losses[].weights")


def absolute_paths(raw: dict[str, Any], base: str | Path) -> dict[str, Any]:
    """``raw`` (a spec dict, changed in place) with its relative :data:`INPUT_PATHS` joined to ``base``."""
    base = Path(base)

    def fix(v: Any) -> Any:
        if not isinstance(v, str) or not v:
            return v
        p = Path(v).expanduser()
        return v if p.is_absolute() else str(base / p)

    for spec_path in INPUT_PATHS:
        nodes: list[Any] = [raw]
        parts = spec_path.split(".")
        for i, part in enumerate(parts):
            each = part.endswith("[]")
            key = part[:-2] if each else part
            last = i == len(parts) - 1
            nxt = []
            for node in nodes:
                if not isinstance(node, dict) or key not in node:
                    continue
                value = node[key]
                if last:
                    if each and isinstance(value, list):
                        node[key] = [fix(x) for x in value]
                    else:
                        node[key] = fix(value)  # one path where a list is expected (data.train: folder)
                elif each:
                    nxt.extend(value if isinstance(value, list) else [])
                else:
                    nxt.append(value)
            nodes = nxt
    return raw


def read_spec(path: str | Path) -> dict[str, Any]:
    """A spec file as a dict, its relative input paths read from the file's folder."""
    return absolute_paths(read_yaml(path), Path(path).expanduser().resolve().parent)


_STRUCTURE = {"perceiver": ComponentSpec, "backbone": ComponentSpec, "process": ComponentSpec, "loss": LossSpec}


def _raw_components(raw: dict[str, Any]):
    """(yaml path, kind, raw entry) of every component of a raw spec dict."""
    perceivers = raw.get("perceivers")
    for i, p in enumerate(perceivers if isinstance(perceivers, list) else []):
        yield f"perceivers[{i}]", "perceiver", p
    yield "backbone", "backbone", raw.get("backbone")
    if raw.get("process") is not None:
        yield "process", "process", raw.get("process")
    losses = raw.get("losses")
    for i, l in enumerate(losses if isinstance(losses, list) else []):
        yield f"losses[{i}]", "loss", l


def _components(spec: PipelineSpec):
    """(yaml path, kind, ComponentSpec) for every component of a spec."""
    for i, p in enumerate(spec.perceivers):
        yield f"perceivers[{i}]", "perceiver", p
    yield "backbone", "backbone", spec.backbone
    if spec.process is not None:
        yield "process", "process", spec.process
    for i, l in enumerate(spec.losses):
        yield f"losses[{i}]", "loss", l


def _data_degradations(spec: PipelineSpec):
    """(yaml path, DegradationSpec) of the degradations of the data and eval sections."""
    if spec.data is not None:
        for i, d in enumerate(spec.data.degradations):
            yield f"data.degradations[{i}]", d
    if spec.eval is not None:
        for i, d in enumerate(spec.eval.degradations):
            yield f"eval.degradations[{i}]", d


def _raw_degradations(raw: dict[str, Any]):
    for section in ("data", "eval"):
        sec = raw.get(section)
        degs = sec.get("degradations") if isinstance(sec, dict) else None
        for i, d in enumerate(degs if isinstance(degs, list) else []):
            yield f"{section}.degradations[{i}]", d


def load_spec(source: "str | Path | dict[str, Any] | PipelineSpec", registry: "Registry | None" = None, *,
              adjust: bool = True, model_only: bool = False, losses: bool = True,
              name: str | None = None) -> PipelineSpec:
    """Parse, adjust (hooks), validate and resolve a spec.

    The result has every component's params filled in completely (preset and defaults folded
    in), so that it rebuilds the same pipeline anywhere. A spec file's relative input paths are
    read from its folder (:data:`INPUT_PATHS`). Every error found is reported, each with its YAML
    path: a structural error does not hide the params errors of the components around it.

    ``adjust=False`` skips the ``vlir_adjust_spec`` hooks (a saved, resolved spec is taken as it
    is); ``model_only`` resolves only what :class:`~vlir.core.pipeline.Pipeline` builds (no data,
    train or eval checks) and ``losses=False`` leaves the losses unresolved too. ``name`` names
    the source in errors (default: the file, or "spec").
    """
    from .hookspecs import call_hook
    from .registry import get_registry

    registry = registry or get_registry()
    if isinstance(source, PipelineSpec):
        raw = source.to_dict()
    elif isinstance(source, dict):
        raw = copy.deepcopy(source)
    else:
        raw, name = read_spec(source), name or str(source)
    name = name or "spec"

    if adjust:
        try:
            call_hook(registry, "vlir_adjust_spec", spec=raw, registry=registry)
        except SpecError as e:
            raise SpecError(e.errors, source=name) from e

    errors: list[tuple[str, str]] = []
    spec: PipelineSpec | None = None
    try:
        spec = PipelineSpec.model_validate(raw)
    except ValidationError as e:
        errors.extend(pydantic_errors(e, model=PipelineSpec))

    # each component's params, also when the structure around them is wrong
    if spec is not None:
        comps = list(_components(spec))
    else:
        comps = []
        for path, kind, entry in _raw_components(raw):
            try:
                comps.append((path, kind, _STRUCTURE[kind].model_validate(entry)))
            except ValidationError:
                continue  # reported above
    failed: set[str] = set()
    for path, kind, comp in comps:
        if kind == "loss" and not losses:
            continue
        try:
            params = registry.resolve(kind, comp, path=path)
        except SpecError as e:
            errors.extend(e.errors)
            failed.add(path)
            continue
        comp.params = params.model_dump(mode="json")
        entry = registry.get(kind, comp.type, comp.provider)  # a saved spec's provider decides
        comp.provider, comp.version = entry.provider, entry.version or None
        if comp.weights is not None and file_problem(comp.weights):
            errors.append((f"{path}.weights", f"{comp.weights}: {file_problem(comp.weights)}"))
    if not model_only:
        from .sections import DegradationSpec

        degs = list(_data_degradations(spec)) if spec is not None else []
        if spec is None:
            for path, d in _raw_degradations(raw):
                try:
                    degs.append((path, DegradationSpec.model_validate(d)))
                except ValidationError:
                    continue
        for path, deg in degs:
            try:
                registry.resolve("degradation", deg, path=path)
            except SpecError as e:
                errors.extend(e.errors)
                failed.add(path)

    if spec is not None:
        from .validate import check_wiring

        errors.extend(check_wiring(spec, registry, model_only=model_only, losses=losses, failed=failed))
    if errors:
        raise SpecError(errors, source=name)
    return spec


def json_schema(registry: "Registry | None" = None) -> dict[str, Any]:
    """JSON Schema of a spec, with each registered component's params schema (for editors)."""
    from .registry import RegistryError, get_registry

    registry = registry or get_registry()
    schema = PipelineSpec.model_json_schema()
    defs = schema.setdefault("$defs", {})
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for entry in registry.list():
        try:
            cls = registry.load(entry.kind, entry.name)
        except RegistryError:
            continue
        params_schema = cls.Params.model_json_schema()
        sub = params_schema.pop("$defs", {})
        defs.update(sub)
        key = f"{entry.kind}.{entry.name}"
        defs[key] = {
            "type": "object",
            "description": entry.summary,
            "properties": {
                "type": {"const": entry.name},
                "preset": {"enum": sorted(registry.presets(entry.kind, entry.name)) or [None]},
                "params": params_schema,
            },
            "required": ["type"],
        }
        by_kind.setdefault(entry.kind, []).append({"$ref": f"#/$defs/{key}"})
    # narrow component slots to the registered components (alongside the structural model)
    props = schema["properties"]
    if "perceiver" in by_kind:
        props["perceivers"] = {"type": "array", "items": {"allOf": [{"$ref": "#/$defs/ComponentSpec"},
                                                                    {"anyOf": by_kind["perceiver"]}]}}
    if "backbone" in by_kind:
        props["backbone"] = {"allOf": [{"$ref": "#/$defs/ComponentSpec"}, {"anyOf": by_kind["backbone"]}]}
    if "loss" in by_kind:
        props["losses"] = {"type": "array", "items": {"allOf": [{"$ref": "#/$defs/LossSpec"},
                                                                {"anyOf": by_kind["loss"]}]}}
    schema["title"] = "vlir pipeline spec"
    return schema
