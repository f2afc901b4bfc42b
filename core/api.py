"""The Python API: ``vlir.load`` and the image types ``Pipeline.restore`` accepts.

``load(name_or_path)`` opens ``"default"`` (the built-in model), a pipeline folder, a spec file
or a Hugging Face repository id (``org/name``, resolved through ``huggingface_hub``'s cache, so
``HF_HUB_OFFLINE=1`` works once the files are there), in eval mode with gradients off.

``to_batch`` turns an image into the float ``B x 3 x H x W`` batch in [0, 1] a pipeline computes
on (its device and dtype) and returns the function that turns a restored batch back into the
caller's type. Accepted: PIL images (RGB, L, RGBA with the alpha passed through, I;16), numpy
arrays ``H x W x 3`` / ``H x W x 1`` / ``H x W`` (uint8, uint16 or float in [0, 1]) and torch
tensors ``[B,] C x H x W`` / ``H x W`` (C = 1 or 3; uint8, uint16 or float in [0, 1]). Grey
images run as three equal channels and come back grey (the mean of the restored channels).
Float values outside [0, 1] (beyond a rounding tolerance) are an error, never clamped silently.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch

if TYPE_CHECKING:  # pragma: no cover
    from .pipeline import Pipeline

TOLERANCE = 1e-3  # float inputs may stray this far outside [0, 1] (resampling, rounding); clamped
_MAX = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}
_TORCH_MAX = {torch.uint8: 255.0, torch.uint16: 65535.0}
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


# -- loading ---------------------------------------------------------------------------------------
def load(name_or_path: str | os.PathLike = "default", device: str | torch.device | None = None,
         dtype: torch.dtype | str | None = None, *, revision: str | None = None,
         local_files_only: bool | None = None) -> "Pipeline":
    """A pipeline ready for inference (eval mode, no gradients) on ``device`` (default CPU).

    ``name_or_path``: ``"default"``, a saved pipeline folder, a spec file, or a Hugging Face
    repository id holding a pipeline folder (``spec.yaml`` + ``*.safetensors``); ``revision``
    picks a branch, tag or commit. ``local_files_only`` (default: ``HF_HUB_OFFLINE``) reads the
    Hugging Face cache only.

    ``dtype``: a precision name, ``"auto"``, ``"fp32"``, ``"bf16"`` or ``"fp16"``, is the precision
    ``pipe.restore`` computes in (autocast with float32 weights, by the rule of
    :mod:`vlir.core.precision`: ``auto`` = bf16 + channels-last on a CPU with bf16 instructions or
    on CUDA, for components declared bf16-safe); a torch dtype (``torch.bfloat16``) or its name
    (``"bfloat16"``) casts the weights instead (half the memory, less accurate than autocast).
    """
    from .default import default_dir
    from .pipeline import Pipeline

    name = str(name_or_path)
    path = Path(name).expanduser()
    if name == "default":
        pipe = Pipeline.load(default_dir())
    elif path.is_dir():
        pipe = Pipeline.load(path)
    elif path.is_file():
        pipe = Pipeline.from_spec(path, build_losses=False)
    elif _REPO_ID.match(name):  # org/name that is no local path
        pipe = Pipeline.load(hub_folder(name, revision=revision, local_files_only=local_files_only))
    else:
        raise FileNotFoundError(f"vlir.load({name!r}): not 'default', a pipeline folder, a spec file or a "
                                "Hugging Face repository id (org/name)")
    from .precision import PRECISIONS, autocast_dtype

    device = device or "cpu"
    if isinstance(dtype, str) and dtype in PRECISIONS:
        autocast_dtype(dtype, device, option="vlir.load(dtype=...)")  # checked: fp16 needs CUDA
        pipe.precision, dtype = dtype, None
    elif isinstance(dtype, str):
        cast = getattr(torch, dtype, None)
        if not isinstance(cast, torch.dtype) or not cast.is_floating_point:
            raise ValueError(f"vlir.load(dtype={dtype!r}): expected one of {', '.join(PRECISIONS)} or a floating "
                             "torch dtype name such as 'bfloat16'")
        dtype = cast
    pipe = pipe.to(device=device, dtype=dtype) if dtype is not None else pipe.to(device)
    return pipe.eval().requires_grad_(False)


def hub_folder(repo_id: str, revision: str | None = None, local_files_only: bool | None = None) -> Path:
    """The local snapshot folder of a Hugging Face repository (downloaded into HF's cache unless
    offline); checked to hold a vlir pipeline."""
    try:
        import huggingface_hub
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError as e:
        raise ImportError(f"vlir.load({repo_id!r}): loading from the Hugging Face Hub needs huggingface_hub "
                          "(pip install huggingface_hub)") from e
    if local_files_only is None:
        local_files_only = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    try:
        folder = huggingface_hub.snapshot_download(repo_id, revision=revision, local_files_only=local_files_only,
                                                   allow_patterns=["spec.yaml", "*.safetensors", "*.md"])
    except LocalEntryNotFoundError as e:
        raise FileNotFoundError(
            f"vlir.load({repo_id!r}): not in the Hugging Face cache ({huggingface_hub.constants.HF_HUB_CACHE}) "
            "and downloads are off (HF_HUB_OFFLINE / local_files_only)") from e
    folder = Path(folder)
    if not (folder / "spec.yaml").is_file():
        raise FileNotFoundError(f"vlir.load({repo_id!r}): the repository snapshot {folder} is not a vlir pipeline "
                                "(no spec.yaml)")
    return folder


# -- image types -----------------------------------------------------------------------------------
def pipeline_dtype(pipe: torch.nn.Module) -> torch.dtype:
    """The floating dtype of a module's parameters (float32 when it has none)."""
    for p in pipe.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def is_batch(x: Any, device: torch.device, dtype: torch.dtype) -> bool:
    """Whether ``x`` already is a float ``B x 3 x H x W`` batch on ``device`` in ``dtype``; checks
    its values (in [0, 1]) when it is."""
    if not (isinstance(x, torch.Tensor) and x.dim() == 4 and x.shape[1] == 3 and x.dtype == dtype
            and x.device == device):
        return False
    _check_range(x, "tensor")
    return True


def _check_range(x: torch.Tensor, what: str) -> None:
    lo, hi = (float(v) for v in torch.aminmax(x.detach().float()))
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(f"pipe.restore: the {what} holds NaN or infinite values")
    if lo < -TOLERANCE or hi > 1 + TOLERANCE:
        hint = " (8-bit values? divide by 255 or pass uint8)" if hi > 1.5 else ""
        raise ValueError(f"pipe.restore: float {what} values must lie in [0, 1], got {lo:.4g}..{hi:.4g}{hint}")


def _from_unit(x: torch.Tensor, kind: torch.dtype | np.dtype) -> torch.Tensor:
    """[0, 1] float -> integer samples of ``kind`` (rounded) or a float dtype."""
    top = _TORCH_MAX.get(kind) if isinstance(kind, torch.dtype) else _MAX.get(kind)
    if top is None:
        return x
    return (x.float() * top).round_()


def to_batch(x: Any, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, Callable[[torch.Tensor], Any]]:
    """``(batch, back)``: the image as a float batch in [0, 1] on ``device`` in ``dtype``, and the
    function turning a restored batch (same size) back into the input's type, layout and dtype."""
    pil_mode = alpha = None
    if _is_pil(x):
        from PIL import Image

        pil_mode = x.mode
        if pil_mode == "RGBA":
            alpha = x.getchannel("A")
            x = x.convert("RGB")
        elif pil_mode in ("I;16", "I;16L", "I;16B", "I;16N"):
            x = x.convert("I")  # 32-bit int view of the 16-bit samples
        elif pil_mode not in ("RGB", "L"):
            x = x.convert("RGB")
        arr = np.asarray(x)
        if arr.dtype == np.int32:
            arr = arr.astype(np.uint16)
        t, back_arr = _array_batch(arr, "PIL image")

        def back(y: torch.Tensor) -> Any:
            out = back_arr(y)
            img = Image.fromarray(out, mode=None) if out.dtype != np.uint16 else Image.fromarray(out, "I;16")
            if alpha is not None:
                img.putalpha(alpha)
            return img
        return t.to(device, dtype), back
    if isinstance(x, np.ndarray):
        t, back = _array_batch(x, "numpy array")
        return t.to(device, dtype), back
    if isinstance(x, torch.Tensor):
        return _tensor_batch(x, device, dtype)
    raise TypeError(f"pipe.restore: expected a PIL image, a numpy array, a torch tensor or a list of them, "
                    f"got {type(x).__name__}")


def _is_pil(x: Any) -> bool:
    mod = type(x).__module__
    return mod.startswith("PIL.") and hasattr(x, "mode") and hasattr(x, "getchannel")


def _array_batch(arr: np.ndarray, what: str) -> tuple[torch.Tensor, Callable[[torch.Tensor], np.ndarray]]:
    shape, kind = arr.shape, arr.dtype
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3):
        raise ValueError(f"pipe.restore: a {what} must be H x W x 3, H x W x 1 or H x W (grey), got shape {shape}")
    if kind in _MAX:
        t = torch.from_numpy(arr.astype(np.float32) / _MAX[kind])
    elif np.issubdtype(kind, np.floating):
        t = torch.from_numpy(np.array(arr, dtype=np.float32))  # a copy: inputs may be read-only
        _check_range(t, what)
    else:
        raise ValueError(f"pipe.restore: a {what} of {kind} samples is not supported; use uint8, uint16 or float "
                         "in [0, 1]")
    t = t.permute(2, 0, 1)[None].clamp(0, 1)
    grey = t.shape[1] == 1
    t = t.expand(-1, 3, -1, -1) if grey else t

    def back(y: torch.Tensor) -> np.ndarray:
        y = y.float().mean(1, keepdim=True) if grey else y.float()
        out = _from_unit(y[0].permute(1, 2, 0).cpu(), kind).numpy().astype(kind)
        return out.reshape(shape)
    return t, back


def _tensor_batch(x: torch.Tensor, device: torch.device, dtype: torch.dtype
                  ) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    shape, kind, where = x.shape, x.dtype, x.device
    t = x.detach()
    if t.dim() == 2:
        t = t[None]
    if t.dim() == 3:
        t = t[None]
    if t.dim() != 4 or t.shape[1] not in (1, 3):
        raise ValueError(f"pipe.restore: a tensor must be [B,] 3 x H x W, [B,] 1 x H x W or H x W, "
                         f"got shape {tuple(shape)}")
    if kind in _TORCH_MAX:
        t = t.to(torch.int32 if kind == torch.uint16 else kind).float() / _TORCH_MAX[kind]
    elif t.is_floating_point():
        _check_range(t, "tensor")
        t = t.clamp(0, 1)
    else:
        raise ValueError(f"pipe.restore: a tensor of {kind} samples is not supported; use uint8, uint16 or a "
                         "float dtype with values in [0, 1]")
    grey = t.shape[1] == 1
    t = t.expand(-1, 3, -1, -1) if grey else t

    def back(y: torch.Tensor) -> torch.Tensor:
        y = y.mean(1, keepdim=True) if grey else y
        y = _from_unit(y, kind).to(where)
        y = y.to(torch.int32).to(kind) if kind == torch.uint16 else y.to(kind)
        return y.reshape(shape)
    return t.to(device, dtype).contiguous(), back


def restore_any(x: Any, device: torch.device, dtype: torch.dtype,
                run: Callable[[torch.Tensor], tuple[torch.Tensor, Any]]) -> tuple[Any, Any]:
    """``run`` (batch -> (restored batch, perceptions)) on any accepted image type; a list or
    tuple runs image by image (sizes may differ) and gives lists of outputs and perceptions."""
    if isinstance(x, (list, tuple)):
        pairs = [restore_any(item, device, dtype, run) for item in x]
        return [o for o, _ in pairs], [p for _, p in pairs]
    batch, back = to_batch(x, device, dtype)
    restored, perceptions = run(batch)
    return back(restored), perceptions


def plain(x: Any) -> Any:
    """Tensors made under ``torch.inference_mode()`` as ordinary tensors (lists too); others as they are."""
    if isinstance(x, (list, tuple)):
        return type(x)(plain(v) for v in x)
    if isinstance(x, torch.Tensor) and x.is_inference():
        return x.clone()
    return x
