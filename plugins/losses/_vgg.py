"""Frozen VGG16 feature taps (relu1_2, relu2_2, relu3_1, relu3_3) for perceptual losses.

Weights come from a local file only (torchvision's ``vgg16-397923af.pth`` or a safetensors
file with the same ``features.N.*`` keys); nothing is ever downloaded. The frozen weights are
non-persistent buffers: they follow ``.to()`` but stay out of ``state_dict()`` and
``parameters()``, so checkpoints of the loss stay small and no optimiser can touch them.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn

TORCHVISION_FILE = "vgg16-397923af.pth"
# index in torchvision's vgg16().features of each tap's ReLU
TAPS = {"relu1_2": 3, "relu2_2": 8, "relu3_1": 11, "relu3_3": 15}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def hub_weights_path() -> Path:
    """Where torchvision caches ``vgg16-397923af.pth`` (``torch.hub.get_dir()/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_FILE


def _missing_weights_message(owner: str) -> str:
    return (
        f"{owner}: no VGG16 weights found. Put torchvision's '{TORCHVISION_FILE}' "
        f"(https://download.pytorch.org/models/{TORCHVISION_FILE}) at {hub_weights_path()} "
        f"or pass its local path (or a .safetensors file with the same 'features.N.weight' keys) "
        f"as Params 'vgg_weights'. vlir never downloads weights. For tests only, "
        f"'allow_random_vgg: true' uses random VGG weights."
    )


def _features(layers: int) -> nn.Sequential:
    """torchvision's VGG16 ``features[:layers]`` (same indices, so official keys load as is)."""
    from torchvision.models.vgg import cfgs, make_layers

    cfg: list = []
    count = 0
    for v in cfgs["D"]:  # VGG16; build only what is needed (the full model has 138M params)
        cfg.append(v)
        count += 1 if v == "M" else 2
        if count >= layers:
            break
    seq = make_layers(cfg)
    seq = nn.Sequential(*list(seq)[:layers])
    for m in seq:
        if isinstance(m, nn.ReLU):
            m.inplace = False
    return seq


def _select_features(obj, layers: int, source: str) -> dict[str, torch.Tensor]:
    """The ``features.N.*`` tensors (N < layers) of a torchvision VGG16 checkpoint, keyed ``N.*``."""
    from vlir.core.io import CheckpointError, unwrap_state_dict

    sd = unwrap_state_dict(obj)
    out: dict[str, torch.Tensor] = {}
    has_prefix = any(k.startswith("features.") for k in sd)
    for k, v in sd.items():
        if has_prefix:
            if not k.startswith("features."):
                continue  # classifier.* etc.
            k = k[len("features."):]
        idx = k.split(".", 1)[0]
        if idx.isdigit() and int(idx) < layers:
            out[k] = v
    if not out:
        raise CheckpointError(
            f"VGG16 weights {source}: no 'features.N.weight' keys found (expected torchvision's "
            f"{TORCHVISION_FILE} layout); first keys: {list(sd)[:5]}"
        )
    return out


class VGGTaps(nn.Module):
    """Frozen VGG16 features up to relu3_3; ``forward(x in [0,1]) -> list of tap features``.

    ``weights``: local checkpoint path, or None for torchvision's cache; with neither and
    ``allow_random`` True, random weights with a warning; otherwise FileNotFoundError.
    """

    def __init__(self, taps: tuple[str, ...] = tuple(TAPS), weights: str | os.PathLike | None = None,
                 allow_random: bool = False, owner: str = "VGG16 perceptual loss"):
        super().__init__()
        unknown = [t for t in taps if t not in TAPS]
        if unknown:
            raise ValueError(f"{owner}: unknown VGG16 taps {unknown}; known: {list(TAPS)}")
        self.taps = tuple(taps)
        self._idx = [TAPS[t] for t in self.taps]
        layers = max(self._idx) + 1
        self.features = _features(layers)

        path = None
        if weights is not None:
            path = Path(weights).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"{owner}: vgg_weights {path}: no such file. "
                                        + _missing_weights_message(owner))
        elif hub_weights_path().is_file():
            path = hub_weights_path()
        if path is not None:
            from vlir.core.io import load_checkpoint, load_state_dict_checked

            sd = _select_features(load_checkpoint(path), layers, str(path))
            load_state_dict_checked(self.features, sd, source=f"VGG16 weights {path}", strict=True)
            self.source = str(path)
        elif allow_random:
            warnings.warn(
                f"{owner}: using RANDOM VGG16 weights (allow_random_vgg=True); the perceptual loss "
                f"is meaningless for real training. " + _missing_weights_message(owner),
                stacklevel=3,
            )
            self.source = "random"
        else:
            raise FileNotFoundError(_missing_weights_message(owner))

        # frozen: turn parameters into non-persistent buffers (out of state_dict and parameters())
        for m in self.features.modules():
            for name, p in list(m.named_parameters(recurse=False)):
                delattr(m, name)
                m.register_buffer(name, p.detach().clone(), persistent=False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.eval()

    def train(self, mode: bool = True) -> "VGGTaps":
        return super().train(False)  # no dropout / BN here, but stay in eval regardless

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        out: list[torch.Tensor] = []
        want = set(self._idx)
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in want:
                out.append(h)
        return [out[sorted(self._idx).index(i)] for i in self._idx]
