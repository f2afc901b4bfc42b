"""The built-in default model: a pipeline folder shipped inside the package.

The folder is ``vlir/core/assets/default/`` (``spec.yaml`` + one safetensors file per
component), written by ``vlir train specs/default-v2.yaml`` (v2, fine-tuned from v1 of
``specs/default.yaml``). ``VLIR_DEFAULT_PIPELINE`` points elsewhere (a pipeline folder) when set.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    from .pipeline import Pipeline

ENV = "VLIR_DEFAULT_PIPELINE"
SPEC = "specs/default-v2.yaml"


class DefaultModelMissing(UserError, FileNotFoundError):
    """The built-in default model is not installed."""


def bundled_dir() -> Path:
    """Where the default model lives inside the package."""
    return Path(__file__).resolve().parent / "assets" / "default"


def default_dir() -> Path:
    """The default pipeline folder (``VLIR_DEFAULT_PIPELINE`` or the bundled one); checked."""
    env = os.environ.get(ENV)
    folder = Path(env).expanduser() if env else bundled_dir()
    spec = folder / "spec.yaml"
    if not spec.is_file():
        where = f"{ENV}={env}" if env else f"the package folder {folder}"
        raise DefaultModelMissing(
            f"the built-in default model is not installed: no spec.yaml in {where}. "
            f"Train it with 'vlir train {SPEC}' (it starts from v1's weights: see its header) and copy "
            "the resulting pipeline folder "
            f"(spec.yaml + *.safetensors) to {bundled_dir()}, set {ENV} to a pipeline folder, "
            "or pass --pipeline DIR / --spec FILE")
    if not any(folder.glob("*.safetensors")):
        raise DefaultModelMissing(f"the built-in default model in {folder} has a spec.yaml but no weights "
                                  "(*.safetensors): the copy is incomplete")
    return folder


def available() -> bool:
    """Whether the default model is installed."""
    try:
        default_dir()
    except DefaultModelMissing:
        return False
    return True


def load_default(device: str | None = None) -> "Pipeline":
    """The default pipeline, loaded in eval mode on ``device`` (default CPU)."""
    from .pipeline import Pipeline

    return Pipeline.load(default_dir(), map_location=device or "cpu").eval()


def open_pipeline(pipeline: str | None = None, spec: str | None = None, device: str | None = None) -> "Pipeline":
    """A pipeline folder, a spec file (random or ``weights:`` init) or the default model; eval mode."""
    from .pipeline import Pipeline

    if pipeline and spec:
        raise ValueError("give either a pipeline folder or a spec file, not both")
    if pipeline:
        path = Path(pipeline).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"pipeline {path}: no such folder or spec file")
        pipe = Pipeline.open(path)
    elif spec:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"spec {path}: no such file")
        pipe = Pipeline.from_spec(path, build_losses=False)
    else:
        return load_default(device)
    return pipe.to(device or "cpu").eval()
