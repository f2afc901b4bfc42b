"""JPEG compression (real libjpeg encoding through OpenCV, as BasicSR's ``add_jpg_compression``)."""
from __future__ import annotations

import numpy as np
import torch

from vlir.core.components import Degradation

from ._common import QualityRange, as_float, finish, rand, randint


def jpeg_roundtrip(img: torch.Tensor, quality: int) -> torch.Tensor:
    """Encode one RGB image [3, H, W] in [0, 1] as JPEG at ``quality`` and decode it.

    Same bytes as BasicSR's ``add_jpg_compression`` on the BGR image (values rounded to 8 bit,
    OpenCV's default 4:2:0 chroma subsampling).
    """
    import cv2

    arr = (img.detach().float().clamp(0, 1).cpu().numpy() * 255.0).round().astype(np.uint8)
    bgr = np.ascontiguousarray(arr[::-1].transpose(1, 2, 0))
    ok, enc = cv2.imencode(".jpg", bgr, [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)])
    if not ok:
        raise RuntimeError(f"jpeg: OpenCV could not encode a {tuple(img.shape)} image at quality {quality}")
    dec = cv2.imdecode(enc, cv2.IMREAD_COLOR)
    out = np.ascontiguousarray(dec[..., ::-1].transpose(2, 0, 1)).astype(np.float32) / 255.0
    return torch.from_numpy(out)


def jpeg_some(x: torch.Tensor, quality, probability: float, generator: torch.Generator | None = None
              ) -> torch.Tensor:
    """Each image of the batch ``x`` [B, 3, H, W] JPEG-compressed with ``probability``, at a quality
    drawn from the inclusive range ``quality`` (draws: which images, then their qualities)."""
    n = x.shape[0]
    compress = rand((n,), generator) < probability
    q = randint(quality, n, generator)
    out = x.clone()
    for i in torch.nonzero(compress).flatten().tolist():
        out[i] = jpeg_roundtrip(x[i], int(q[i])).to(x.device)
    return out


class JPEG(Degradation):
    """JPEG compression at an integer ``quality`` drawn per image from an inclusive range."""

    label = "jpeg-compressed"

    class Params(Degradation.Params):
        quality: QualityRange = (10, 50)

    def forward(self, img: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x, dtype = as_float(img, "jpeg")
        q = randint(self.params.quality, x.shape[0], generator)
        out = torch.stack([jpeg_roundtrip(x[i], int(q[i])) for i in range(x.shape[0])]).to(x.device)
        return finish(out, dtype)
