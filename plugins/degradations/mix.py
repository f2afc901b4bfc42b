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
    :meth:`compose` also returns the class words present in each image (in order applied).
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

    def compose(self, img: torch.Tensor, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, list[list[str]]]:
        """The degraded images and the class words present in each."""
        x, dtype = as_float(img, "mix")
        labels = self.choose(x.shape[0], generator)
        out = []
        for i, words in enumerate(labels):
            y = x[i:i + 1]
            for w in words:
                y = self.parts[w](y, generator=generator)
            out.append(y)
        return finish(torch.cat(out), dtype), labels

    def forward(self, img: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.compose(img, generator)[0]
