"""vlir's own hook plugin: the built-in components and the perceiver -> backbone wiring.

It is registered through the same pluggy hooks a third-party plugin implements.
"""
from __future__ import annotations

from importlib import resources
from typing import Any

import yaml

from .classes import QUALITY_TIERS, default_class_words
from .hookspecs import hookimpl


def read_builtin_registry() -> dict[str, dict[str, dict[str, Any]]]:
    text = resources.files("vlir.core").joinpath("registry.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text) or {}


@hookimpl
def vlir_components() -> list[dict[str, Any]]:
    out = []
    for kind, comps in read_builtin_registry().items():
        for name, meta in (comps or {}).items():
            out.append({"kind": kind, "name": name, "target": meta["target"],
                        "summary": meta.get("summary", ""), "presets": meta.get("presets") or {}})
    return out


def _feeding_perceiver(spec: dict[str, Any]) -> dict[str, Any] | None:
    perceivers = spec.get("perceivers") or []
    if not isinstance(perceivers, list) or not perceivers:
        return None
    cond = spec.get("condition")
    if cond is None:
        role = None
    elif isinstance(cond, dict):
        role = cond.get("perceiver")
        if role in ("none", False) or cond.get("tokens") is False and cond.get("vector") is False:
            return None
    else:
        return None
    for i, p in enumerate(perceivers):
        if not isinstance(p, dict):
            continue
        if role is None or p.get("role", p.get("type")) == role:
            return p
    return None


@hookimpl
def vlir_adjust_spec(spec: dict[str, Any], registry) -> None:
    """Size the backbone's conditioning inputs from the perceiver that feeds it.

    Fields the spec sets explicitly (in ``params`` or through its preset) are kept. Errors
    are left to validation, which reports them with their paths.
    """
    backbone = spec.get("backbone")
    if isinstance(backbone, dict) and (backbone.get("type") == "auto" or backbone.get("type") == "spandrel" and
                                       backbone.get("weights") and not (backbone.get("params") or {}).get("arch")):
        from vlir.plugins.backbones.auto import resolve  # the type and its sizes read from the weights file

        resolve(backbone, registry=registry)
    default_class_words(spec, registry)  # a perceiver's classes default to the data's degradations
    perceiver = _feeding_perceiver(spec)
    if not isinstance(backbone, dict) or perceiver is None:
        return
    try:
        pcls = registry.load("perceiver", perceiver["type"])
        pparams = registry.resolve("perceiver", perceiver)
        vector_dim, token_dim = pcls.output_dims(pparams)
        cond = spec.get("condition") if isinstance(spec.get("condition"), dict) else {}
        source = cond.get("vector", True)
        wiring: dict[str, Any] = {}
        if source is False:
            vector_dim = None
        elif source == "probs":
            vector_dim = pcls.class_count(pparams)
            wiring = registry.load("backbone", backbone["type"]).class_params(pcls.class_words(pparams))
        elif source == "quality":
            vector_dim = len(QUALITY_TIERS)
        if cond.get("tokens") is False:
            token_dim = None
        bcls = registry.load("backbone", backbone["type"])
        preset = registry.presets("backbone", backbone["type"]).get(backbone.get("preset"), {}) \
            if backbone.get("preset") else {}
    except Exception:  # noqa: BLE001 - validation reports it with its path
        return
    params = backbone.setdefault("params", {})
    if not isinstance(params, dict):
        return
    for key, value in {**bcls.condition_params(vector_dim, token_dim), **wiring}.items():
        if key not in params and key not in preset:
            params[key] = value
