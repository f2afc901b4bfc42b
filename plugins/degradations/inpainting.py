"""Random missing regions (strokes and boxes) to inpaint."""
from __future__ import annotations

import math
from typing import Literal

import torch

from vlir.core.components import Degradation

from ._common import CountRange, UnitRange, as_float, finish, rand, randint, uniform


def _segment_mask(h: int, w: int, p0, p1, radius: float) -> torch.Tensor:
    """Pixels within ``radius`` of the segment p0-p1 (points as (y, x))."""
    yy = torch.arange(h, dtype=torch.float32)[:, None]
    xx = torch.arange(w, dtype=torch.float32)[None, :]
    (y0, x0), (y1, x1) = p0, p1
    dy, dx = y1 - y0, x1 - x0
    L2 = dy * dy + dx * dx
    if L2 < 1e-9:
        t = torch.zeros(h, w)
    else:
        t = (((yy - y0) * dy + (xx - x0) * dx) / L2).clamp(0, 1)
    d2 = (yy - (y0 + t * dy)) ** 2 + (xx - (x0 + t * dx)) ** 2
    return d2 <= radius * radius


class Inpainting(Degradation):
    """Remove random regions: thick free-form ``strokes``, rectangular ``boxes`` or either (``mixed``).

    Stroke widths, segment lengths and box sides are fractions of the shorter image side.
    Missing pixels are filled with ``zeros``, ``ones`` or uniform ``noise``.
    """

    label = "uncompleted"

    class Params(Degradation.Params):
        masks: Literal["strokes", "boxes", "mixed"] = "mixed"
        strokes: CountRange = (1, 4)
        vertices: CountRange = (2, 6)
        stroke_width: UnitRange = (0.03, 0.08)  # fractions of the shorter side
        step: UnitRange = (0.1, 0.3)
        boxes: CountRange = (1, 3)
        box_size: UnitRange = (0.1, 0.35)
        fill: Literal["zeros", "ones", "noise"] = "zeros"

    def mask(self, n: int, h: int, w: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Boolean masks [n, 1, h, w]; True = missing."""
        p = self.params
        side = float(min(h, w))
        out = torch.zeros(n, 1, h, w, dtype=torch.bool)
        kinds = randint((0, 1), n, generator)
        for i in range(n):
            kind = p.masks if p.masks != "mixed" else ("strokes", "boxes")[int(kinds[i])]
            m = torch.zeros(h, w, dtype=torch.bool)
            if kind == "strokes":
                for _ in range(int(randint(p.strokes, 1, generator))):
                    radius = max(0.5, float(uniform(p.stroke_width, 1, generator)) * side / 2)
                    start = rand(2, generator)
                    pt = (float(start[0]) * (h - 1), float(start[1]) * (w - 1))
                    for _ in range(int(randint(p.vertices, 1, generator)) - 1):
                        a = float(rand(1, generator)) * 2 * math.pi
                        step = float(uniform(p.step, 1, generator)) * side
                        nxt = (min(max(pt[0] + step * math.sin(a), 0.0), h - 1.0),
                               min(max(pt[1] + step * math.cos(a), 0.0), w - 1.0))
                        m |= _segment_mask(h, w, pt, nxt, radius)
                        pt = nxt
                    m |= _segment_mask(h, w, pt, pt, radius)
            else:
                for _ in range(int(randint(p.boxes, 1, generator))):
                    bh = max(1, round(float(uniform(p.box_size, 1, generator)) * h))
                    bw = max(1, round(float(uniform(p.box_size, 1, generator)) * w))
                    top = int(randint((0, h - bh), 1, generator))
                    left = int(randint((0, w - bw), 1, generator))
                    m[top:top + bh, left:left + bw] = True
            out[i, 0] = m
        return out

    def forward(self, img: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x, dtype = as_float(img, "inpainting")
        n, c, h, w = x.shape
        m = self.mask(n, h, w, generator).to(x.device)
        if self.params.fill == "zeros":
            fill = torch.zeros_like(x)
        elif self.params.fill == "ones":
            fill = torch.ones_like(x)
        else:
            fill = rand(x.shape, generator, x.device)
        return finish(torch.where(m, fill, x), dtype)
