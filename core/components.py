"""Base classes of vlir components.

A component is a ``torch.nn.Module`` whose constructor takes one argument, its ``Params``
(a pydantic v2 model with ``extra="forbid"``). ``Params`` is the component's only schema:
defaults are the official configuration, presets (listed in ``registry.yaml`` or on the
class as ``presets``) are plain dicts of overrides.

A third-party component needs nothing but a subclass::

    from vlir.core import Backbone

    class MyNet(Backbone):
        class Params(Backbone.Params):
            width: int = 16

        def __init__(self, params=None, **overrides):
            super().__init__(params, **overrides)
            self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)

        def forward(self, lq, cond=None):
            return lq + self.conv(lq)
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Mapping

import torch
from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:  # pragma: no cover
    from .conditioning import Conditioning, Perception

from .kinds import KINDS  # noqa: F401  (one home: vlir.core.kinds)

API_VERSION = 1


class Params(BaseModel):
    """Base of every component's ``Params``: unknown fields are errors."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


# Bounded sizes for Params fields: a typo (width -5, 1e8) is a spec error, not an allocation.
Width = Annotated[int, Field(ge=1, le=4096, description="channels (1..4096)")]
Dim = Annotated[int, Field(ge=1, le=65536, description="a feature dimension (1..65536)")]
Blocks = Annotated[int, Field(ge=0, le=256, description="blocks of a level (0..256)")]
Levels = Annotated[list[Blocks], Field(min_length=1, max_length=16)]


class Component(torch.nn.Module):
    """Common base: ``name``, ``kind``, ``api_version``, ``Params`` and ``presets``."""

    kind: ClassVar[str] = ""
    name: ClassVar[str] = ""  # set by the registry when the class is loaded
    api_version: ClassVar[int] = API_VERSION
    presets: ClassVar[dict[str, dict[str, Any]]] = {}  # third-party presets; built-ins use registry.yaml
    # whether bf16/fp16 autocast keeps this component's outputs (vlir.core.precision: ``--precision auto``
    # uses reduced precision only for components that say so; an explicit bf16 applies to all)
    bf16_safe: ClassVar[bool] = False

    class Params(Params):
        pass

    def __init__(self, params: "Params | Mapping[str, Any] | None" = None, **overrides: Any):
        super().__init__()
        if params is None:
            params = self.Params(**overrides)
        elif isinstance(params, Mapping):
            params = self.Params(**{**params, **overrides})
        elif overrides:
            params = params.model_copy(update=overrides)
            params = self.Params.model_validate(params.model_dump())
        if not isinstance(params, self.Params):
            raise TypeError(
                f"{type(self).__name__} expects {type(self).__name__}.Params, got {type(params).__name__}"
            )
        self.params = params

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.params.model_dump().items())

    # -- checkpoints -----------------------------------------------------------------------
    def convert_checkpoint(self, obj: Any) -> dict[str, torch.Tensor]:
        """Turn a loaded checkpoint object (official format) into this module's state dict.

        The default unwraps ``params_ema`` / ``params`` / ``state_dict`` / ``model`` and strips
        ``module.`` prefixes. Components with other official layouts override this.
        """
        from .io import unwrap_state_dict

        return unwrap_state_dict(obj)

    def load_weights(self, path: str, strict: bool = True) -> None:
        """Load a checkpoint file (safetensors, or a torch file read with ``weights_only``)."""
        from .io import load_checkpoint, load_state_dict_checked

        obj = load_checkpoint(path)
        load_state_dict_checked(self, self.convert_checkpoint(obj), source=str(path), strict=strict)


class Backbone(Component):
    """A restoration network: ``forward(lq, cond=None) -> restored`` on images in [0, 1].

    ``cond`` is a :class:`vlir.core.Conditioning`; a backbone uses what it can and ignores
    the rest, so unconditioned use always works. ``diffusion`` backbones are called by a
    process (e.g. IR-SDE) as ``forward(lq, cond, x=x_t, t=t)`` and return the predicted noise;
    ``x`` defaults to ``lq`` and ``t`` to zeros.
    """

    kind: ClassVar[str] = "backbone"
    diffusion: ClassVar[bool] = False

    class Params(Params):
        pass

    def forward(self, lq: torch.Tensor, cond: "Conditioning | None" = None, **kw: Any) -> torch.Tensor:
        raise NotImplementedError

    # image sides are padded internally to a multiple of this (informative; used by tiling)
    multiple_of: ClassVar[int] = 1
    # tiled inference runs the tiles this many extra times so that the backbone's reductions over
    # the image (vlir.core.tiling.global_sum) see the whole image, not one tile
    tile_passes: ClassVar[int] = 0

    @property
    def pad_mode(self) -> str:
        """How the backbone pads a side to ``multiple_of`` (tiling pads the whole image alike)."""
        return getattr(self.params, "pad_mode", "reflect")

    @classmethod
    def condition_params(cls, vector_dim: int | None, token_dim: int | None) -> dict[str, Any]:
        """Params overrides that make this backbone read a perceiver of the given output dims.

        Called by the built-in ``vlir_adjust_spec`` hook before the backbone is built, with the
        dims of the perceiver that feeds it; fields the spec sets explicitly win.
        Default: nothing to change (the backbone ignores conditioning).
        """
        return {}

    @classmethod
    def class_params(cls, class_words: list[str]) -> dict[str, Any]:
        """Params overrides that tell a backbone routed by class probabilities (``condition:
        {vector: probs}``) the class words of those probabilities, in order (``experts`` names its
        classes by them). Called like :meth:`condition_params`; default: nothing to change."""
        return {}

    def example_inputs(self, size: tuple[int, int] = (64, 64), batch: int = 1) -> dict[str, Any]:
        return {"lq": torch.rand(batch, 3, *size)}


class Perceiver(Component):
    """A vision(-language) model: ``forward(lq) -> Perception`` on images in [0, 1]."""

    kind: ClassVar[str] = "perceiver"

    class Params(Params):
        pass

    def forward(self, lq: torch.Tensor) -> "Perception":
        raise NotImplementedError

    @staticmethod
    def check_class_words(words: list[str]) -> list[str]:
        """Validator of a ``degradations`` param: at least one class word, none twice."""
        if not words:
            raise ValueError("degradations: give at least one degradation word")
        if len(set(words)) != len(words):
            raise ValueError(f"degradations: duplicate words in {words}")
        return words

    @classmethod
    def output_dims(cls, params: Params) -> tuple[int | None, int | None]:
        """(degradation vector dim, content token dim) this perceiver produces, from params alone."""
        return None, None

    @property
    def multilabel(self) -> bool:
        """Whether ``forward`` fills ``Perception.presence`` / ``severity`` (each class present or
        not, independently): a perceiver with a ``presence_head`` (``plugins/perceivers/_presence``)."""
        return getattr(self, "presence_head", None) is not None

    def calibrate(self, batches: Any) -> dict[str, list[float]] | None:
        """Fit the presence calibration (per-class temperature and offset, saved with the weights) on
        held-out ``batches`` (dicts with ``lq`` and ``parts`` or class labels); returns the fitted
        values, or None for a perceiver that is not multi-label."""
        if not self.multilabel:
            return None
        return self.presence_head.fit(self, batches)

    @property
    def class_names(self) -> list[str]:
        """Names of the degradation classes of ``class_probs`` (empty if it has none)."""
        return self.class_words(self.params)

    def class_labels(self, batch: Mapping[str, Any], device: Any = None, required: bool = True
                     ) -> "torch.Tensor | None":
        """Class indices of a batch's degradations: from ``degradation_name`` (words of
        :attr:`class_names`) or else ``degradation`` (indices). None when neither is given and
        not ``required``; clear errors for unknown words and out-of-range indices."""
        words = self.class_names
        who = f"{self.name or type(self).__name__} objective"
        names = batch.get("degradation_name")
        if names is not None:
            unknown = sorted({n for n in names if n not in words})
            if unknown:
                raise ValueError(f"{who}: degradation names {unknown} are not in Params.degradations {words}")
            return torch.tensor([words.index(n) for n in names], device=device)
        idx = batch.get("degradation")
        if idx is None:
            if required:
                raise KeyError(f"{who}: batch needs 'degradation' (class index) or 'degradation_name'")
            return None
        idx = torch.as_tensor(idx, device=device).long().view(-1)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= len(words)):
            raise ValueError(f"{who}: degradation index out of range 0..{len(words) - 1}: {idx.tolist()}")
        return idx

    @classmethod
    def class_words(cls, params: Params) -> list[str]:
        """Class words of ``class_probs``, in order, from params alone (empty if it has none)."""
        from .classes import CLASS_WORDS_FIELD

        return list(getattr(params, CLASS_WORDS_FIELD, None) or [])

    @classmethod
    def class_count(cls, params: Params) -> int | None:
        """Number of degradation classes (length of ``class_probs``), from params alone."""
        return len(cls.class_words(params)) or None

    def example_inputs(self, size: tuple[int, int] = (64, 64), batch: int = 1) -> dict[str, Any]:
        return {"lq": torch.rand(batch, 3, *size)}

    def objective(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Losses for training this perceiver on ``batch``; must contain a ``loss`` entry."""
        raise NotImplementedError(f"perceiver {self.name!r} has no training objective")


class Loss(Component):
    """A training loss. ``inputs`` names what it needs from the trainer's batch.

    Known inputs: ``restored``, ``gt``, ``lq``, ``proxies`` (list of tensors), ``perception``
    (dict role -> Perception), ``degradation`` (class index tensor), ``pipeline``.
    """

    kind: ClassVar[str] = "loss"
    inputs: ClassVar[tuple[str, ...]] = ("restored", "gt")
    optional_inputs: ClassVar[tuple[str, ...]] = ()  # inputs that may be None (e.g. proxies)
    # the perceivers a loss can read when its Params ``perceiver`` (a role) is None, by registry name
    # or class name: a spec needs one of them (vlir.core.validate.check_wiring) or a role; at run time
    # the loss reads the first of them. Empty: the loss reads no perceiver by type.
    perceiver_kinds: ClassVar[tuple[str, ...]] = ()

    class Params(Params):
        pass

    def forward(self, **inputs: Any) -> torch.Tensor:
        raise NotImplementedError

    def check_pair(self, restored: torch.Tensor, gt: torch.Tensor) -> None:
        """Raise a ValueError naming this loss when ``restored`` and ``gt`` differ in shape."""
        if restored.shape != gt.shape:
            raise ValueError(f"{self.name or type(self).__name__}: restored {tuple(restored.shape)} and "
                             f"gt {tuple(gt.shape)} differ in shape")

    def example_inputs(self, size: tuple[int, int] = (64, 64), batch: int = 2) -> dict[str, Any]:
        g = torch.Generator().manual_seed(0)
        return {k: torch.rand(batch, 3, *size, generator=g) for k in self.inputs if k in ("restored", "gt", "lq")}


class Process(Component):
    """A sampling process around a diffusion backbone (e.g. IR-SDE)."""

    kind: ClassVar[str] = "process"

    class Params(Params):
        pass

    def sample(self, backbone: Backbone, lq: torch.Tensor, cond: "Conditioning | None" = None,
               steps: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError

    def training_loss(self, backbone: Backbone, lq: torch.Tensor, gt: torch.Tensor,
                      cond: "Conditioning | None" = None,
                      generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError


# JPEG's largest block, a 4:2:0 chroma unit (16x16 pixels): crops at offsets and pads to sizes that
# are multiples of it keep an image's JPEG blocks on their grid (the self-ensemble, perceiver views).
BLOCK_GRID = 16

# Flips and quarter turns of an image, as indices k of the self-ensemble: k % 4 quarter turns after
# a horizontal flip for k >= 4 (0 identity, 2 half turn, 4 horizontal flip, 6 vertical flip).
SYMMETRIES: dict[str, tuple[int, ...]] = {
    "dihedral": tuple(range(8)),  # all eight: the degradation has no preferred direction
    "flips": (0, 2, 4, 6),        # up stays vertical (near-vertical rain streaks)
    "mirror": (0, 4),             # up stays up (haze: far at the top)
}


class Degradation(Component):
    """A seeded image corruption: ``forward(img, generator) -> degraded`` on [0, 1] images.

    ``label`` is the degradation class word (DA-CLIP's vocabulary where it exists).
    ``symmetry`` (a key of ``SYMMETRIES``) names the flips and quarter turns that leave the
    degradation's distribution unchanged: the self-ensemble of ``Pipeline.restore`` uses only those
    for images of this class (a turned rain image has horizontal streaks no expert has seen).
    """

    kind: ClassVar[str] = "degradation"
    label: ClassVar[str] = ""
    symmetry: ClassVar[str] = "dihedral"

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if cls.symmetry not in SYMMETRIES:
            raise TypeError(f"degradation {cls.__module__}.{cls.__qualname__}: symmetry {cls.symmetry!r} is not "
                            f"one of {', '.join(SYMMETRIES)}")

    class Params(Params):
        pass

    def forward(self, img: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError

    def example_inputs(self, size: tuple[int, int] = (64, 64), batch: int = 1) -> dict[str, Any]:
        return {"img": torch.rand(batch, 3, *size)}


BASES: dict[str, type[Component]] = {
    "perceiver": Perceiver,
    "backbone": Backbone,
    "loss": Loss,
    "process": Process,
    "degradation": Degradation,
}
