"""Class words, stated once: degradation words and the three quality tiers (torch-free).

A degradation's class word is its ``Degradation.label`` (DA-CLIP's vocabulary where it has one).
A perceiver that classifies degradations (a ``degradations`` param) takes by default the words of
its spec's ``data.degradations``, in order, so that a spec names each class once; the routing of
``experts`` by class probabilities names classes by the same words.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .registry import Registry

# DA-CLIP's ten degradation words (Luo et al., ICLR 2024): the classes of its official checkpoint
DACLIP_WORDS = ("motion-blurry", "hazy", "jpeg-compressed", "low-light", "noisy",
                "raindrop", "rainy", "shadowed", "snowy", "uncompleted")

# Perceive-IR's quality tiers: their names (``Perception.quality_probs`` columns, in this order), the
# words a quality perceiver's prompts start from, and the value of each in ``quality_score``
QUALITY_TIERS = ("low", "medium", "high")
QUALITY_WORDS = ("terrible", "mediocre", "excellent")
TIER_VALUES = (0.0, 0.5, 1.0)

CLASS_WORDS_FIELD = "degradations"  # the Params field of a perceiver's degradation class words
CLEAN = "clean"  # the class word of images with nothing to remove (plugins/degradations/clean.py)


def degradation_word(degradation: Any) -> str:
    """The class word of a degradation (class or instance): its ``label``, else its registry name,
    else its class name."""
    cls = degradation if isinstance(degradation, type) else type(degradation)
    return getattr(degradation, "label", "") or getattr(degradation, "name", "") or cls.__name__.lower()


def shown_words(degradation: Any, params: Any) -> list[str]:
    """The class words a degradation (class or instance) with ``params`` can show: its parts'
    (``class_words(params)``, e.g. ``mix``), else its own word."""
    cls = degradation if isinstance(degradation, type) else type(degradation)
    parts = getattr(cls, "class_words", None)
    return list(parts(params)) if callable(parts) else [degradation_word(degradation)]


def data_words(spec: dict[str, Any], registry: "Registry") -> list[str] | None:
    """Class words of a raw spec's ``data.degradations``, in order of first appearance, without
    duplicates (None when it has none, or when one is unknown: validation reports that with its
    path). A degradation that composes several (``mix``) gives the words of its parts
    (``class_words(params)``), so ``[noise, {type: mix, params: {include: [low-light, noisy]}}]``
    gives ``[noisy, low-light]``: the classes every part of a sample can be named by."""
    data = spec.get("data")
    if not isinstance(data, dict) or data.get("layout", "synthetic") != "synthetic":
        return None  # paired data names its classes by folder
    degradations = data.get("degradations")
    if not isinstance(degradations, list) or not degradations:
        return None
    words: list[str] = []
    for d in degradations:
        name = d.get("type") if isinstance(d, dict) else None
        try:
            words.extend(shown_words(registry.load("degradation", name), d.get("params") or {}))
        except Exception:  # noqa: BLE001 - not a known degradation, or bad params: left to validation
            return None
    return list(dict.fromkeys(words))


def default_class_words(spec: dict[str, Any], registry: "Registry") -> None:
    """Give each perceiver that classifies degradations and does not name its classes (in
    ``params`` or through its preset) the class words of the spec's data. Mutates ``spec``."""
    words = data_words(spec, registry)
    perceivers = spec.get("perceivers")
    if words is None or not isinstance(perceivers, list):
        return
    for p in perceivers:
        if not isinstance(p, dict) or not isinstance(p.get("params", {}), dict):
            continue
        try:
            cls = registry.load("perceiver", p.get("type"), p.get("provider"))
            preset = registry.presets("perceiver", p["type"], p.get("provider")).get(p.get("preset"), {}) \
                if p.get("preset") else {}
        except Exception:  # noqa: BLE001 - unknown perceiver or preset: left to validation
            continue
        if CLASS_WORDS_FIELD in cls.Params.model_fields and CLASS_WORDS_FIELD not in preset \
                and CLASS_WORDS_FIELD not in p.get("params", {}):
            p.setdefault("params", {})[CLASS_WORDS_FIELD] = list(words)


# -- the degradations present in a sample ---------------------------------------------------------
# A training or evaluation sample says which degradations it shows, and how strongly, in one string
# (so that it collates into a list like ``degradation_name``): ``"low-light=0.73;noisy=0.41"``, class
# words with a severity in [0, 1] each, in the order they were applied; ``""``: nothing (clean).
# Severity of a part: how much it changed the image, ``clamp((40 - PSNR(before, after)) / 30, 0, 1)``
# (:func:`severity_of`; the PSNR a severity stands for: :func:`psnr_of`).
def severity_of(psnr_db: float) -> float:
    """The severity of a change of ``psnr_db`` dB: 0 at 40 dB and above (barely visible), 1 at 10 dB
    and below."""
    return min(max((40.0 - psnr_db) / 30.0, 0.0), 1.0)


def psnr_of(severity: float) -> float:
    """The PSNR (dB) between an image and its degraded version that a severity in [0, 1] stands for."""
    return 40.0 - 30.0 * severity


# severities from here up (PSNR 11.5 dB or less) are the end of the scale: "at least this bad", so the
# change a right restoration makes is not bounded by them
SATURATED = 0.95


def format_parts(parts: dict[str, float]) -> str:
    """``{"low-light": 0.73, "noisy": 0.41}`` -> ``"low-light=0.73;noisy=0.41"``."""
    for w in parts:
        if not w or any(c in w for c in "=;"):
            raise ValueError(f"class word {w!r} cannot be written in a parts string (empty, or holds '=' or ';')")
    return ";".join(f"{w}={min(max(float(s), 0.0), 1.0):.4f}" for w, s in parts.items())


def parse_parts(text: str) -> dict[str, float]:
    """``"low-light=0.73;noisy=0.41"`` -> ``{"low-light": 0.73, "noisy": 0.41}`` (``""`` -> ``{}``)."""
    out: dict[str, float] = {}
    for item in filter(None, (t.strip() for t in text.split(";"))):
        word, eq, value = item.partition("=")
        try:
            severity = float(value) if eq else 1.0
        except ValueError:
            raise ValueError(f"parts {text!r}: severity of {word!r} is not a number: {value!r}") from None
        if not word or not 0.0 <= severity <= 1.0:
            raise ValueError(f"parts {text!r}: expected word=severity with severity in [0, 1], got {item!r}")
        out[word] = severity
    return out
