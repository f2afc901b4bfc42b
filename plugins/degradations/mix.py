"""Mixed degradations: two or three realistic ones composed in physical order."""
from __future__ import annotations

from typing import Any

import torch
from pydantic import ValidationError, field_validator

from vlir.core.components import Degradation

from ._common import CountRange, as_float, finish, rand, randint, span
from .camera_noise import CameraNoise
from .haze import Haze
from .jpeg import JPEG
from .lens_blur import LensBlur
from .low_light import LowLight
from .rain_streaks import RainStreaks
from .shake import Shake

# the parts in physical order: the scene (at most one of these), the capture, the storage
SCENE = (Haze, RainStreaks, LowLight)
CAPTURE = (LensBlur, Shake, CameraNoise)
STORAGE = (JPEG,)
PARTS = SCENE + CAPTURE + STORAGE
# realistic settings of the parts that have plainer defaults; CameraNoise's own JPEG is the storage step here
DEFAULTS: dict[type, dict[str, Any]] = {
    Haze: {"tint": 0.1}, LowLight: {"cast": 0.15, "scale": (0.05, 0.4)}, CameraNoise: {"jpeg_probability": 0.0},
    JPEG: {"quality": (30, 90)},
}


def part_params(cls: type, overrides: dict[str, Any]) -> dict[str, Any]:
    """The params of a part: its realistic settings, then the spec's overrides."""
    return {**DEFAULTS.get(cls, {}), **overrides}


class Mix(Degradation):
    """Per image, ``count`` distinct degradations of ``include`` (class words), at most one of the
    scene (hazy, rainy, low-light), applied in the order light meets them: scene, then capture
    (blur, shake, noise), then storage (JPEG). ``params`` overrides a part's params by class word.
    :meth:`compose` also returns the class words present in each image (in order applied),
    :meth:`compose_steps` the image after each part (what a part's severity is measured on).
    """

    label = "mixed"
    symmetry = "mirror"  # haze and rain keep their direction only under a horizontal flip

    class Params(Degradation.Params):
        count: CountRange = (2, 3)
        include: list[str] = [cls.label for cls in PARTS]
        params: dict[str, dict[str, Any]] = {}

        @field_validator("include", "params")
        @classmethod
        def _known(cls, v, info):
            words = [c.label for c in PARTS]
            bad = [w for w in v if w not in words]
            if bad:
                what = "unknown class word(s)" if info.field_name == "include" else "params for unknown class word(s)"
                raise ValueError(f"{what} {bad}: mix composes {words}")
            if info.field_name == "include":
                return list(dict.fromkeys(v))
            from vlir.core.spec import pydantic_errors  # spec wording: unknown keys name the close ones

            errors = []  # each part's params errors, under params.<word>.<field>
            for part in PARTS:
                try:
                    if part.label in v:
                        part.Params.model_validate(part_params(part, v[part.label]))
                except ValidationError as e:
                    errors += [{"type": "value_error", "loc": (part.label, *err["loc"]), "input": err["input"],
                                "ctx": {"error": ValueError(msg)}}
                               for err, (_, msg) in zip(e.errors(), pydantic_errors(e, model=part.Params))]
            if errors:
                raise ValidationError.from_exception_data("Mix.Params", errors)
            return v

    def __init__(self, params=None, **overrides: Any):
        super().__init__(params, **overrides)
        p = self.params
        lo, hi = (int(v) for v in span(p.count))
        if lo < 1 or hi > len(p.include) or (hi > 1 and hi > 1 + sum(c.label in p.include for c in CAPTURE + STORAGE)):
            raise ValueError(f"mix: count {p.count} cannot be drawn from {p.include} (at most one scene degradation)")
        # each part built with its realistic settings and the spec's overrides (validated by its Params)
        self.parts = {cls.label: cls(**part_params(cls, p.params.get(cls.label, {})))
                      for cls in PARTS if cls.label in p.include}

    def choose(self, n: int, generator: torch.Generator | None = None) -> list[list[str]]:
        """The class words of each of ``n`` images, in physical order."""
        counts = randint(self.params.count, n, generator)
        words = list(self.parts)
        scene = {c.label for c in SCENE}
        chosen = []
        for i in range(n):
            order = torch.argsort(rand((len(words),), generator)).tolist()
            pick: list[str] = []
            for j in order:
                if len(pick) == int(counts[i]):
                    break
                if words[j] in scene and any(w in scene for w in pick):
                    continue
                pick.append(words[j])
            chosen.append([w for w in words if w in pick])  # words are in physical order
        return chosen

    @classmethod
    def class_words(cls, params: Any = None) -> list[str]:
        """The class words a mix with ``params`` (a dict or Params) can show, in physical order: the
        vocabulary a spec's ``data.degradations`` gets from it (``vlir.core.classes.data_words``)."""
        p = params if isinstance(params, cls.Params) else cls.Params(**dict(params or {}))
        return [c.label for c in PARTS if c.label in p.include]

    def _run(self, img: torch.Tensor, generator: torch.Generator | None, keep: bool
             ) -> tuple[torch.Tensor, list[list[str]], list[list[tuple[str, torch.Tensor]]]]:
        x, dtype = as_float(img, "mix")
        labels = self.choose(x.shape[0], generator)
        out, steps = [], []
        for i, words in enumerate(labels):
            y = x[i:i + 1]
            done = []
            for w in words:
                y = self.parts[w](y, generator=generator)
                if keep:
                    done.append((w, y))
            out.append(y)
            steps.append(done)
        return finish(torch.cat(out), dtype), labels, steps

    def compose(self, img: torch.Tensor, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, list[list[str]]]:
        """The degraded images and the class words present in each."""
        out, labels, _ = self._run(img, generator, keep=False)
        return out, labels

    def compose_steps(self, img: torch.Tensor, generator: torch.Generator | None = None
                      ) -> tuple[torch.Tensor, list[list[tuple[str, torch.Tensor]]]]:
        """The degraded images (as :meth:`compose`, same draws) and, per image, each part applied:
        ``(class word, the image after it [1, C, H, W] float)``, in order; the image before the
        first part is the input. The datasets measure each part's severity from these."""
        out, _, steps = self._run(img, generator, keep=True)
        return out, steps

    def forward(self, img: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.compose(img, generator)[0]
