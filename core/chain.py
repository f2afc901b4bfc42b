"""Telling a pipeline what to remove, and restoring step by step.

- :func:`words_from_prompt` turns the user's words ("remove the rain and the noise") into class
  words of the pipeline's perceiver ("rainy", "noisy"); where no word matches, :func:`prompt_words`
  asks the perceiver's text encoder for the nearest class (:func:`nearest_class`).
- :func:`steer` restores as if the perceiver had seen the given class: the feeding perceiver's class
  probabilities become one-hot on it, so an ``experts`` backbone runs that expert and a backbone
  conditioned on class probabilities gets that class.
- :func:`restore_steps` is the step-by-step restoration of AutoDIR / AgenticIR: perceive, remove
  the most likely degradation with its expert, perceive again; stop when the perceiver sees
  nothing to remove (its ``clean`` class, or a top probability under ``abstain``), when a step does
  not lower the probability of the degradation it treated (that step is undone), or after
  ``steps`` steps. A fixed ``path`` of class words replaces the perceiver's choices.
  With a multi-label feeding perceiver (``Perception.presence``: each class present or not) an
  image is clean when no class is present above ``present`` (0.5), each step treats the most
  severe present class (noise before blur, :data:`BEFORE`), a step is undone when it does not
  lower that class's presence x severity or changes the image far more than that severity allows
  (:func:`too_much`: do no harm where the perceiver misreads an image), and abstention reads the
  top presence; ``vlir restore`` then chains by default (:func:`default_steps`). A present class that the image's plain statistics rule out
  (:func:`vlir.core.plausible.ruled_out`: a bright image is not low-light, a clear one not hazy) is
  taken for absent, in one step and step by step.

Only pipelines whose feeding perceiver has named classes and whose conditioning uses the class
probabilities (``condition.vector: probs``) can be steered (:func:`steerable`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Callable, Sequence

import torch
import torch.nn.functional as F

from .classes import CLEAN, SATURATED, psnr_of
from .errors import UserError
from .plausible import BOUNDS, ruled_out

if TYPE_CHECKING:  # pragma: no cover
    from .conditioning import Perception
    from .pipeline import Pipeline

PRESENT = 0.5  # a multi-label perceiver's class is present above this probability
# The presence a class needs before it is treated, where treating an image that does not show it costs
# far more than leaving one that does: brightening a dim photo taken in good light takes it to 8-20 dB
# from itself (about 32 dB lost against an image left as it is, 40 dB), while leaving a real low-light
# photo dark loses what the low-light expert gains (about 9.4 dB on the held-out LOL training pairs).
# Treating lowers the expected loss where presence p makes p * miss > (1 - p) * false, i.e.
# p > false / (false + miss) = 0.77; benchmarks/dim.py measures both costs on validation images
# (darkened Set5 photos with and without camera noise, the held-out LOL pairs; benchmarks/results/dim.json).
# A present class under its bar is taken for absent (Path.ruled_out says so).
PRESENT_FOR: dict[str, float] = {"low-light": 0.77}
# Classes treated before another when both are present, whatever their severities: noise before blur
# (a deblurring expert sharpens the noise too; the camera adds noise after the lens blurs).
BEFORE: dict[str, tuple[str, ...]] = {"blurry": ("noisy",)}
# A multi-label step is undone when it changes the image by GUARD dB more than the perceived severity
# says the image is degraded: severity s is defined by PSNR(clean, degraded) = 40 - 30 s
# (vlir.core.classes), so a right restoration changes its input by about that much, and an expert
# run on a misread image (a low-light expert on a normally lit photo) by far more. Chosen on held-out
# synthetic images by benchmarks/guard.py; None: off.
GUARD: float | None = 8.0
# a prompt that names no class word goes to the class its perceiver's text encoder embeds nearest, when
# that one is at least this much nearer (cosine similarity) than the runner-up
TEXT_MARGIN = 0.02


class SteerError(UserError, ValueError):
    """A class word, prompt or step request this pipeline cannot follow (the message says why)."""


# -- words ------------------------------------------------------------------------------------------
def _stem(word: str) -> str:
    """A crude stem, enough for class words: rainy/rain, noisy/denoise/noise, hazy/haze/dehaze,
    compressed/compression, blurry/deblur, low-light/light."""
    w = word.lower()
    if w.startswith("de") and len(w) > 5:  # denoise, deblur, dehaze, derain
        w = w[2:]
    for end in ("ing", "ion", "ed", "es", "y", "e", "s"):
        if w.endswith(end) and len(w) - len(end) >= 3:
            return w[: -len(end)]
    return w


def _words(text: str) -> list[str]:
    return [w for w in re.split(r"[^a-z0-9]+", text.lower()) if w]


# other words people use for the built-in class words (DA-CLIP's vocabulary)
SYNONYMS: dict[str, tuple[str, ...]] = {
    "noisy": ("grain", "grainy", "speckle"),
    "jpeg-compressed": ("compression", "compressed", "artifact", "artefact", "block", "blocky"),
    "blurry": ("soft", "focus", "unsharp"),
    "motion-blurry": ("shake", "shaky", "motion"),
    "low-light": ("dark", "dim", "underexposed", "night"),
    "hazy": ("fog", "foggy", "mist", "misty", "smog"),
    "rainy": ("streak", "streaks", "drizzle"),
    "snowy": ("snow", "snowflake"),
    "raindrop": ("droplet", "drops"),
}


def _match(stem: str, said: list[str]) -> int | None:
    """Where a stem occurs among the said stems (one beginning the other, three letters or more)."""
    for i, s in enumerate(said):
        if len(s) >= 3 and len(stem) >= 3 and (s.startswith(stem) or stem.startswith(s)):
            return i
    return None


def words_from_prompt(text: str, classes: Sequence[str],
                      encode: Callable[[list[str]], torch.Tensor] | None = None) -> list[str]:
    """The class words an instruction names, in the order it names them ("remove the rain, then the
    noise" -> ["rainy", "noisy"]). A class is named when all of its own words occur in the text (as
    stems: "rain" ~ "rainy", "denoise" ~ "noisy") or one of its :data:`SYNONYMS` does ("fog" ->
    "hazy"); a class whose words are all part of another named class is dropped ("motion blur"
    names motion-blurry, not blurry too). Where no word matches and ``encode`` (a perceiver's text
    encoder: texts -> normalised embeddings) is given, the class whose words embed nearest to the
    text (:func:`nearest_class`). Nothing named is a :class:`SteerError` listing the classes.
    """
    said = [_stem(w) for w in _words(text)]
    named: dict[str, tuple[int, set[str]]] = {}
    for name in classes:
        own = [_stem(w) for w in _words(name) if len(_stem(w)) >= 3]
        where = [_match(o, said) for o in own]
        if own and all(i is not None for i in where):
            named[name] = (min(where), {said[i] for i in where})
            continue
        for syn in SYNONYMS.get(name, ()):
            i = _match(_stem(syn), said)
            if i is not None:
                named[name] = (i, {said[i]})
                break
    out = [n for n, (_, used) in named.items()
           if not any(m != n and used < other for m, (_, other) in named.items())]
    if not out and encode is not None:
        return [nearest_class(text, classes, encode)]
    if not out:
        raise SteerError(f"the prompt {text!r} names no degradation this pipeline knows; use its class words: "
                         f"{', '.join(classes)}")
    return sorted(out, key=lambda n: named[n][0])


def nearest_class(text: str, classes: Sequence[str], encode: Callable[[list[str]], torch.Tensor],
                  margin: float = TEXT_MARGIN) -> str:
    """The class (``clean`` aside) whose words the text encoder ``encode`` embeds nearest to
    ``text`` (cosine similarity); a :class:`SteerError` when it is not ``margin`` nearer than the
    runner-up (the encoder cannot tell them apart: the image is not touched on a guess)."""
    names = [c for c in classes if c != CLEAN]
    if not names:
        raise SteerError(f"the prompt {text!r} names no degradation, and this pipeline has none to remove")
    with torch.no_grad():
        emb = F.normalize(encode([text, *names]).float(), dim=-1)
    sims = (emb[1:] @ emb[0]).tolist()
    order = sorted(range(len(names)), key=lambda k: -sims[k])
    best = order[0]
    if len(order) > 1 and sims[best] - sims[order[1]] < margin:
        raise SteerError(f"the prompt {text!r} names no class word, and the perceiver's text encoder finds it as "
                         f"near to {names[order[1]]!r} ({sims[order[1]]:.3f}) as to {names[best]!r} "
                         f"({sims[best]:.3f}); use the class words: {', '.join(classes)}")
    return names[best]


def prompt_words(pipeline: "Pipeline", text: str) -> list[str]:
    """:func:`words_from_prompt` with the pipeline's class words, and the feeding perceiver's text
    encoder (``encode_text``) where it has one."""
    role, names = classes(pipeline)
    encode = getattr(pipeline.perceivers[role], "encode_text", None) if role is not None else None
    return words_from_prompt(text, names, encode)


# -- steering ---------------------------------------------------------------------------------------
def classes(pipeline: "Pipeline") -> tuple[str | None, list[str]]:
    """(the feeding perceiver's role, its class words); (None, []) when no perceiver classifies."""
    role = pipeline.feed if pipeline.feed is not None else next(iter(pipeline.perceivers), None)
    if role is None:
        return None, []
    return role, list(getattr(pipeline.perceivers[role], "class_names", None) or [])


def multilabel(pipeline: "Pipeline") -> bool:
    """Whether the feeding perceiver is multi-label (fills ``Perception.presence``)."""
    role, _ = classes(pipeline)
    return role is not None and bool(getattr(pipeline.perceivers[role], "multilabel", False))


def default_steps(pipeline: "Pipeline") -> int | None:
    """Steps of ``vlir restore`` without ``--chain``: one per class (``clean`` aside) for a steerable
    pipeline fed by a multi-label perceiver, None (one ordinary restoration) otherwise."""
    if not multilabel(pipeline) or why_not_steerable(pipeline) is not None:
        return None
    return max(1, sum(n != CLEAN for n in classes(pipeline)[1]))


def why_not_steerable(pipeline: "Pipeline") -> str | None:
    """Why the pipeline cannot be told which degradation to remove, or None when it can."""
    role, names = classes(pipeline)
    if not names:
        return "it has no perceiver with named degradation classes"
    c = pipeline.spec.condition
    if pipeline.feed is None or c is None or c.vector_source != "probs":
        return "its backbone is not conditioned on the class probabilities (condition.vector: probs)"
    return None


def check_words(pipeline: "Pipeline", words: Sequence[str]) -> list[str]:
    """``words`` checked against the pipeline's class words (a :class:`SteerError` names them)."""
    _, names = classes(pipeline)
    bad = [w for w in words if w not in names]
    if bad:
        raise SteerError(f"unknown degradation {', '.join(map(repr, bad))}; this pipeline knows {', '.join(names)}")
    return list(words)


def steer(pipeline: "Pipeline", perceptions: dict[str, "Perception"], word: str, index: int | None = None
          ) -> dict[str, "Perception"]:
    """The perceptions with the feeding perceiver's class probabilities one-hot on ``word`` (of
    image ``index`` only, when given)."""
    role, names = classes(pipeline)
    p = perceptions[role]
    probs = torch.zeros_like(p.class_probs) if index is None else p.class_probs.clone()
    rows = slice(None) if index is None else index
    probs[rows] = 0
    probs[rows, names.index(word)] = 1
    return {**perceptions, role: replace(p, class_probs=probs)}


# -- step by step -----------------------------------------------------------------------------------
@dataclass
class Step:
    """One restoration step: the class treated, its probability (multi-label: presence x severity)
    before and after the step."""

    word: str
    before: float
    after: float | None = None


@dataclass
class Path:
    """What was done to one image and why it stopped: ``clean`` (nothing left to remove),
    ``unsure`` (top probability under the abstention threshold), ``no better`` (the last step did not
    lower its class's probability, or presence x severity, and was undone), ``too much`` (the last
    step changed the image far more than the perceived severity allows, :func:`too_much`, and was
    undone), ``steps`` (the step limit) or ``asked`` (a given path, done)."""

    steps: list[Step] = field(default_factory=list)
    stop: str = "steps"
    undone: Step | None = None
    ruled_out: dict[str, str] = field(default_factory=dict)  # class word -> why it was taken for absent

    @property
    def first(self) -> str:
        """The class the first step treated, else why the image was left alone (``clean``, ``unsure``)."""
        if self.steps:
            return self.steps[0].word
        return self.stop if self.stop in ("clean", "unsure") else (self.undone.word if self.undone else self.stop)

    def __str__(self) -> str:
        parts = [f"{s.word} {s.before:.2f}" for s in self.steps]
        end = {"clean": "clean", "unsure": "left as is (unsure)", "no better": "stop (no better)",
               "too much": "stop (too much)", "steps": "", "asked": ""}[self.stop]
        if self.undone is not None:
            end = f"{self.undone.word} undone ({self.stop})"
        text = " → ".join([*parts, end] if end else parts) or "nothing done"
        return text + (f" ({', '.join(self.ruled_out)} ruled out)" if self.ruled_out else "")


def _top(pipeline: "Pipeline", perceptions: dict[str, "Perception"], index: int = 0
         ) -> tuple[str, float, torch.Tensor]:
    """(top class word, its probability, all probabilities) of image ``index``."""
    role, names = classes(pipeline)
    probs = perceptions[role].class_probs[index].float()
    k = int(probs.argmax())
    return names[k], float(probs[k]), probs


def _amount(p: "Perception", k: int, index: int = 0) -> float:
    """How much of class ``k`` image ``index`` shows: its class probability, or for a multi-label
    perceiver its presence x severity (an expected severity: near 0 once the class is gone)."""
    if p.presence is None:
        return float(p.class_probs[index].float()[k])
    amount = p.presence[index, k].float()
    if p.severity is not None:
        amount = amount * p.severity[index, k].float()
    return float(amount)


def _present(pipeline: "Pipeline", perceptions: dict[str, "Perception"], index: int, present: float,
             x: torch.Tensor | None = None, bounds: dict | None = None, present_for: dict[str, float] | None = None,
             before: dict[str, tuple[str, ...]] | None = None) -> tuple[list[str], float, dict[str, str]]:
    """(the classes present in image ``index``, most severe first; the top presence; the classes ruled
    out and why), ``clean`` aside. With the image ``x`` (1, 3, H, W) and ``bounds``, a class
    :func:`vlir.core.plausible.ruled_out` is left out, and so is one whose presence is under its bar in
    ``present_for`` (class word -> presence, :data:`PRESENT_FOR`). ``before`` (:data:`BEFORE`) moves a
    class ahead of another it must precede."""
    role, names = classes(pipeline)
    p = perceptions[role]
    presence = p.presence[index].float()
    severity = p.severity[index].float() if p.severity is not None else presence
    ks = [k for k, n in enumerate(names) if n != CLEAN]
    found = sorted((k for k in ks if float(presence[k]) > present),
                   key=lambda k: (-float(severity[k]), -float(presence[k])))
    for later, firsts in (before or {}).items():  # move each first class just ahead of the later one
        b = names.index(later) if later in names else None
        for a in (names.index(f) for f in firsts if f in names):
            if b in found and a in found and found.index(a) > found.index(b):
                found.remove(a)
                found.insert(found.index(b), a)
    why: dict[str, str] = {}
    for k in found:
        bar = (present_for or {}).get(names[k])
        if bar is not None and float(presence[k]) <= bar:
            why[names[k]] = f"presence {float(presence[k]):.2f} not above {bar:.2f} (the bar for {names[k]})"
    if x is not None and bounds is not None:
        why.update({names[k]: r for k in found if names[k] not in why
                    and (r := ruled_out(names[k], x, float(severity[k]), bounds)) is not None})
    words = [names[k] for k in found if names[k] not in why]
    return words, max((float(presence[k]) for k in ks), default=0.0), why


def seen_classes(pipeline: "Pipeline", perceptions: dict[str, "Perception"], index: int = 0,
                 present: float = PRESENT) -> list[str]:
    """The classes the feeding perceiver sees in image ``index``: those present above ``present``,
    most severe first (multi-label; ``clean`` aside), else its top class (single-label)."""
    if multilabel(pipeline):
        return _present(pipeline, perceptions, index, present)[0]
    return [_top(pipeline, perceptions, index)[0]]


def too_much(p: "Perception", k: int, x: torch.Tensor, y: torch.Tensor, guard: float, index: int = 0) -> bool:
    """Whether restoring class ``k`` of image ``index`` of ``p`` changed ``x`` into ``y`` by more than its perceived severity
    allows: PSNR(x, y) under the PSNR the severity stands for (:func:`vlir.core.classes.psnr_of`)
    less ``guard`` dB. Severities of :data:`SATURATED` and above (the end of the scale) are never
    too much."""
    if p.severity is None:
        return False
    from .metrics import psnr_torch

    s = float(p.severity[index, k])
    if s >= SATURATED:
        return False
    return float(psnr_torch(y.float(), x.float())[0]) < psnr_of(s) - guard


@torch.no_grad()
def restore_steps(pipeline: "Pipeline", lq: torch.Tensor, *, steps: int = 1, path: Sequence[str] | None = None,
                  abstain: float | None = None, tile: int | None = None, overlap: int | None = None,
                  generator: torch.Generator | None = None, ensemble: bool = False, present: float = PRESENT,
                  guard: float | None = GUARD, bounds: dict | None = BOUNDS,
                  present_for: dict[str, float] | None = PRESENT_FOR,
                  before: dict[str, tuple[str, ...]] | None = BEFORE
                  ) -> tuple[torch.Tensor, dict[str, "Perception"], list[Path]]:
    """Restore ``lq`` (B, 3, H, W) step by step (the module docstring); each image on its own.

    ``steps=1`` without ``path`` is one ordinary restoration (the pipeline's own routing), left
    undone for images whose top class probability (multi-label: top presence) is under
    ``abstain``, and for multi-label perceivers also where no class is present above ``present``;
    a multi-label image routed to a class that is not present (or is ruled out) is restored for
    its most severe present class instead.
    With a multi-label perceiver, present classes that ``bounds`` rule out
    (:func:`vlir.core.plausible.ruled_out`; None: no bounds) or whose presence is under their bar in
    ``present_for`` (:data:`PRESENT_FOR`; None: none) are taken for absent, classes named in ``before``
    (:data:`BEFORE`; None: by severity alone) are treated ahead of those they must precede, and a step (the one
    step too) that changes the image ``guard`` dB more than its class's perceived severity allows
    is undone (:func:`too_much`).
    Returns the restored images, the perceptions of the inputs and each image's :class:`Path`.
    """
    from .inference import restore, run_backbone

    if steps < 1:
        raise SteerError(f"--chain must be at least 1 step, got {steps}")
    if abstain is not None and not 0 <= abstain <= 1:
        raise SteerError(f"--abstain must be a probability in [0, 1], got {abstain}")
    if not 0 <= present <= 1:
        raise SteerError(f"present (the presence threshold) must be a probability in [0, 1], got {present}")
    role, names = classes(pipeline)
    if path is not None:
        path = check_words(pipeline, path)
    if (path is not None or steps > 1) and (reason := why_not_steerable(pipeline)):
        raise SteerError(f"this pipeline cannot restore step by step or follow given degradations: {reason}")
    if abstain is not None and not names:
        raise SteerError("--abstain needs a perceiver with named degradation classes")
    kw = dict(tile=tile, overlap=overlap, generator=generator)
    ml = multilabel(pipeline)

    if path is None and steps == 1:  # one ordinary restoration, abstaining where unsure
        if not names:
            out, perceptions = restore(pipeline, lq, ensemble=ensemble, **kw)
            return out, perceptions, [Path(stop="steps") for _ in range(lq.shape[0])]
        perceptions = pipeline.perceive(lq)
        cond = perceptions  # steered where an image goes to another class than its routing's
        decided: list[tuple[Path, str | None]] = []  # each image's path, and the class it is restored for
        for i in range(lq.shape[0]):
            word, prob, _ = _top(pipeline, perceptions, i)
            found: list[str] = [word]
            ruled: dict[str, str] = {}
            if ml:  # nothing present: left as it is; abstention reads the top presence
                found, prob, ruled = _present(pipeline, perceptions, i, present, lq[i:i + 1], bounds, present_for,
                                              before)
            if not found:
                decided.append((Path(stop="clean", ruled_out=ruled), None))
            elif abstain is not None and prob < abstain:
                decided.append((Path(stop="unsure", ruled_out=ruled), None))
            elif ml:
                if word not in found:  # routed elsewhere: restored for the most severe present class
                    word = found[0]
                    cond = steer(pipeline, cond, word, index=i)
                step = Step(word, _amount(perceptions[role], names.index(word), i))
                decided.append((Path([step], stop="steps", ruled_out=ruled), word))
            else:
                decided.append((Path([Step(word, prob)], stop="clean" if word == CLEAN else "steps"), word))
        out, _ = restore(pipeline, lq, ensemble=ensemble, perceptions=cond, **kw)
        for i, (done, word) in enumerate(decided):
            if word is None:
                out[i] = lq[i].to(out.dtype)
            elif ml and guard is not None and too_much(perceptions[role], names.index(word), lq[i:i + 1],
                                                       out[i:i + 1], guard, index=i):
                out[i] = lq[i].to(out.dtype)  # as a chain step: undone
                done.undone, done.stop, done.steps = done.steps[0], "too much", []
        return out, perceptions, [done for done, _ in decided]

    outs, first, paths = [], [], []
    for i in range(lq.shape[0]):
        x = lq[i:i + 1]
        seen = pipeline.perceive(x)
        first.append(seen)
        done = Path(stop="asked" if path is not None else "steps")
        todo = list(path) if path is not None else [None] * steps
        for want in todo:
            word, prob, _ = _top(pipeline, seen)
            if want is None:
                if ml:  # the most severe present class; abstention reads the top presence
                    found, prob, why = _present(pipeline, seen, 0, present, x, bounds, present_for, before)
                    done.ruled_out.update(why)
                    word = found[0] if found else CLEAN
                if word == CLEAN:
                    done.stop = "clean"
                    break
                if abstain is not None and prob < abstain:
                    done.stop = "unsure"
                    break
            else:
                word = want
            prob = _amount(seen[role], names.index(word))
            cond = pipeline.condition(steer(pipeline, seen, word))
            y = run_backbone(pipeline, x, cond, steps=None, **kw).clamp(0, 1)
            if want is None and ml and guard is not None and too_much(seen[role], names.index(word), x, y, guard):
                done.undone, done.stop = Step(word, prob), "too much"
                break
            after = pipeline.perceive(y)
            step = Step(word, prob, _amount(after[role], names.index(word)))
            if want is None and step.after >= step.before:  # no better: undo and stop
                done.undone, done.stop = step, "no better"
                break
            done.steps.append(step)
            x, seen = y, after
        outs.append(x)
        paths.append(done)
    perceptions = {r: _cat([f[r] for f in first]) for r in first[0]}
    return torch.cat(outs), perceptions, paths


def restore_auto(pipeline: "Pipeline", lq: torch.Tensor, *, tile: int | None = None, overlap: int | None = None,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, "Perception"], list[Path] | None]:
    """Restore ``lq`` as ``vlir restore`` does when told nothing: step by step with the do-no-harm rules
    where the pipeline chains by default (:func:`default_steps`), else one ordinary restoration
    (``Pipeline.restore``). Returns the images, the input's perceptions and each image's :class:`Path`
    (None for an ordinary restoration)."""
    steps = default_steps(pipeline)
    if steps is None:
        out, perceptions = pipeline.restore(lq, tile=tile, overlap=overlap, generator=generator)
        return out, perceptions, None
    return restore_steps(pipeline, lq, steps=steps, tile=tile, overlap=overlap, generator=generator)


def _cat(ps: list["Perception"]) -> "Perception":
    return replace(ps[0], **{f.name: torch.cat([getattr(p, f.name) for p in ps]) for f in fields(ps[0])
                             if isinstance(getattr(ps[0], f.name), torch.Tensor)})
