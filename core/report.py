"""Evaluation reports: a self-contained HTML page and a PNG bar chart (drawn with Pillow).

The HTML links its images relatively (``summary.png``, ``crops/*.png`` beside it), so the
report folder can be moved or zipped as a whole. Every file is written atomically.
"""
from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any, Sequence

from .io import atomic_path, atomic_write_text
from . import metrics

_COLORS = {"input": (160, 160, 160), "restored": (46, 110, 200)}


def _fmt(v: Any, digits: int | str = 2) -> str:
    """A table cell: ``digits`` decimals, or a format spec such as ``".4f"`` (a metric's ``fmt``)."""
    if v is None:
        return "–"
    if isinstance(v, float):
        if math.isnan(v):
            return "–"
        if math.isinf(v):
            return "∞"
        return format(v, digits if isinstance(digits, str) else f".{digits}f")
    return html.escape(str(v))


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _nice_step(top: float) -> float:
    for step in (1, 2, 5, 10, 20, 50, 100):
        if top / step <= 8:
            return float(step)
    return 10 ** math.ceil(math.log10(top / 8))


def bar_chart(path: str | Path, groups: Sequence[str], series: dict[str, Sequence[float]], title: str = "",
              ylabel: str = "PSNR (dB)") -> Path:
    """A grouped bar chart PNG: one group per entry of ``groups``, one bar per series."""
    from PIL import Image, ImageDraw

    groups = list(groups)
    names = list(series)
    vals = [[float(series[s][g]) for s in names] for g in range(len(groups))]
    finite = [v for row in vals for v in row if math.isfinite(v)]
    top = max([1.0] + [v for v in finite if v > 0])
    step = _nice_step(top)
    top = math.ceil(top / step) * step
    ticks = int(round(top / step))
    f_small, f_big, f_tiny = _font(12), _font(15), _font(10)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    labels = [g if len(g) <= 24 else g[:23] + "…" for g in groups]
    bar_w, gap, left, right, top_m, bottom = 30, 24, 56, 20, 48, 80
    group_w = max([len(names) * bar_w + gap] + [probe.textlength(lab, font=f_small) + 12 for lab in labels])
    width = int(max(360, left + right + group_w * max(1, len(groups))))
    height = 380
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    plot_h = height - top_m - bottom
    y0 = top_m + plot_h
    d.text((left, 12), title, fill="black", font=f_big)
    for k in range(ticks + 1):  # horizontal grid lines and y labels
        v = step * k
        y = y0 - plot_h * v / top
        d.line([(left, y), (width - right, y)], fill=(225, 225, 225))
        d.text((left - 8 - probe.textlength(f"{v:g}", font=f_small), y - 7), f"{v:g}", fill="black", font=f_small)
    d.text((8, top_m - 26), ylabel, fill="black", font=f_small)
    d.line([(left, top_m), (left, y0), (width - right, y0)], fill="black")
    colors = [_COLORS.get(s, [(220, 120, 40), (60, 160, 90), (150, 80, 170)][i % 3]) for i, s in enumerate(names)]
    for g, label in enumerate(labels):
        gx = left + g * group_w
        x = gx + (group_w - len(names) * bar_w) / 2
        for s in range(len(names)):
            v = vals[g][s]
            if math.isfinite(v):
                h = plot_h * max(0.0, min(v, top)) / top
                d.rectangle([x + s * bar_w + 2, y0 - h, x + (s + 1) * bar_w - 2, y0], fill=colors[s])
                d.text((x + s * bar_w + 1, y0 - h - 13), f"{v:.1f}", fill="black", font=f_tiny)
        tw = probe.textlength(label, font=f_small)
        d.text((gx + (group_w - tw) / 2, y0 + 6), label, fill="black", font=f_small)
    lx = left
    for s, sname in enumerate(names):  # legend
        d.rectangle([lx, height - 28, lx + 12, height - 16], fill=colors[s])
        d.text((lx + 18, height - 30), sname, fill="black", font=f_small)
        lx += 36 + probe.textlength(sname, font=f_small)
    path = Path(path)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return path


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222}
h1{font-size:1.4em} h2{font-size:1.15em;margin-top:1.6em}
table{border-collapse:collapse;margin:8px 0} td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3} td.l,th.l{text-align:left}
.crops td{text-align:center;vertical-align:top} .crops img{width:160px;image-rendering:pixelated}
.crops.noref img{width:256px}
.meta td{text-align:left} .small{color:#666;font-size:.9em}
"""


def _table(headers: list[str], rows: list[list[Any]], left: int = 1, fmts: list[int | str] | None = None) -> str:
    head = "".join(f"<th class='l'>{html.escape(h)}</th>" if i < left else f"<th>{html.escape(h)}</th>"
                   for i, h in enumerate(headers))
    body = []
    for row in rows:
        cells = "".join(f"<td class='l'>{_fmt(v)}</td>" if i < left else
                        f"<td>{_fmt(v, fmts[i] if fmts and fmts[i] is not None else 2)}</td>"
                        for i, v in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _noref_tables(r: dict[str, Any], chart: str | None) -> list[str]:
    """No-reference results: the measures before and after restoration, per recognised degradation."""
    from .noref import MEASURES

    heads = []
    for m in MEASURES:
        arrow = "↑" if m.higher_is_better else "↓"
        heads += [f"input {m.label} {arrow}", f"{m.label} {arrow}"]

    def cells(v: dict[str, Any]) -> list[str]:
        return [m.format(v.get(k)) for m in MEASURES for k in (f"input_{m.name}", m.name)]

    def row(name: str, v: dict[str, Any]) -> list[Any]:
        return [name, v.get("n")] + cells(v)

    crop = r.get("noref_crop")
    parts = ["<h2>No-reference quality per recognised degradation</h2>",
             "<p class='small'>photos without ground truth: NIQE (BasicSR, lower is better), noise σ in 8-bit "
             "levels (Immerkær), sharpness = variance of the Laplacian of Y; measured on the central "
             + (f"{int(crop)}×{int(crop)} pixels" if crop else "whole image") + " of each image</p>"]
    rows = [row(k, v) for k, v in r.get("per_degradation", {}).items()]
    if r.get("overall"):
        rows.append(row("all", r["overall"]))
    parts.append(_table(["recognised degradation", "images"] + heads, rows))
    if chart:
        parts.append(f"<p><img src='{html.escape(chart)}' alt='NIQE per recognised degradation'></p>")
    parts.append("<h2>Per folder</h2>")
    parts.append(_table(["folder", "images"] + heads, [row(s["name"], s) for s in r.get("sets", [])]))
    parts.append("<h2>Per image</h2>")
    imgs = [[Path(i.get("path", "")).name, i.get("predicted", "–")] + cells(i) for i in r.get("images", [])]
    parts.append(_table(["image", "recognised"] + heads, imgs, left=2))
    return parts


def _noref_crops(crops: list[dict[str, Any]]) -> str:
    from .noref import BY_NAME

    if not crops:
        return ""
    niqe = BY_NAME["niqe"]
    parts = ["<h2>Before / restored (central crops, with the NIQE of each image)</h2><table class='crops noref'>"]
    for c in crops:
        cells = [f"<td><img src='{html.escape(c[key])}' alt='{label}'><br>{label}: NIQE "
                 f"{niqe.format(c.get(value))}</td>"
                 for key, label, value in (("lq", "before", "input_niqe"), ("restored", "restored", "niqe"))]
        name = html.escape(f"{c.get('set')}: {Path(c.get('path', '')).name}")
        parts.append(f"<tr><td class='l'>{name}</td>{''.join(cells)}</tr>")
    parts.append("</table>")
    return "".join(parts)


def write_html(path: str | Path, results: dict[str, Any], chart: str | None = "summary.png") -> Path:
    """The HTML report of :func:`vlir.core.evaluate.evaluate`'s results (links relative to ``path``)."""
    r = results
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>vlir evaluation</title>"
             f"<style>{_CSS}</style></head><body>"]
    parts.append(f"<h1>vlir evaluation: {html.escape(str(r.get('pipeline', '')))}</h1>")
    meta = [["pipeline", r.get("pipeline")], ["device", r.get("device")], ["seed", r.get("seed")],
            ["crop border", r.get("crop_border")], ["tile", r.get("tile")],
            ["self-ensemble", r.get("ensemble", False)], ["images", r.get("speed", {}).get("images")],
            ["images / s", r.get("speed", {}).get("images_per_second")], ["vlir", r.get("vlir")]]
    parts.append("<table class='meta'>" + "".join(f"<tr><th class='l'>{html.escape(k)}</th><td>{_fmt(v, 3)}</td></tr>"
                                                  for k, v in meta) + "</table>")
    if not r.get("reference", True):  # photos without ground truth
        parts += _noref_tables(r, chart) + [_noref_crops(r.get("crops") or []), "</body></html>"]
        atomic_write_text(Path(path), "\n".join(parts))
        return Path(path)
    head = metrics.get(r.get("headline", "psnr"))  # its gain (restored - input) gets a column
    table = metrics.TABLE
    headers = ["degradation", "images"] + [h for m in table for h in (f"input {m.label}", m.label)]
    headers.append(f"{head.label} gain")
    fmts: list[int | str | None] = [None, 0] + [m.fmt for m in table for _ in range(2)] + [head.fmt]

    def row(name: str, v: dict[str, Any]) -> list[Any]:
        gain = None  # positive: restored better than the input
        if v.get(head.name) is not None and v.get(f"input_{head.name}") is not None:
            gain = (v[head.name] - v[f"input_{head.name}"]) * (1 if head.higher_is_better else -1)
        return [name, v.get("n")] + [x for m in table for x in (v.get(f"input_{m.name}"), v.get(m.name))] + [gain]

    parts.append("<h2>Per degradation</h2>")
    rows = [row(k, v) for k, v in r.get("per_degradation", {}).items()]
    if r.get("overall"):
        rows.append(row("all", r["overall"]))
    parts.append(_table(headers, rows, fmts=fmts))
    if chart:
        parts.append(f"<p><img src='{html.escape(chart)}' alt='{html.escape(head.label)} per degradation'></p>")
    parts.append("<h2>Per folder and degradation</h2>")
    parts.append(_table(["set"] + headers[1:], [row(s["name"], s) for s in r.get("sets", [])], fmts=fmts))

    cls = r.get("classification")
    if cls:
        parts.append(f"<h2>Degradation classification ({html.escape(str(cls.get('perceiver')))})</h2>")
        parts.append(f"<p>accuracy {_fmt(cls.get('accuracy'), 4)} over {cls.get('n', 0)} images"
                     + (f"; labels with no matching class: {html.escape(', '.join(cls['unmapped']))}"
                        if cls.get("unmapped") else "") + "</p>")
        names = cls["classes"]
        rows = [[label] + list(counts) for label, counts in zip(cls["labels"], cls["matrix"])]
        parts.append("<p class='small'>rows: true degradation, columns: predicted class</p>")
        parts.append(_table(["true \\ predicted"] + names, rows))

    crops = r.get("crops") or []
    if crops:
        parts.append("<h2>Examples (before / restored / ground truth)</h2><table class='crops'>")
        for c in crops:
            cells = []
            for key, label in (("lq", "before"), ("restored", "restored"), ("gt", "ground truth")):
                cap = label
                if key == "lq":
                    cap += f" {_fmt(c.get('input_psnr'))} dB"
                elif key == "restored":
                    cap += f" {_fmt(c.get('psnr'))} dB"
                cells.append(f"<td><img src='{html.escape(c[key])}' alt='{label}'><br>{cap}</td>")
            name = html.escape(f"{c.get('set')}: {Path(c.get('path', '')).name}")
            parts.append(f"<tr><td class='l'>{name}</td>{''.join(cells)}</tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    path = Path(path)
    atomic_write_text(path, "\n".join(parts))
    return path
