"""A pipeline: perceivers -> Perception -> Conditioning -> backbone (or a process around it) -> losses.

``Pipeline.from_spec(spec)`` builds one; ``pipeline.save(dir)`` writes the fully resolved
``spec.yaml`` and one safetensors file per component; ``Pipeline.load(dir)`` rebuilds it from
those files alone (no pickled code is ever executed). Whole images (tiles, the self-ensemble)
are run by :mod:`vlir.core.inference`; ``Pipeline.restore`` is a shortcut to it. What training
asks of a pipeline (teacher routing, loss inputs, the weighted loss) is :mod:`vlir.core.train.objective`.
"""
from __future__ import annotations

import functools
import platform
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import torch

from .conditioning import Conditioning, Perception
from .hookspecs import call_hook
from .io import atomic_write_text, load_checkpoint, load_state_dict_checked, save_safetensors
from .spec import SpecError, load_spec, read_yaml

if TYPE_CHECKING:  # pragma: no cover
    from .registry import Registry
    from .spec import ComponentSpec, PipelineSpec

SPEC_FILE = "spec.yaml"


def _unique_roles(names: list[str]) -> list[str]:
    out: list[str] = []
    for n in names:
        role, k = n, 2
        while role in out:
            role, k = f"{n}_{k}", k + 1
        out.append(role)
    return out


def _versions() -> dict[str, str]:
    from .registry import _vlir_version

    return {"vlir": _vlir_version(), "torch": torch.__version__.split("+")[0], "python": platform.python_version()}


_INITS = ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "xavier_uniform_",
          "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_")


@contextmanager
def _no_init_on_meta() -> Iterator[None]:
    """``torch.nn.init``'s functions return meta tensors untouched (a random init computes nothing
    there, yet costs a dispatch per layer); other tensors are initialised as always."""
    from torch.nn import init

    def skipping(fn):
        @functools.wraps(fn)
        def call(tensor, *args, **kwargs):
            return tensor if isinstance(tensor, torch.Tensor) and tensor.is_meta else fn(tensor, *args, **kwargs)
        return call

    saved = {name: getattr(init, name) for name in _INITS if hasattr(init, name)}
    for name, fn in saved.items():
        setattr(init, name, skipping(fn))
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(init, name, fn)


def _own_tensor(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t`` as a module's own tensor of ``dtype``: cast, or copied to fresh memory when it lies
    unaligned inside a file's buffer (vectorised kernels round differently there: not bit for bit)."""
    if t.dtype != dtype:
        return t.to(dtype)
    return t if t.data_ptr() % 64 == 0 else t.clone()


def _on_meta(module: torch.nn.Module) -> bool:
    """Whether a module holds a tensor on the meta device (a parameter, a buffer or an attribute)."""
    for m in module.modules():
        tensors = [*m._parameters.values(), *m._buffers.values(), *vars(m).values()]
        if any(isinstance(t, torch.Tensor) and t.is_meta for t in tensors):
            return True
    return False


class Pipeline(torch.nn.Module):
    """Built components of a spec, run together."""

    def __init__(self, spec: "PipelineSpec", registry: "Registry | None" = None, *, build_losses: bool = True,
                 load_weights: bool = True, skip_pretrained: bool = False, empty: bool = False):
        """``empty``: components built on the meta device where they can be (no memory, no random
        init; :meth:`load` fills them from files), the ``vlir_pipeline_built`` hook left to the caller."""
        super().__init__()
        from .registry import get_registry

        self.registry = registry or get_registry()
        self.spec = spec

        def make(kind: str, comp: "ComponentSpec", path: str):
            if empty:
                try:
                    with _no_init_on_meta():
                        return self.registry.build(kind, comp, path=path, device="meta", load_weights=False,
                                                   skip_pretrained=skip_pretrained)
                except (NotImplementedError, RuntimeError, ValueError):
                    pass  # it computes with tensors while it is built: built for real
            return self.registry.build(kind, comp, path=path, load_weights=load_weights,
                                       skip_pretrained=skip_pretrained)

        roles = spec.roles()
        self.perceivers = torch.nn.ModuleDict(
            {r: make("perceiver", p, f"perceivers[{i}]") for i, (r, p) in enumerate(zip(roles, spec.perceivers))})
        self.backbone = make("backbone", spec.backbone, "backbone")
        self.process = make("process", spec.process, "process") if spec.process is not None else None
        loss_roles = _unique_roles([l.role or l.type for l in spec.losses])
        self.loss_weights = {r: l.weight for r, l in zip(loss_roles, spec.losses)}
        self.losses = torch.nn.ModuleDict(
            {r: make("loss", l, f"losses[{i}]") for i, (r, l) in enumerate(zip(loss_roles, spec.losses))}
            if build_losses else {})
        self.feed = spec.feeding_role()
        self.precision: str | torch.dtype | None = None  # restore's default dtype (vlir.core.precision); None: fp32
        if not empty:
            call_hook(self.registry, "vlir_pipeline_built", pipeline=self)

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_spec(cls, source: Any, registry: "Registry | None" = None, **kw: Any) -> "Pipeline":
        """Build from a spec file, dict or :class:`PipelineSpec` (validated and resolved first)."""
        return cls(load_spec(source, registry), registry, **kw)

    @classmethod
    def load(cls, path: str | Path, registry: "Registry | None" = None, *, build_losses: bool = False,
             map_location: str | torch.device = "cpu") -> "Pipeline":
        """Rebuild a saved pipeline from its folder (``spec.yaml`` + safetensors)."""
        path = Path(path)
        spec_file = path / SPEC_FILE
        if not spec_file.is_file():
            raise FileNotFoundError(f"{path}: not a vlir pipeline folder (no {SPEC_FILE})")
        raw = read_yaml(spec_file)
        for comp in [*(raw.get("perceivers") or []), raw.get("backbone"), raw.get("process"), *(raw.get("losses") or [])]:
            if isinstance(comp, dict):
                comp.pop("weights", None)  # the folder's safetensors are the weights
        # a saved spec is resolved already: no vlir_adjust_spec hooks (an installed plugin must not
        # change a saved model), and only the components built here are resolved
        spec = load_spec(raw, registry, adjust=False, model_only=True, losses=build_losses)
        # built on the meta device and given the files' tensors: no random init, no copies (the
        # components that cannot be built or filled so are built for real and copied into)
        pipe = cls(spec, registry, build_losses=build_losses, load_weights=False, skip_pretrained=True, empty=True)
        states = {}
        for name, module in pipe.named_components():
            file = path / f"{name}.safetensors"
            if not file.is_file():
                if module.state_dict():
                    raise FileNotFoundError(f"{path}: missing {file.name} for component {name!r}")
                continue
            states[name] = (load_checkpoint(file), str(file))
        if pipe._fill(states):
            call_hook(pipe.registry, "vlir_pipeline_built", pipeline=pipe)
        else:  # built for real (the hook runs there) and copied into
            pipe = cls(spec, registry, build_losses=build_losses, load_weights=False, skip_pretrained=True)
            pipe._fill(states)
        return pipe.to(map_location).eval()

    def _fill(self, states: dict[str, tuple[dict[str, torch.Tensor], str]]) -> bool:
        """Load ``states`` (component file stem -> (state dict, source)) into the components: copied
        into built ones, assigned (the tensors become the module's, cast to its dtypes) to those on
        the meta device. False when a component would stay on the meta device (a tensor that no file
        holds, or tied weights): then the pipeline is not usable."""
        for name, module in self.named_components():
            sd, source = states.get(name, ({}, name))
            if not _on_meta(module):
                load_state_dict_checked(module, sd, source=source)
                continue
            named = list(module.named_parameters(remove_duplicate=False))
            if len({id(p) for _, p in named}) != len(named):
                return False
            own = module.state_dict(keep_vars=True)
            sd = {k: _own_tensor(v, own[k].dtype if k in own else v.dtype) for k, v in sd.items()}
            load_state_dict_checked(module, sd, source=source, assign=True)
            if _on_meta(module):
                return False
        return True

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path = "default", **kw: Any) -> "Pipeline":
        """``vlir.load``: "default", a pipeline folder, a spec file or a Hugging Face repository id."""
        from .api import load

        return load(name_or_path, **kw)

    @classmethod
    def open(cls, path: str | Path, registry: "Registry | None" = None, **kw: Any) -> "Pipeline":
        """A saved pipeline folder or a spec file."""
        path = Path(path)
        if path.is_dir():
            return cls.load(path, registry, **kw)
        if path.is_file():
            return cls.from_spec(path, registry)
        raise FileNotFoundError(f"{path}: no such pipeline folder or spec file")

    def named_components(self) -> list[tuple[str, torch.nn.Module]]:
        """(file stem, module) of every component, as saved: ``perceiver.<role>``, ``backbone``, ..."""
        out: list[tuple[str, torch.nn.Module]] = [(f"perceiver.{r}", m) for r, m in self.perceivers.items()]
        out.append(("backbone", self.backbone))
        if self.process is not None:
            out.append(("process", self.process))
        out.extend((f"loss.{r}", m) for r, m in self.losses.items())
        return out

    def save(self, path: str | Path) -> Path:
        """Write ``spec.yaml`` (fully resolved, with versions) and one safetensors file per component.

        Each file is written atomically; ``spec.yaml`` is written last, so a folder that has one
        is complete.
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        for name, module in self.named_components():
            sd = module.state_dict()
            if sd:
                save_safetensors(sd, path / f"{name}.safetensors", metadata={"component": name})
        spec = self.spec.model_copy(deep=True)
        for comp in [*spec.perceivers, spec.backbone, *( [spec.process] if spec.process else []), *spec.losses]:
            comp.weights = None
        spec.versions = _versions()
        atomic_write_text(path / SPEC_FILE, spec.to_yaml())
        call_hook(self.registry, "vlir_pipeline_saved", pipeline=self, path=str(path))
        return path

    # -- running --------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        for b in self.buffers():
            return b.device
        return torch.device("cpu")

    def perceive(self, lq: torch.Tensor) -> dict[str, Perception]:
        """Run every perceiver on ``lq`` (B, 3, H, W in [0, 1])."""
        return {role: p(lq) for role, p in self.perceivers.items()}

    def condition(self, perceptions: dict[str, Perception]) -> Conditioning | None:
        """The backbone's conditioning from the feeding perceiver's perception."""
        if self.feed is None or self.feed not in perceptions:
            return None
        perception = perceptions[self.feed]
        cond = perception.to_conditioning()
        c = self.spec.condition
        if c is None:
            return cond
        vector = {"degradation": cond.vector, "probs": perception.class_probs,
                  "quality": perception.quality_probs, None: None}[c.vector_source]
        return Conditioning(tokens=cond.tokens if c.tokens else None, vector=vector, guidance=cond.guidance)

    def run_backbone(self, lq: torch.Tensor, cond: Conditioning | None, steps: int | None = None,
                     generator: torch.Generator | None = None) -> torch.Tensor:
        if self.process is not None:
            return self.process.sample(self.backbone, lq, cond, steps=steps, generator=generator)
        return self.backbone(lq, cond)

    def forward(self, lq: Any, steps: int | None = None, generator: torch.Generator | None = None) -> Any:
        """``pipe(image)``: the restored image (see :meth:`restore`), without its perceptions."""
        return self.restore(lq, steps=steps, generator=generator)[0]

    def restore(self, lq: Any, tile: int | None = None, overlap: int | None = None,
                steps: int | None = None, generator: torch.Generator | None = None, ensemble: bool = False,
                dtype: str | torch.dtype | None = None) -> tuple[Any, dict[str, Perception]]:
        """Restore a batch: :func:`vlir.core.inference.restore` (tiles, overlap rule, self-ensemble).

        Returns the restored images (clamped to [0, 1]) and the perceptions.

        ``dtype``: the precision it computes in, ``"auto"``, ``"fp32"``, ``"bf16"``, ``"fp16"`` or
        ``torch.float32`` / ``torch.bfloat16`` / ``torch.float16`` (autocast, weights kept as they
        are; :mod:`vlir.core.precision`); default ``self.precision`` (set by ``vlir.load(dtype=...)``),
        else fp32.

        ``lq`` may also be a PIL image, a numpy array, a uint8 / uint16 / float tensor of any
        dtype or device, or a list of those (sizes may differ): the result has the input's type
        (``vlir.core.api``), and a list gives lists of results and perceptions.
        """
        from .api import is_batch, pipeline_dtype, plain, restore_any
        from .inference import restore

        if not torch.is_inference_mode_enabled():  # results come back as plain tensors (in-place ops work)
            with torch.inference_mode():
                out, perceptions = self.restore(lq, tile, overlap, steps, generator, ensemble, dtype)
            return plain(out), perceptions
        device, kind = self.device, pipeline_dtype(self)
        if not is_batch(lq, device, kind):
            return restore_any(lq, device, kind,
                               lambda x: self.restore(x, tile, overlap, steps, generator, ensemble, dtype))

        return restore(self, lq, tile=tile, overlap=overlap, steps=steps, generator=generator, ensemble=ensemble,
                       precision=self.precision if dtype is None else dtype)

    def restore_steps(self, lq: torch.Tensor, *, steps: int = 1, path: "list[str] | str | None" = None,
                      prompt: str | None = None, abstain: float | None = None, tile: int | None = None,
                      overlap: int | None = None, generator: torch.Generator | None = None, ensemble: bool = False
                      ) -> tuple[torch.Tensor, dict[str, Perception], list]:
        """Restore a batch step by step, along a given ``path`` of class words (or the words of a
        ``prompt``: "remove the rain"), or leaving images under ``abstain`` as they are
        (:func:`vlir.core.chain.restore_steps`). Returns the images, the input's perceptions and
        each image's :class:`vlir.core.chain.Path` (print it: ``low-light 0.97 → noisy 0.81``)."""
        from .chain import prompt_words, restore_steps

        if prompt is not None:
            path = prompt_words(self, prompt)
        if isinstance(path, str):
            path = [w.strip() for w in path.split(",") if w.strip()]
        with torch.inference_mode():
            return restore_steps(self, lq, steps=steps, path=path, abstain=abstain, tile=tile, overlap=overlap,
                                 generator=generator, ensemble=ensemble)

    def ensemble_symmetries(self, perceptions: dict[str, Perception]) -> tuple[int, ...]:
        """The self-ensemble's flips and turns for these perceptions (:func:`vlir.core.inference.ensemble_symmetries`)."""
        from .inference import ensemble_symmetries

        return ensemble_symmetries(self, perceptions)


__all__ = ["Pipeline", "SpecError"]
