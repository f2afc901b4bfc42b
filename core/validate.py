"""Checks of a spec beyond its structure and params: how its parts fit together, and a dry run.

:func:`check_wiring` (torch-free, run by :func:`vlir.core.spec.load_spec`) checks the references
between sections: perceiver roles, the process, the conditioning the backbone can read, the roles
losses and stages name, the perceivers' class words against the data's degradations.
:func:`validate` (``vlir spec validate``, and ``vlir train`` before any work) adds what depends on
the machine: input files and folders (and the class words of paired folders), and every component
built on the meta device (no memory, no weights read).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import SpecError

if TYPE_CHECKING:  # pragma: no cover
    from .registry import Registry
    from .spec import PipelineSpec

_PROBE = 8  # a conditioning dim for asking a backbone what it reads


def reads(backbone_cls: type) -> dict[str, bool]:
    """Which conditioning inputs a backbone class reads: ``{"vector": ..., "tokens": ...}``.

    Read from :meth:`~vlir.core.Backbone.condition_params`: a backbone reads an input when its
    params change with that input's dim (the default ``condition_params`` reads nothing).
    """
    none = backbone_cls.condition_params(None, None)
    return {"vector": backbone_cls.condition_params(_PROBE, None) != none,
            "tokens": backbone_cls.condition_params(None, _PROBE) != none}


def check_wiring(spec: "PipelineSpec", registry: "Registry", *, model_only: bool = False,
                 losses: bool = True, failed: "set[str] | frozenset[str]" = frozenset()) -> list[tuple[str, str]]:
    """(YAML path, reason) of every reference in ``spec`` that does not fit.

    ``failed``: YAML paths of the components whose params did not resolve (their own errors are
    reported already; checks that read them are skipped).
    """
    errors: list[tuple[str, str]] = []
    roles = spec.roles()
    known = f"perceivers: {', '.join(roles) or 'none'}"
    for i, r in enumerate(roles):
        if r in roles[:i]:
            errors.append((f"perceivers[{i}].role", f"duplicate perceiver role {r!r}; give each a distinct role"))
    cond = spec.condition
    if cond is not None and cond.perceiver not in (None, "none") and cond.perceiver not in roles:
        errors.append(("condition.perceiver", f"no perceiver with role {cond.perceiver!r}; {known}"))

    bcls = None if "backbone" in failed else registry.load("backbone", spec.backbone.type)
    if bcls is None:
        pass
    elif getattr(bcls, "diffusion", False) and spec.process is None:
        errors.append(("process", f"backbone {spec.backbone.type!r} is a diffusion network and needs a "
                                  "process, e.g. process: {type: irsde}"))
    if not getattr(bcls, "diffusion", False) and spec.process is not None:
        errors.append(("process", f"backbone {spec.backbone.type!r} is not a diffusion network; remove 'process'"))

    # conditioning the spec asks for explicitly that the backbone would silently ignore
    if cond is not None and bcls is not None and spec.feeding_role() is not None and not model_only:
        can = reads(bcls)
        for key, asked in (("tokens", cond.tokens), ("vector", cond.vector is not False)):
            if key in cond.model_fields_set and asked and not can[key]:
                errors.append((f"condition.{key}", f"backbone {spec.backbone.type!r} cannot read the perceiver's "
                                                   f"{'content tokens' if key == 'tokens' else 'conditioning vector'} "
                                                   f"(its condition_params ignores them); set condition.{key}: "
                                                   f"false, or use a backbone that reads them"))

    if losses:
        def names_of(i: int, p: Any) -> set[str]:  # a perceiver's names as Loss.perceiver_kinds gives them
            if f"perceivers[{i}]" in failed:
                return {p.type}
            cls = registry.load("perceiver", p.type, p.provider)
            return {p.type, cls.name, cls.__name__}

        names = [names_of(i, p) for i, p in enumerate(spec.perceivers)]
        registered = {e.name for e in registry.list("perceiver")}
        for i, loss in enumerate(spec.losses):
            if f"losses[{i}]" in failed:
                continue
            role = loss.params.get("perceiver")
            if isinstance(role, str) and role not in roles:
                errors.append((f"losses[{i}].params.perceiver", f"loss {loss.type!r} names perceiver role "
                                                                f"{role!r}, which the spec does not have; {known}"))
            kinds = registry.load("loss", loss.type, loss.provider).perceiver_kinds
            if isinstance(role, str) and role in roles and kinds:
                k = roles.index(role)
                p = spec.perceivers[k]
                builtin = f"perceivers[{k}]" not in failed and \
                    registry.load("perceiver", p.type, p.provider).__module__.startswith("vlir.")
                if builtin and not names[k] & set(kinds):  # a third-party perceiver may give what it reads
                    types = [t for t in kinds if t in registered] or kinds
                    errors.append((f"losses[{i}].params.perceiver",
                                   f"loss {loss.type!r} reads a perceiver of type {' or '.join(types)}; role "
                                   f"{role!r} is a {p.type!r} perceiver"))
            if role is None and kinds and not any(n & set(kinds) for n in names):
                types = [k for k in kinds if k in registered] or kinds  # the registry names, not class names
                errors.append((f"losses[{i}]", f"loss {loss.type!r} reads a perceiver of type "
                                               f"{' or '.join(types)} and the spec has none ({known}); add one "
                                               f"to perceivers, or set losses[{i}].params.perceiver to the role "
                                               f"of the perceiver to read"))
    if model_only:
        return errors

    train = spec.train
    if train is not None:
        for i, s in enumerate(train.stages):
            where = f"train.stages[{i}]"
            if s.target != "restorer":
                role = s.target.partition(":")[2]
                if not roles or role and role not in roles:
                    errors.append((f"{where}.target", f"no perceiver for {s.target!r}; {known}"))
            for r in s.unfreeze:
                if r not in roles:
                    errors.append((f"{where}.unfreeze", f"no perceiver with role {r!r}; {known}"))
            if s.degradations is not None and spec.data is not None:
                types = [d.type for d in spec.data.degradations]
                wrong = [d for d in s.degradations if d not in types]
                if spec.data.layout != "synthetic" or wrong or not s.degradations:
                    errors.append((f"{where}.degradations", f"expected types of data.degradations "
                                                            f"({', '.join(types) or 'none'}) with layout: synthetic; "
                                                            f"got {s.degradations}"))
            if s.pairs_weight is not None and spec.data is not None and not spec.data.pairs:
                errors.append((f"{where}.pairs_weight", "the data has no pairs (data.pairs) to weigh"))

    # class words: a synthetic sample's label is its degradation's word; it must be a class of
    # every perceiver that classifies degradations (training and teacher routing read it)
    data = spec.data
    if data is not None and data.layout == "synthetic" and data.degradations:
        from .classes import data_words  # a mix's parts expanded: the words its samples are labelled by

        ok = [d.model_dump() for i, d in enumerate(data.degradations) if f"data.degradations[{i}]" not in failed]
        words = data_words({"data": {"degradations": ok}}, registry) or []
        for i, p in enumerate(spec.perceivers):
            classes = p.params.get("degradations")
            if not isinstance(classes, list) or f"perceivers[{i}]" in failed:
                continue
            missing = [w for w in words if w not in classes]
            if missing:
                errors.append((f"perceivers[{i}].params.degradations",
                               f"class words {classes} lack the labels {missing} of data.degradations "
                               f"(their labels: {', '.join(words)}); use the degradations' labels as class words"))
    return errors


def _check_paths(spec: "PipelineSpec", registry: "Registry") -> list[tuple[str, str]]:
    errors: list[tuple[str, str]] = []

    def need(path: str, value: str, folder: bool) -> None:
        p = Path(value).expanduser()
        ok = p.is_dir() if folder else p.is_file()
        if not ok:
            what = "folder" if folder else "file"
            hint = "" if p.is_absolute() else f" (relative paths are read from {Path.cwd()})"
            errors.append((path, f"no such {what}: {value}{hint}"))

    if spec.data is not None:
        for key in ("train", "val"):
            for i, v in enumerate(getattr(spec.data, key)):
                need(f"data.{key}[{i}]", v, folder=True)
        if spec.data.captions:
            need("data.captions", spec.data.captions, folder=False)
            if Path(spec.data.captions).expanduser().is_file():
                from .data.captions import CaptionError, CSVCaptions

                try:
                    CSVCaptions(Path(spec.data.captions).expanduser())
                except CaptionError as e:
                    errors.append(("data.captions", str(e)))
        if spec.data.pairs:  # real pairs: folders, pairing by name, labels among the data's class words
            from .classes import data_words
            from .data.datasets import paired_names
            from .data.pairs import check_pairs

            data = spec.data
            if data.layout == "paired":
                words = paired_names(Path(data.train[0]).expanduser()) if data.train else None
            else:
                words = data_words({"data": data.model_dump()}, registry)
            errors += check_pairs(data.pairs, words or None)
    if spec.eval is not None:
        for i, v in enumerate(spec.eval.data):
            need(f"eval.data[{i}]", v, folder=True)
    if spec.train is not None:
        for i, v in enumerate(spec.train.proxies):
            p = Path(v).expanduser()
            if not (p / "spec.yaml").is_file():
                errors.append((f"train.proxies[{i}]", f"not a saved pipeline folder (no spec.yaml): {v}"))
    return errors


def _check_paired(spec: "PipelineSpec", registry: "Registry") -> list[tuple[str, str]]:
    """``layout: paired`` names its classes by folder (``root/<degradation>/{LQ,GT}``, as training
    reads them: the first root's folders, which every other root of the split must have): each
    folder word must be a class word of every perceiver that classifies degradations (training and
    teacher routing read it), and each class the ``experts`` backbone overrides must be a folder
    (else its expert never sees a training image; an identity class needs none, e.g. clean)."""
    data = spec.data
    if data is None or data.layout != "paired":
        return []
    from .data.datasets import PairedFolders

    errors: list[tuple[str, str]] = []
    words: dict[str, list[str]] = {}  # YAML path of a split's first readable root -> its folder words
    for key in ("train", "val"):
        names = None
        for i, root in enumerate(getattr(data, key)):
            path = Path(root).expanduser()
            if not path.is_dir():
                continue  # _check_paths names it
            try:
                folders = PairedFolders(path, names=names, scan=False)
            except (ValueError, FileNotFoundError) as e:
                errors.append((f"data.{key}[{i}]", str(e)))
                continue
            if names is None:
                names = folders.names
                words[f"data.{key}[{i}]"] = names
    for i, p in enumerate(spec.perceivers):
        classes = p.params.get("degradations")
        if not isinstance(classes, list):
            continue
        lacks = [f"{missing} of {where} (its folders: {', '.join(names)})" for where, names in words.items()
                 if (missing := [w for w in names if w not in classes])]
        if lacks:
            errors.append((f"perceivers[{i}].params.degradations",
                           f"class words {classes} lack the degradation folders {' and '.join(lacks)}; "
                           f"name the classes by the folders"))
    bcls = registry.load("backbone", spec.backbone.type, spec.backbone.provider)
    train = next(((where, names) for where, names in words.items() if where.startswith("data.train")), None)
    if train is not None and bcls.class_params(["x"]):  # a backbone that names classes by their words
        where, names = train
        overrides = [k for k in spec.backbone.params.get("overrides") or {} if not str(k).isdigit()]
        missing = [w for w in overrides if w not in names]
        if missing:
            errors.append(("backbone.params.overrides",
                           f"classes {missing} have no degradation folder in {where} (its folders: "
                           f"{', '.join(names)}): their experts would never see a training image"))
    return errors


def dry_run(spec: "PipelineSpec", registry: "Registry") -> list[tuple[str, str]]:
    """Build every component of ``spec`` (and of its data) on the meta device; errors with paths."""
    from .spec import _components, _data_degradations

    errors: list[tuple[str, str]] = []
    perceivers: dict[str, Any] = {}
    entries = [*_components(spec), *((p, "degradation", d) for p, d in _data_degradations(spec))]
    for path, kind, entry in entries:
        try:
            try:
                module = registry.build(kind, entry, path=path, device="meta", load_weights=False,
                                        skip_pretrained=True)
            except (RuntimeError, NotImplementedError) as e:
                if "meta" not in str(e):
                    raise
                # a constructor that computes with its tensors (.item()) cannot run on meta; its
                # sizes are bounded by its Params, so build it for real
                module = registry.build(kind, entry, path=path, load_weights=False, skip_pretrained=True)
        except SpecError as e:
            errors.extend(e.errors)
            continue
        except Exception as e:  # noqa: BLE001 - the component's own check, reported with its path
            errors.append((f"{path}.params" if kind != "degradation" else path,
                           f"{kind} {entry.type!r} cannot be built: {e}"))
            continue
        if kind == "perceiver":
            perceivers[entry.role or entry.type] = module
    if spec.train is not None and perceivers:
        for i, s in enumerate(spec.train.resolved_stages()):
            role = s.target.partition(":")[2] if s.target != "restorer" else None
            if s.target == "restorer":
                continue
            role = role or next(iter(perceivers))
            module = perceivers.get(role)
            if module is not None and not any(p.requires_grad for p in module.parameters()):
                where = f"train.stages[{i}].target" if spec.train.stages else "train"
                errors.append((where, f"perceiver {role!r} has no trainable parameters"))
    return errors


def validate(source: Any, registry: "Registry | None" = None, name: str | None = None) -> "PipelineSpec":
    """Everything ``vlir train`` would fail on, before any work: :func:`~vlir.core.spec.load_spec`
    (structure, params, wiring), then input paths and a meta-device build of every component.
    Raises one :class:`SpecError` listing every error with its YAML path."""
    from .registry import get_registry
    from .spec import load_spec

    registry = registry or get_registry()
    name = name or (str(source) if isinstance(source, (str, Path)) else "spec")
    spec = load_spec(source, registry, name=name)
    errors = _check_paths(spec, registry) + _check_paired(spec, registry) + dry_run(spec, registry)
    if errors:
        raise SpecError(errors, source=name)
    return spec
