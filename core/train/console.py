"""What training prints: a progress bar on a terminal, plain lines elsewhere, validation summaries.

``mode`` is ``bar`` (tqdm, when the stream is a terminal), ``lines`` (one line per logged step:
logs and ``nohup`` files get no carriage returns) or ``off``. Validation results are printed in
both ``bar`` and ``lines`` modes: PSNR overall, of the inputs, and per degradation.
"""
from __future__ import annotations

import sys
from typing import Any, TextIO

MODES = ("auto", "bar", "lines", "off")


def resolve_mode(progress: bool | str, stream: TextIO) -> str:
    """``True``/``auto``: a bar on a terminal, else lines; ``False``/``off``: nothing."""
    if progress is True:
        progress = "auto"
    elif progress is False or progress is None:
        progress = "off"
    if progress not in MODES:
        raise ValueError(f"progress: expected one of {', '.join(MODES)} (or a bool), got {progress!r}")
    if progress == "auto":
        isatty = getattr(stream, "isatty", None)
        return "bar" if callable(isatty) and isatty() else "lines"
    return progress


def _num(v: float) -> str:
    return f"{v:.4g}"


def format_train(values: dict[str, float], skip: tuple[str, ...] = ()) -> str:
    """``loss 0.0312, l1 0.0312, lr 0.001, 4.1 steps/s`` (the loss first, speed last)."""
    keys = sorted((k for k in values if k not in ("loss", "steps_per_s") + skip), key=lambda k: (k == "lr", k))
    parts = ([f"loss {_num(values['loss'])}"] if "loss" in values else []) + [f"{k} {_num(values[k])}" for k in keys]
    if "steps_per_s" in values:
        parts.append(f"{values['steps_per_s']:.3g} steps/s")
    return ", ".join(parts)


def format_val(values: dict[str, float]) -> str:
    """``PSNR 27.31 dB (input 22.10 dB); noisy 25.90, blurry 28.72`` for restorer stages; other
    stages' values as ``name value``."""
    if "psnr" not in values:
        return ", ".join(f"{k} {_num(v)}" for k, v in sorted(values.items()))
    text = f"PSNR {values['psnr']:.2f} dB"
    if "input_psnr" in values:
        text += f" (input {values['input_psnr']:.2f} dB)"
    per = sorted((k.split("/", 1)[1], v) for k, v in values.items() if k.startswith("psnr/"))
    if per:
        text += "; " + ", ".join(f"{name} {v:.2f}" for name, v in per)
    rest = sorted((k, v) for k, v in values.items() if k not in ("psnr", "input_psnr") and not k.startswith("psnr/"))
    if rest:
        text += "; " + ", ".join(f"{k} {_num(v)}" for k, v in rest)
    return text


class Console:
    """The training console of rank 0 (other ranks get ``mode='off'``)."""

    def __init__(self, progress: bool | str = "auto", stream: TextIO | None = None):
        self.stream = stream if stream is not None else sys.stdout
        self.mode = resolve_mode(progress, self.stream)
        self.bar: Any = None
        self.title = ""

    def start_stage(self, title: str, total: int, initial: int) -> None:
        """A new stage of ``total`` steps, ``initial`` of them already done."""
        self.title = title
        if self.mode == "bar":
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=title, dynamic_ncols=True, mininterval=0.5,
                            file=self.stream)
        elif self.mode == "lines":
            self.line(f"{title}: {total} steps" + (f", resuming after step {initial}" if initial else ""))

    def step(self, logs: dict[str, float]) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in logs.items() if k in ("loss", "lr")}, refresh=False)

    def train(self, step: int, stage_step: int, total: int, values: dict[str, float]) -> None:
        """The logged means of the last steps (``lines`` mode; the bar shows them already)."""
        if self.mode == "lines":
            self.line(f"{self.title} step {stage_step}/{total} (total {step}): {format_train(values)}")

    def validation(self, step: int, values: dict[str, float]) -> None:
        if values:
            self.line(f"validation at step {step}: {format_val(values)}")

    def line(self, text: str) -> None:
        if self.mode == "off":
            return
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def end_stage(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
