"""Shared CLIP helpers for the CLIP-based perceivers (open_clip underneath).

Stable API (used by ``daclip``, ``lora_caption_aligner`` and ``quality_perceiver``):

- ``OPENAI_MEAN``, ``OPENAI_STD``: CLIP normalisation constants.
- ``TINY_CONFIGS`` / ``register_tiny_configs()``: registers the ``vlir-tiny`` open_clip config
  (1.6M params, real BPE tokenizer) for fast tests; idempotent.
- ``model_config(name) -> dict``: the open_clip config of a model name (clear error if unknown).
- ``embed_dim(name) -> int``: the joint embedding width of a model name.
- ``create_clip(model, pretrained=None, device=None, lite=False) -> (clip, tokenizer)``: builds an
  open_clip CLIP; ``pretrained`` is an open_clip tag, a local checkpoint file, or None (random init);
  ``device`` defaults to torch's default device (so ``with torch.device('meta')`` works); ``lite``:
  on the meta device, a plain ViT config is built by ``_clip_lite`` without importing open_clip.
- ``preprocess_cfg(clip) -> (image_size, mean, std)``: the eval preprocessing of a built model.
- ``preprocess(images, image_size, mean, std, resize=True, views=1) -> Tensor``: open_clip's eval
  transform on batched tensors in [0, 1] (resize shorter side, bicubic with antialias; centre crop;
  normalise); ``views``: more crops per image spread over it.
- ``encode_image(clip, images, normalize=False)``: preprocess + ``clip.encode_image``.
- ``tokenize(tokenizer, texts, device=None)`` / ``encode_text(clip, tokenizer, texts, device=None,
  normalize=False)``.
- ``is_checkpoint_path(s)``: whether a ``pretrained`` string is a file rather than a tag;
  ``clip_state_dict(obj)``: the CLIP state dict inside a loaded checkpoint (DA-CLIP's included).
- ``freeze(module)``: sets ``requires_grad = False`` on every parameter and returns the module.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F

from vlir.core.components import BLOCK_GRID

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "vlir-tiny": {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    },
    # the built-in default model's perceiver: CLIP's 224-pixel input (degradations stay visible),
    # a small tower trained from scratch
    "vlir-small": {
        "embed_dim": 64,
        "vision_cfg": {"image_size": 224, "layers": 4, "width": 64, "patch_size": 16, "head_width": 32},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    },
    # the same tower on 8-pixel patches of a 112-pixel view: finer pixel statistics per token
    "vlir-small-p8": {
        "embed_dim": 64,
        "vision_cfg": {"image_size": 112, "layers": 4, "width": 64, "patch_size": 8, "head_width": 32},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    },
}

_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")
_tiny_dir: Path | None = None


def _open_clip():
    """open_clip, imported on first use (it takes seconds: torchvision, torch._dynamo, transformers)."""
    import open_clip

    return open_clip


def register_tiny_configs() -> None:
    """Register the ``TINY_CONFIGS`` with open_clip (once per process; idempotent)."""
    global _tiny_dir
    open_clip = _open_clip()
    if _tiny_dir is not None and all(n in open_clip.list_models() for n in TINY_CONFIGS):
        return
    folder = Path(tempfile.mkdtemp(prefix="vlir-openclip-configs-"))
    for name, cfg in TINY_CONFIGS.items():
        (folder / f"{name}.json").write_text(json.dumps(cfg), encoding="utf-8")
    open_clip.add_model_config(folder)
    _tiny_dir = folder


def model_config(name: str) -> dict[str, Any]:
    """The open_clip config dict of ``name`` (tiny configs registered first)."""
    if name in TINY_CONFIGS:  # vlir's own: no need to import open_clip
        return json.loads(json.dumps(TINY_CONFIGS[name]))
    register_tiny_configs()
    open_clip = _open_clip()
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise ValueError(
            f"CLIP model {name!r} is not an open_clip config; known names include "
            f"{', '.join(sorted(open_clip.list_models())[:12])}, ... (see open_clip.list_models())"
        )
    return cfg


def embed_dim(name: str) -> int:
    """Joint image/text embedding width of the open_clip model ``name``."""
    return int(model_config(name)["embed_dim"])


@contextmanager
def _quiet_open_clip() -> Iterator[None]:
    """Silence open_clip's 'initialized randomly' warning (random init is asked for)."""
    logger = logging.getLogger()
    old = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(old)


def is_checkpoint_path(pretrained: str) -> bool:
    """True when ``pretrained`` names a file (a path or a checkpoint suffix) rather than a tag."""
    return (os.sep in pretrained or "/" in pretrained or pretrained.endswith(_CHECKPOINT_SUFFIXES)
            or Path(pretrained).exists())


def clip_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """The plain CLIP state dict inside a loaded checkpoint object.

    Accepts a flat CLIP state dict, ``{state_dict: ...}`` wrappers, ``module.`` prefixes and
    DA-CLIP checkpoints (their ``clip.*`` keys are taken).
    """
    from vlir.core.io import unwrap_state_dict

    sd = unwrap_state_dict(obj)
    if any(k.startswith("clip.") for k in sd):
        sd = {k[len("clip."):]: v for k, v in sd.items() if k.startswith("clip.")}
    return sd


def create_clip(model: str, pretrained: str | None = None, device: torch.device | str | None = None,
                lite: bool = False) -> tuple[torch.nn.Module, Any]:
    """Build an open_clip CLIP and its tokenizer.

    ``pretrained``: None (random init), a local checkpoint file (read safely with
    ``vlir.core.io.load_checkpoint`` and loaded strictly), or an open_clip tag such as
    ``laion2b_s34b_b79k`` (resolved from open_clip's cache, downloaded if needed).
    ``lite``: the caller loads weights next; on the meta device a plain ViT config is then built
    by :mod:`._clip_lite` (open_clip's layout and arithmetic, without importing open_clip).
    """
    from vlir.core.io import CheckpointError, load_checkpoint, load_state_dict_checked

    cfg = model_config(model)  # clear error on unknown names
    device = torch.device(device) if device is not None else torch.get_default_device()
    if lite and pretrained is None and device.type == "meta":
        from . import _clip_lite

        if _clip_lite.supports(cfg):
            with torch.device(device):
                clip = _clip_lite.build(cfg)
            return clip, _clip_lite.tokenizer(cfg["text_cfg"].get("context_length", 77))
    open_clip = _open_clip()
    register_tiny_configs()
    tag = None
    path = None
    if pretrained:
        if is_checkpoint_path(pretrained):
            path = Path(pretrained).expanduser()
            if not path.is_file():
                raise CheckpointError(f"CLIP checkpoint {path} (pretrained for {model!r}): no such file")
        else:
            tags = open_clip.list_pretrained_tags_by_model(model)
            if pretrained not in tags:
                raise ValueError(
                    f"pretrained={pretrained!r} is neither a file nor an open_clip tag of {model!r} "
                    f"(tags: {', '.join(tags) or 'none'})"
                )
            tag = pretrained
    if tag is not None:
        try:
            clip = open_clip.create_model(model, pretrained=tag, device=device)
        except Exception as e:  # noqa: BLE001
            raise RuntimeError(
                f"could not load open_clip weights {model!r}/{tag!r}: not in the local cache and the "
                f"download failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). "
                "Download them once with network access (they are cached under ~/.cache/huggingface), "
                "or pass a local checkpoint file as pretrained."
            ) from e
    else:
        with _quiet_open_clip():
            clip = open_clip.create_model(model, pretrained=None, device=device)
        if path is not None:
            obj = load_checkpoint(path)
            try:
                sd = clip_state_dict(obj)
            except CheckpointError as e:
                raise CheckpointError(f"CLIP checkpoint {path}: {e}") from e
            load_state_dict_checked(clip, sd, source=f"CLIP checkpoint {path}")
    tokenizer = open_clip.get_tokenizer(model)
    if getattr(tokenizer, "context_length", None) != cfg["text_cfg"].get("context_length", 77):
        tokenizer = open_clip.get_tokenizer(model, context_length=cfg["text_cfg"].get("context_length", 77))
    return clip, tokenizer


def preprocess_cfg(clip: torch.nn.Module) -> tuple[int, tuple[float, ...], tuple[float, ...]]:
    """(image_size, mean, std) of a built open_clip model's eval preprocessing."""
    visual = clip.visual if hasattr(clip, "visual") else clip
    cfg = getattr(visual, "preprocess_cfg", None) or {}
    size = cfg.get("size", getattr(visual, "image_size", 224))
    if isinstance(size, (tuple, list)):
        if size[0] != size[1]:
            raise ValueError(f"CLIP preprocessing: non-square image size {tuple(size)} is not supported")
        size = size[0]
    mean = tuple(cfg.get("mean", OPENAI_MEAN))
    std = tuple(cfg.get("std", OPENAI_STD))
    return int(size), mean, std


def preprocess(images: torch.Tensor, image_size: int,
               mean: Sequence[float] = OPENAI_MEAN, std: Sequence[float] = OPENAI_STD,
               resize: bool = True, views: int = 1) -> torch.Tensor:
    """open_clip's eval transform on a batch ``[B, 3, H, W]`` in [0, 1], on its device.

    Resize the shorter side to ``image_size`` (bicubic, antialias, like torchvision's ``Resize``
    on tensors), centre-crop to ``image_size`` squared, clamp to [0, 1] (as the 8-bit PIL
    pipeline does) and normalise. ``resize=False`` keeps the native resolution where the image
    is large enough (only smaller images are resized up): pixel-level degradations such as noise
    and JPEG blocks stay as they are, which helps small perceivers trained from scratch.

    ``views`` > 1: besides the centre crop, a ``views`` x ``views`` grid of crops spread evenly
    from corner to corner (offsets rounded down to multiples of ``BLOCK_GRID``, so JPEG's blocks
    and the patch grid keep their alignment; repeated positions are dropped). Returns
    ``[B * V, 3, S, S]``, the ``V`` views of image ``b`` at rows ``b * V`` to ``b * V + V - 1``.
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"CLIP preprocess expects images [B, 3, H, W], got {tuple(images.shape)}")
    x = images.float()
    h, w = x.shape[-2:]
    short, long = (h, w) if h <= w else (w, h)
    if short != image_size and (resize or short < image_size):
        new_short, new_long = image_size, int(image_size * long / short)
        size = (new_short, new_long) if h <= w else (new_long, new_short)
        x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)
        x = x.clamp(0.0, 1.0)
        h, w = size
    corners = [(int(round((h - image_size) / 2.0)), int(round((w - image_size) / 2.0)))]
    if views > 1:
        def spread(n: int) -> list[int]:
            return [int(v) // BLOCK_GRID * BLOCK_GRID for v in torch.linspace(0, n - image_size, views)]

        corners += [(t, l) for t in spread(h) for l in spread(w)]
        corners = list(dict.fromkeys(corners))
    if len(corners) > 1 or h != image_size or w != image_size:
        x = torch.stack([x[..., t:t + image_size, l:l + image_size] for t, l in corners], dim=1).flatten(0, 1)
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


def encode_image(clip: torch.nn.Module, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
    """CLIP image embeddings ``[B, D]`` of images in [0, 1] (preprocessed here)."""
    size, mean, std = preprocess_cfg(clip)
    return clip.encode_image(preprocess(images, size, mean, std), normalize=normalize)


def tokenize(tokenizer: Any, texts: Sequence[str] | str,
             device: torch.device | str | None = None) -> torch.Tensor:
    """Token ids ``[N, context_length]`` for a list of strings."""
    if isinstance(texts, str):
        texts = [texts]
    ids = tokenizer(list(texts))
    return ids.to(device) if device is not None else ids


def encode_text(clip: torch.nn.Module, tokenizer: Any, texts: Sequence[str] | str,
                device: torch.device | str | None = None, normalize: bool = False) -> torch.Tensor:
    """CLIP text embeddings ``[N, D]``; ``device`` defaults to the model's."""
    if device is None:
        device = next(clip.parameters()).device
    return clip.encode_text(tokenize(tokenizer, texts, device), normalize=normalize)


def freeze(module: torch.nn.Module) -> torch.nn.Module:
    """Turn off gradients for every parameter of ``module``; returns it."""
    for p in module.parameters():
        p.requires_grad_(False)
    return module
