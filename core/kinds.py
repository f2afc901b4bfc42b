"""Component kinds and their entry-point groups (import-light: no torch, no pydantic)."""
from __future__ import annotations

KINDS = ("perceiver", "backbone", "loss", "process", "degradation")
PLURAL = {"perceiver": "perceivers", "backbone": "backbones", "loss": "losses", "process": "processes",
          "degradation": "degradations"}
GROUPS = {kind: f"vlir.{PLURAL[kind]}" for kind in KINDS}  # entry-point group of third-party components
HOOK_GROUP = "vlir.hooks"  # entry-point group of pluggy hook plugins
_SINGULAR = {v: k for k, v in PLURAL.items()}


def normalise_kind(kind: str) -> str:
    """``"backbones"`` -> ``"backbone"``; an unknown kind is a LookupError listing the kinds."""
    k = _SINGULAR.get(kind, kind)
    if k not in KINDS:
        from .registry import RegistryError

        raise RegistryError(f"unknown component kind {kind!r}; kinds are: {', '.join(KINDS)}")
    return k
