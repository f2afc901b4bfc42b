"""The ``vlir`` command.

Parsing imports nothing heavy: each subcommand imports torch, models or open_clip only when
it runs, so ``vlir --help`` and ``vlir components`` start fast.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from typing import Any, Callable

# subcommands implemented in other modules: name -> (module, help). Each module has
# ``add_arguments(parser)`` and ``run(args) -> int`` and imports heavy things inside ``run``.
EXTERNAL = {
    "train": ("vlir.core.train.cli", "train a pipeline from a spec (torchrun for several GPUs)"),
    "eval": ("vlir.core.evaluate", "evaluate a pipeline or spec on images: PSNR/SSIM, accuracy, report"),
    "restore": ("vlir.core.restore", "restore images, folders or globs"),
    "classify": ("vlir.core.restore", "degradation class probabilities and quality score per image"),
    "demo": ("vlir.core.demo", "degrade a bundled image, restore it with the default model, write a grid"),
}


class CLIError(Exception):
    """An error shown to the user as one line, exit code 2."""


def _kv(text: str) -> tuple[list[str], Any]:
    import yaml

    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--set expects key=value, got {text!r}")
    key, _, value = text.partition("=")
    return key.strip().split("."), yaml.safe_load(value)


def _nested(pairs: list[tuple[list[str], Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for keys, value in pairs:
        d = out
        for k in keys[:-1]:
            d = d.setdefault(k, {})
        d[keys[-1]] = value
    return out


def _size(text: str) -> tuple[int, int]:
    try:
        h, _, w = text.lower().partition("x")
        return int(h), int(w or h)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size expects HxW such as 256x256, got {text!r}") from None


def threads(text: str) -> int:
    """``--threads N`` of every subcommand: a positive number of CPU threads for torch."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number of CPU threads, got {text!r}")
    return n


# -- components -------------------------------------------------------------------------------
def cmd_components(args: argparse.Namespace) -> int:
    from .registry import did_you_mean, get_registry

    reg = get_registry()
    entries = reg.list(args.kind, args.pattern)
    conflicts = {(c[0].kind, c[0].name) for c in reg.conflicts()}
    if args.json:
        rows = [{"name": e.name, "kind": e.kind, "provider": e.provider, "version": e.version,
                 "summary": e.summary, "presets": sorted(e.presets), "target": e.target_path,
                 "conflict": (e.kind, e.name) in conflicts} for e in entries]
        print(json.dumps({"components": rows, "errors": [vars(x) for x in reg.errors]}, indent=2))
        return 0
    if entries:
        w = max(len(e.name) for e in entries)
        for e in entries:
            flag = "  [CONFLICT: provided twice]" if (e.kind, e.name) in conflicts else ""
            print(f"{e.kind:<11} {e.name:<{w}}  {e.provider} {e.version}".rstrip() + f"  {e.summary}{flag}")
    else:
        msg = f"no components match {args.pattern!r}" + (f" in kind {args.kind!r}" if args.kind else "")
        if args.pattern and not any(c in args.pattern for c in "*?["):
            msg += did_you_mean(args.pattern, {e.name for e in reg.list(args.kind)})
        print(msg)
    for err in reg.errors:
        print(f"plugin load error: {err}", file=sys.stderr)
    return 0


# -- inspect ----------------------------------------------------------------------------------
def inspect_component(kind: str, name: str, preset: str | None = None, params: dict[str, Any] | None = None,
                      size: tuple[int, int] = (256, 256)) -> dict[str, Any]:
    """Parameter counts, MACs and state-dict layout of a component, built on the meta device."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from .registry import get_registry

    reg = get_registry()
    p = reg.resolve_params(kind, name, preset, params)
    if "pretrained" in type(p).model_fields:
        p = p.model_copy(update={"pretrained": None})  # layout only: no weights are read
    cls = reg.load(kind, name)
    with torch.device("meta"):
        module = cls(p)
        named = list(module.named_parameters())
        info: dict[str, Any] = {
            "kind": kind, "name": name, "preset": preset,
            "params": reg.resolve_params(kind, name, preset, params).model_dump(mode="json"),
            "total_params": sum(t.numel() for _, t in named),
            "trainable_params": sum(t.numel() for _, t in named if t.requires_grad),
            "size": list(size),
        }
        try:
            module.eval()
            with FlopCounterMode(display=False) as counter, torch.no_grad():
                module(**module.example_inputs(size=size, batch=1))
            info["macs"] = counter.get_total_flops() // 2
        except Exception as e:  # noqa: BLE001 - MACs are informative; keys and counts still print
            info["macs"] = None
            info["macs_error"] = f"{type(e).__name__}: {e}"
        info["state_dict"] = [[k, list(v.shape)] for k, v in module.state_dict().items()]
    return info


def cmd_inspect(args: argparse.Namespace) -> int:
    from .registry import normalise_kind

    kind, name, params = args.kind, args.name, _nested(args.set or [])
    if args.weights:  # the backbone and its sizes detected from a checkpoint (type: auto)
        from vlir.plugins.backbones.auto import describe

        found = describe(args.weights)
        kind, name, params = "backbone", found["type"], {**found["params"], **params}
        print(f"{args.weights}: backbone {name}, params {json.dumps(found['params'])}",
              file=sys.stderr if args.json else sys.stdout)
    elif not (kind and name):
        raise CLIError("give KIND NAME (e.g. backbone nafnet) or --weights FILE")
    info = inspect_component(normalise_kind(kind), name, args.preset, params, args.size)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{info['kind']} {info['name']}" + (f" (preset {info['preset']})" if info["preset"] else ""))
    print(f"  parameters: {info['total_params']:,} total, {info['trainable_params']:,} trainable")
    h, w = info["size"]
    if info["macs"] is not None:
        print(f"  MACs at {h}x{w}: {info['macs'] / 1e9:.2f} G")
    else:
        print(f"  MACs at {h}x{w}: n/a ({info['macs_error']})")
    if not args.no_keys:
        print(f"  state dict ({len(info['state_dict'])} tensors):")
        for k, shape in info["state_dict"]:
            print(f"    {k}\t{tuple(shape)}")
    return 0


# -- spec -------------------------------------------------------------------------------------
def cmd_spec_validate(args: argparse.Namespace) -> int:
    from .spec import load_spec

    spec = load_spec(args.file)
    comps = [f"{p.role or p.type} ({p.type})" for p in spec.perceivers]
    print(f"{args.file}: ok — backbone {spec.backbone.type}"
          + (f", perceivers {', '.join(comps)}" if comps else "")
          + (f", process {spec.process.type}" if spec.process else "")
          + (f", losses {', '.join(l.type for l in spec.losses)}" if spec.losses else ""))
    if args.resolved:
        print(spec.to_yaml())
    return 0


def cmd_spec_schema(args: argparse.Namespace) -> int:
    from .io import atomic_write_text
    from .spec import json_schema

    text = json.dumps(json_schema(), indent=2)
    if args.output:
        atomic_write_text(args.output, text + "\n")
        print(f"wrote {args.output}")
    else:
        print(text)
    return 0


# -- parser -----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="vlir", description="vision-language image restoration")
    parser.add_argument("--version", action="version", version=f"vlir {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("components", help="list registered components (wildcards allowed)")
    p.add_argument("pattern", nargs="?", default="*", help="name pattern, e.g. 'naf*'")
    p.add_argument("--kind", help="perceiver, backbone, loss, process or degradation")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_components)

    p = sub.add_parser("inspect", help="parameter counts, MACs and state-dict keys of a component")
    p.add_argument("kind", nargs="?")
    p.add_argument("name", nargs="?")
    p.add_argument("--weights", metavar="FILE", help="detect the backbone and its sizes from a checkpoint")
    p.add_argument("--preset")
    p.add_argument("--set", action="append", type=_kv, metavar="KEY=VALUE", help="override a param (repeatable)")
    p.add_argument("--size", type=_size, default=(256, 256), metavar="HxW", help="input size for MACs")
    p.add_argument("--json", action="store_true")
    p.add_argument("--no-keys", action="store_true", help="do not list the state-dict keys")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("spec", help="validate specs, write the JSON Schema")
    ssub = p.add_subparsers(dest="spec_command", metavar="ACTION", required=True)
    q = ssub.add_parser("validate", help="validate a spec file; all errors are reported with their paths")
    q.add_argument("file")
    q.add_argument("--resolved", action="store_true", help="print the fully resolved spec")
    q.set_defaults(func=cmd_spec_validate)
    q = ssub.add_parser("schema", help="JSON Schema of specs, generated from the registry (for editors)")
    q.add_argument("-o", "--output")
    q.set_defaults(func=cmd_spec_schema)

    for name, (module, help_text) in EXTERNAL.items():
        p = sub.add_parser(name, help=help_text)
        p.set_defaults(module=module)
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError:
            p.set_defaults(func=_missing(name))
            continue
        getattr(mod, f"add_{name}_arguments", getattr(mod, "add_arguments", lambda _p: None))(p)
        p.set_defaults(func=getattr(mod, f"run_{name}", getattr(mod, "run", None)))
    return parser


def _missing(name: str) -> Callable[[argparse.Namespace], int]:
    def run(_args: argparse.Namespace) -> int:
        raise CLIError(f"'vlir {name}' is not available in this installation")
    return run


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    from .io import CheckpointError
    from .registry import RegistryError
    from .errors import SpecError, UserError

    try:
        rc = int(args.func(args) or 0)
        sys.stdout.flush()  # a reader gone early (`vlir classify --json | head`) fails here, not at exit
        return rc
    except BrokenPipeError:  # stop quietly, as cat and git do; nothing more goes to the closed pipe
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as a shell reports it
    except (SpecError, RegistryError, CheckpointError, CLIError, FileNotFoundError, UserError) as e:
        print(f"vlir {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
