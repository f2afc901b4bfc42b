"""Multi-label degradation heads: is each class present, how severe, and calibrated probabilities.

A multi-label perceiver (``objective: multilabel``; the quality perceiver: ``presence: [words]``) says for each of its class words independently
whether the image shows it (``Perception.presence``, [B, K]) and how strongly
(``Perception.severity``, [B, K] in [0, 1]): an image can be dark and noisy; it is clean when no
class is present. Shared by the CLIP perceivers:

- :class:`PresenceHead`: degradation embedding ``[B, D]`` (and the class text embeddings ``[K, D]``
  where a CLIP perceiver has them) -> raw presence logits and severity. Its ``temperature`` and
  ``offset`` buffers (per class; saved with the weights) calibrate the logits:
  ``presence = sigmoid(logit / temperature + offset)``; identity until :meth:`PresenceHead.calibrate`
  (or :meth:`PresenceHead.fit`, on a perceiver and held-out batches; the trainer calls it through
  ``Perceiver.calibrate`` at the end of the perceiver's stage) fits them.
- :func:`targets`: presence and severity targets of a batch, from its ``parts`` strings
  (:func:`vlir.core.classes.parse_parts`), else one-hot of its class labels with severity 1.
- :func:`losses`: BCE on presence + severity regression on the present classes.
- :func:`class_probs`: presence normalised over the classes, so routing by ``class_probs``
  (the most likely class) still works.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vlir.core.classes import CLEAN, parse_parts


class PresenceHead(nn.Module):
    """Presence logits and severity of ``classes`` classes from a ``dim``-wide embedding.

    An MLP on the embedding gives a logit and a severity per class; with ``text`` (the perceiver
    passes its class text embeddings to :meth:`forward`) the logit also gets a learned multiple of
    the cosine between the embedding and each class's text (CLIP's zero-shot score).
    """

    def __init__(self, dim: int, classes: int, hidden: int | None = None, text: bool = False):
        super().__init__()
        hidden = hidden or dim
        self.mlp = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, 2 * classes))
        self.text_scale = nn.Parameter(torch.tensor(2.3)) if text else None  # log of the cosine's multiple (~10)
        # calibration (PresenceHead.calibrate): logit / temperature + offset, per class
        self.register_buffer("temperature", torch.ones(classes))
        self.register_buffer("offset", torch.zeros(classes))

    def raw(self, emb: torch.Tensor, text: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(uncalibrated presence logits, severity in [0, 1]), both ``[B, K]``."""
        logits, severity = self.mlp(emb).chunk(2, dim=-1)
        if text is not None:
            if self.text_scale is None:
                raise ValueError("PresenceHead: built without text=True, so it takes no class text embeddings")
            logits = logits + self.text_scale.exp() * F.normalize(emb, dim=-1) @ text.to(emb.dtype).t()
        return logits, severity.sigmoid()

    def calibrated(self, logits: torch.Tensor) -> torch.Tensor:
        """Raw logits with the fitted temperature and offset applied."""
        return logits / self.temperature.to(logits.dtype) + self.offset.to(logits.dtype)

    def forward(self, emb: torch.Tensor, text: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(raw logits, calibrated presence probabilities, severity), each ``[B, K]``."""
        logits, severity = self.raw(emb, text)
        return logits, self.calibrated(logits).sigmoid(), severity

    @torch.no_grad()
    def calibrate(self, logits: torch.Tensor, targets: torch.Tensor, iterations: int = 100) -> dict[str, list[float]]:
        """Fit ``temperature`` and ``offset`` per class by LBFGS on the BCE of held-out raw ``logits``
        ``[N, K]`` against 0/1 ``targets`` ``[N, K]``, with a unit normal prior on log(temperature)
        and on the offset (a MAP fit: a few separable images do not drive the temperature to 0; many
        images outweigh it). A class that is never, or always, present in the data keeps the
        identity (its offset would run off). Returns the fitted values."""
        if logits.shape != targets.shape or logits.dim() != 2 or logits.shape[1] != self.temperature.numel():
            raise ValueError(f"PresenceHead.calibrate: logits {tuple(logits.shape)} and targets "
                             f"{tuple(targets.shape)} must both be [N, {self.temperature.numel()}]")
        z, y = logits.detach().double(), targets.detach().double()
        fit = (y.amax(0) > 0) & (y.amin(0) < 1)  # both outcomes seen
        log_t = torch.zeros(z.shape[1], dtype=torch.float64, device=z.device, requires_grad=True)
        shift = torch.zeros_like(log_t, requires_grad=True)
        opt = torch.optim.LBFGS([log_t, shift], lr=1.0, max_iter=iterations, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = F.binary_cross_entropy_with_logits(z / log_t.exp() + shift, y, reduction="none")[:, fit].sum()
            loss = loss + 0.5 * (log_t[fit].pow(2) + shift[fit].pow(2)).sum()
            loss.backward()
            return loss

        if bool(fit.any()):
            with torch.enable_grad():
                opt.step(closure)
        t = torch.where(fit, log_t.detach().exp(), torch.ones_like(log_t))
        b = torch.where(fit, shift.detach(), torch.zeros_like(shift))
        self.temperature.copy_(t.to(self.temperature))
        self.offset.copy_(b.to(self.offset))
        return {"temperature": self.temperature.tolist(), "offset": self.offset.tolist()}

    @torch.no_grad()
    def fit(self, perceiver: nn.Module, batches: Iterable[Mapping[str, Any]]) -> dict[str, list[float]]:
        """:meth:`calibrate` on the raw logits (``extras['presence_logits']``) ``perceiver`` gives for
        held-out ``batches`` (``lq`` and ``parts`` or class labels), in eval mode."""
        was = perceiver.training
        perceiver.eval()
        logits, wanted = [], []
        try:
            for batch in batches:
                lq = batch["lq"]
                logits.append(perceiver(lq).extras["presence_logits"].float())
                wanted.append(perceiver_targets(perceiver, batch, lq.device, f"{perceiver.name} calibration")[0])
        finally:
            perceiver.train(was)
        if not logits:
            raise ValueError(f"{perceiver.name} calibration: no held-out batches")
        return self.calibrate(torch.cat(logits), torch.cat(wanted))


def targets(batch: Mapping[str, Any], words: Sequence[str], labels: torch.Tensor | None = None,
            device: Any = None, who: str = "perceiver") -> tuple[torch.Tensor, torch.Tensor]:
    """Presence (0/1) and severity targets ``[B, K]`` of a batch over the class ``words``.

    From ``batch['parts']`` (one string per image, :func:`vlir.core.classes.parse_parts`) when it
    is there, else one-hot of ``labels`` (the batch's class indices, ``Perceiver.class_labels``)
    with severity 1. A part of severity 0 (it changed the image by less than 40 dB PSNR) is not
    present. A ``clean`` class word is present when nothing else is, with severity 0.
    A word of a parts string that is not in ``words`` is a ValueError naming it.
    """
    words = list(words)
    parts = batch.get("parts")
    if parts is None:
        if labels is None:
            raise KeyError(f"{who}: batch needs 'parts' (class word=severity;...) or class labels")
        presence = F.one_hot(labels.long().view(-1), len(words)).float()
        severity = presence.clone()
    else:
        parsed = [parse_parts(p or "") for p in parts]
        unknown = sorted({w for d in parsed for w in d if w not in words})
        if unknown:
            raise ValueError(f"{who}: degradations {unknown} of the batch's 'parts' are not class words of "
                             f"Params.degradations {words}")
        presence = torch.zeros(len(parsed), len(words))
        severity = torch.zeros(len(parsed), len(words))
        for i, d in enumerate(parsed):
            for w, s in d.items():  # severity 0: the part changed the image by less than 40 dB PSNR
                presence[i, words.index(w)] = float(s > 0)  # an invisible part is not present
                severity[i, words.index(w)] = s
    if CLEAN in words:
        k = words.index(CLEAN)
        others = torch.cat([presence[:, :k], presence[:, k + 1:]], dim=1)
        presence[:, k] = (others.sum(1) == 0).float()
        severity[:, k] = 0.0
    return presence.to(device), severity.to(device)


def perceiver_targets(perceiver: Any, batch: Mapping[str, Any], device: Any = None, who: str | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`targets` of a batch over ``perceiver``'s class names: from its ``parts`` where it has
    them, else from its class labels (``Perceiver.class_labels``)."""
    labels = None if batch.get("parts") is not None else perceiver.class_labels(batch, device)
    return targets(batch, perceiver.class_names, labels, device, who or f"{perceiver.name} objective")


def losses(logits: torch.Tensor, severity: torch.Tensor, presence_t: torch.Tensor, severity_t: torch.Tensor,
           words: Sequence[str]) -> dict[str, torch.Tensor]:
    """``presence``: BCE of the raw logits; ``severity``: squared error on the present classes
    (``clean`` has none); ``accuracy``: the share of (image, class) decisions right at logit 0."""
    present = presence_t.bool()
    if CLEAN in words:
        present[:, list(words).index(CLEAN)] = False
    out = {"presence": F.binary_cross_entropy_with_logits(logits.float(), presence_t.float())}
    sq = (severity.float() - severity_t.float()).pow(2)
    out["severity"] = (sq * present).sum() / present.sum().clamp(min=1)
    out["accuracy"] = ((logits > 0) == (presence_t > 0.5)).float().mean().detach()
    return out


def class_probs(presence: torch.Tensor) -> torch.Tensor:
    """Presence normalised over the classes (rows sum to 1): ``class_probs`` of a multi-label
    perceiver, so that routing by the most likely class picks the most likely present one."""
    return presence / presence.sum(-1, keepdim=True).clamp(min=1e-12)
