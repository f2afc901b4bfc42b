"""Pipeline specs: YAML validated in two steps (structure, then each component's ``Params``).

Example::

    perceivers:
      - {type: daclip, preset: tiny}
    backbone: {type: nafnet, preset: tiny}
    condition: {perceiver: daclip}     # which perceiver feeds the backbone (default: the first)
    losses:
      - {type: l1, weight: 1.0}

All errors are reported together with their YAML paths, e.g.
``backbone.params.width: Input should be a valid integer``.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from . import yamlsafe
from .errors import SpecError
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

    @property
    def vector_source(self) -> str | None:
        if self.vector is False:
            return None
        return "degradation" if self.vector is True else self.vector


class PipelineSpec(_Strict):
    vlir: int = Field(SPEC_VERSION, description="spec format version")
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

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json", exclude_none=True), sort_keys=False)


def _loc(prefix: str, loc: tuple) -> str:
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _pydantic_errors(e: ValidationError, prefix: str = "") -> list[tuple[str, str]]:
    return [(_loc(prefix, tuple(err["loc"])), err["msg"]) for err in e.errors()]


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
    if spec.data is not None:
        for i, d in enumerate(spec.data.degradations):
            yield f"data.degradations[{i}]", d


def load_spec(source: "str | Path | dict[str, Any] | PipelineSpec", registry: "Registry | None" = None) -> PipelineSpec:
    """Parse, adjust (hooks), validate and resolve a spec.

    The result has every component's params filled in completely (preset and defaults folded
    in), so that it rebuilds the same pipeline anywhere.
    """
    from .hookspecs import call_hook
    from .registry import RegistryError, get_registry

    registry = registry or get_registry()
    if isinstance(source, PipelineSpec):
        raw, name = source.model_dump(mode="json", exclude_none=True), "spec"
    elif isinstance(source, dict):
        raw, name = copy.deepcopy(source), "spec"
    else:
        raw, name = read_yaml(source), str(source)

    try:
        call_hook(registry, "vlir_adjust_spec", spec=raw, registry=registry)
    except SpecError as e:
        raise SpecError(e.errors, source=name) from e

    try:
        spec = PipelineSpec.model_validate(raw)
    except ValidationError as e:
        raise SpecError(_pydantic_errors(e), source=name) from e

    errors: list[tuple[str, str]] = []
    for path, kind, comp in _components(spec):
        try:
            entry = registry.get(kind, comp.type, comp.provider)  # a saved spec's provider decides
            cls = registry.load(kind, comp.type, comp.provider)
        except RegistryError as e:
            errors.append((f"{path}.type", str(e)))
            continue
        presets = registry.presets(kind, comp.type, comp.provider)
        values: dict[str, Any] = {}
        if comp.preset is not None:
            if comp.preset not in presets:
                errors.append((f"{path}.preset", f"{kind} {comp.type!r} has no preset {comp.preset!r}; "
                                                  f"presets: {', '.join(presets) or 'none'}"))
                continue
            values.update(presets[comp.preset])
        values.update(comp.params)
        try:
            params = cls.Params.model_validate(values)
        except ValidationError as e:
            errors.extend(_pydantic_errors(e, prefix=f"{path}.params"))
            continue
        comp.params = params.model_dump(mode="json")
        comp.provider, comp.version = entry.provider, entry.version or None
        if comp.weights is not None and not Path(comp.weights).expanduser().is_file():
            errors.append((f"{path}.weights", f"no such file: {comp.weights}"))
    for path, deg in _data_degradations(spec):
        try:
            registry.get("degradation", deg.type)
        except RegistryError as e:
            errors.append((f"{path}.type", str(e)))

    roles = spec.roles()
    for i, r in enumerate(roles):
        if r in roles[:i]:
            errors.append((f"perceivers[{i}].role", f"duplicate perceiver role {r!r}; give each a distinct role"))
    if spec.condition is not None and spec.condition.perceiver not in (None, "none") \
            and spec.condition.perceiver not in roles:
        errors.append(("condition.perceiver", f"no perceiver with role {spec.condition.perceiver!r}; "
                                              f"perceivers: {', '.join(roles) or 'none'}"))
    if not errors:
        bcls = registry.load("backbone", spec.backbone.type, spec.backbone.provider)
        if getattr(bcls, "diffusion", False) and spec.process is None:
            errors.append(("process", f"backbone {spec.backbone.type!r} is a diffusion network and needs a "
                                      "process, e.g. process: {type: irsde}"))
        if not getattr(bcls, "diffusion", False) and spec.process is not None:
            errors.append(("process", f"backbone {spec.backbone.type!r} is not a diffusion network; remove 'process'"))
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
