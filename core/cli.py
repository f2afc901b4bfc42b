"""The ``vlir`` command: one :class:`Command` record per subcommand, the shared options
(``--pipeline``/``--spec``, ``--device``, ``--threads``), the device resolver, the ``--set``
parser and the one mapping of errors to exit codes.

Parsing imports nothing heavy: each subcommand imports torch, models or open_clip only when
it runs, so ``vlir --help`` and ``vlir components`` start fast.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import signal
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from .errors import CLIError, SpecError, Terminated, UserError, memory_message, out_of_memory  # noqa: F401 - CLIError: old name

if TYPE_CHECKING:  # pragma: no cover
    import torch


@dataclass(frozen=True)
class Command:
    """One ``vlir`` subcommand: its module has ``add_<name>_arguments(parser)`` (or
    ``add_arguments``) and ``run_<name>(args) -> int`` (or ``run``), and imports anything heavy
    inside ``run``. ``options`` are the shared options the command takes (:data:`OPTIONS`).
    Adding a command is adding one record to :data:`COMMANDS`."""

    name: str
    module: str
    help: str
    options: tuple[str, ...] = ()


MODEL = ("model", "device", "threads", "precision")  # commands that open a pipeline: --pipeline/--spec, ...
COMMANDS: list[Command] = [
    Command("components", "vlir.core.cli", "list registered components (wildcards allowed)"),
    Command("inspect", "vlir.core.cli", "parameter counts, MACs and state-dict keys of a component"),
    Command("spec", "vlir.core.cli", "validate specs, write the JSON Schema"),
    Command("train", "vlir.core.train.cli", "train a pipeline from a spec (torchrun for several GPUs)",
            ("device", "threads")),
    Command("eval", "vlir.core.evaluate", "evaluate a pipeline or spec on images: PSNR/SSIM, accuracy, report",
            ("device", "threads", "precision")),
    Command("restore", "vlir.core.restore", "restore images, folders or globs", MODEL),
    Command("classify", "vlir.core.restore", "degradation class probabilities and quality score per image", MODEL),
    Command("demo", "vlir.core.demo", "degrade a bundled image, restore it with the default model, write a grid",
            MODEL),
    Command("serve", "vlir.core.serve", "a local web page: drop an image, see its degradations, restore, download",
            ("device", "threads")),
    Command("export", "vlir.core.export", "export a pipeline's backbone as ONNX graphs for onnxruntime"),
]


# -- shared options -----------------------------------------------------------------------------
def threads(text: str) -> int:
    """``--threads N``: a positive number of CPU threads for torch."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number of CPU threads, got {text!r}")
    return n


def _add_model(p: argparse._ArgumentGroup) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--pipeline", metavar="DIR", help="saved pipeline folder (default: the built-in default model)")
    g.add_argument("--spec", metavar="FILE", help="spec file (components built from it, weights from its 'weights:')")


def _add_device(p: argparse._ArgumentGroup) -> None:
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, mps or auto (default: auto: CUDA, "
                                                    "then MPS, then CPU; under torchrun the local rank's GPU)")


def _add_threads(p: argparse._ArgumentGroup) -> None:
    p.add_argument("--threads", type=threads, metavar="N", help="CPU threads of torch (torch.set_num_threads)")


def _add_precision(p: argparse._ArgumentGroup) -> None:
    from .precision import add_argument

    add_argument(p)


OPTIONS: dict[str, Callable[[argparse._ArgumentGroup], None]] = {
    "model": _add_model, "device": _add_device, "threads": _add_threads, "precision": _add_precision}


def resolve_device(name: str | None = "auto", local_rank: int = 0) -> "torch.device":
    """The torch device of ``--device``: ``auto`` (or None) is CUDA (the ``local_rank``-th GPU),
    else Apple's MPS, else the CPU; a named device is checked to be usable here."""
    import torch

    if name in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as e:
        raise UserError(f"--device {name!r} is not a device: give cpu, cuda, cuda:1, mps or auto") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name!r} asked for, but CUDA is not available here")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as e:
        raise UserError(f"--device {name!r} is not usable here: {str(e).splitlines()[0]}") from e
    return device


def parse_set(text: str) -> tuple[list[str], Any]:
    """``--set a.b.0.c=value`` -> (["a", "b", "0", "c"], the value read as YAML)."""
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"--set expects key=value, got {text!r}")
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError as e:
        raise argparse.ArgumentTypeError(f"--set {key}: value {value!r} is not valid YAML ({e})") from e
    return key.strip().split("."), parsed


def apply_sets(raw: dict[str, Any], pairs: list[tuple[list[str], Any]]) -> dict[str, Any]:
    """A copy of ``raw`` with the ``--set`` pairs applied; integer parts index lists (``train.stages.0.lr``)."""
    import copy

    out = copy.deepcopy(raw)
    for keys, value in pairs:
        node: Any = out
        for i, k in enumerate(keys):
            last = i == len(keys) - 1
            where = ".".join(keys[:i + 1])
            if isinstance(node, list):
                if not k.lstrip("-").isdigit() or not -len(node) <= int(k) < len(node):
                    raise SpecError([(where, f"--set: {k!r} is not an index of a list of {len(node)}")])
                if last:
                    node[int(k)] = value
                else:
                    node = node[int(k)]
            elif isinstance(node, dict):
                if last:
                    node[k] = value
                else:
                    if node.get(k) is None:
                        node[k] = {}
                    node = node[k]
            else:
                raise SpecError([(where, f"--set: cannot set a key inside a {type(node).__name__}")])
    return out


def _size(text: str) -> tuple[int, int]:
    try:
        h, _, w = text.lower().partition("x")
        return int(h), int(w or h)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size expects HxW such as 256x256, got {text!r}") from None


# -- components -------------------------------------------------------------------------------
def run_components(args: argparse.Namespace) -> int:
    from .registry import did_you_mean, get_registry

    reg = get_registry()
    entries = reg.list(args.kind, args.pattern)
    conflicts = {(c[0].kind, c[0].name) for c in reg.conflicts()}
    broken: dict[int, str] = {}
    if args.check:  # import every listed component's module
        broken = {id(e): err for e, err in reg.check(entries) if err}
    if args.json:
        rows = [{"name": e.name, "kind": e.kind, "provider": e.provider, "version": e.version,
                 "summary": e.summary, "presets": sorted(e.presets), "target": e.target_path,
                 "conflict": (e.kind, e.name) in conflicts,
                 **({"ok": id(e) not in broken, "error": broken.get(id(e))} if args.check else {})}
                for e in entries]
        print(json.dumps({"components": rows, "errors": [vars(x) for x in reg.errors]}, indent=2))
        return 1 if broken else 0
    if entries:
        w = max(len(e.name) for e in entries)
        for e in entries:
            flag = ""
            if (e.kind, e.name) in conflicts:
                flag = (f"  [CONFLICT: provided twice; the built-in wins, this one is {e.provider}:{e.name}]"
                        if e.source != "builtin" else "  [CONFLICT: provided twice]")
            if id(e) in broken:
                flag += f"  [BROKEN: {broken[id(e)]}]"
            print(f"{e.kind:<11} {e.name:<{w}}  {e.provider} {e.version}".rstrip() + f"  {e.summary}{flag}")
    else:
        msg = f"no components match {args.pattern!r}" + (f" in kind {args.kind!r}" if args.kind else "")
        if args.pattern and not any(c in args.pattern for c in "*?["):
            msg += did_you_mean(args.pattern, {e.name for e in reg.list(args.kind)})
        print(msg)
    if args.check:
        print(f"{len(entries) - len(broken)} of {len(entries)} components import"
              + (f"; broken: {', '.join(f'{e.kind} {e.name}' for e in entries if id(e) in broken)}" if broken else ""),
              file=sys.stderr)
    return 1 if broken else 0


def report_plugin_errors() -> None:
    """Plugins that failed to load, on stderr, once per command (if the command built the registry)."""
    from . import registry

    if registry._default_registry.cache_info().currsize:
        for err in registry.get_registry().errors:
            print(f"vlir: plugin load error (skipped): {err}", file=sys.stderr)


# -- inspect ----------------------------------------------------------------------------------
def macs_text(macs: int) -> str:
    """``1.23 G``, ``45.6 M``, ``7.8 K`` or a plain count below a thousand."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if macs >= scale:
            return f"{macs / scale:.2f} {unit}"
    return str(int(macs))


class _NoMACs(Exception):
    """A component with no forward to count (a process, a loss that needs training inputs)."""


def _example(module: Any, size: tuple[int, int]) -> tuple[dict[str, Any] | None, str | None]:
    """Inputs for one forward of ``module``, or None and why not."""
    if not callable(getattr(module, "example_inputs", None)):
        return None, f"a {module.kind} has no forward of its own (inspect the backbone it drives)"
    inputs = module.example_inputs(size=size, batch=1)
    needs = [k for k in getattr(module, "inputs", ()) if k not in inputs and k not in getattr(module, "optional_inputs", ())]
    if module.kind == "loss" and needs:
        return None, f"needs {', '.join(needs)} (given in training only)"
    return inputs, None


def _macs(module: Any, size: tuple[int, int]) -> int:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    inputs, why = _example(module, size)
    if inputs is None:
        raise _NoMACs(why)
    module.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(**inputs)
    return counter.get_total_flops() // 2


def _count(module: Any, device: str, size: tuple[int, int]) -> tuple[int | None, str | None, bool]:
    """(MACs, None, True), or (None, why, whether another device might count it)."""
    import torch

    try:
        with torch.device(device):
            return _macs(module, size), None, True
    except _NoMACs as e:  # nothing to count on any device
        return None, str(e), False
    except Exception as e:  # noqa: BLE001 - MACs are informative; keys and counts still print
        return None, f"{type(e).__name__}: {e}", True


def inspect_component(kind: str, name: str, preset: str | None = None, params: dict[str, Any] | None = None,
                      size: tuple[int, int] = (256, 256)) -> dict[str, Any]:
    """Parameter counts, MACs and state-dict layout of a component, built without reading weights.

    Built on the meta device (no memory, no init). A component whose construction or forward needs
    real values (an ``.item()`` at init, data-dependent routing, CPU-made tensors) is built on the CPU
    instead, with random weights, for what the meta build cannot give.
    """
    import warnings

    from .registry import get_registry

    reg = get_registry()
    resolved = reg.resolve(kind, {"type": name, "preset": preset, "params": dict(params or {})})
    layout_only = {"pretrained": None, "allow_random_vgg": True}  # no downloads, no weight files read
    p = resolved.model_copy(update={k: v for k, v in layout_only.items() if k in type(resolved).model_fields})

    def build(device: str) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "random VGG weights": expected here
            return reg.build(kind, {"type": name, "params": p.model_dump(mode="json")}, device=device,
                             load_weights=False)

    try:
        module, device = build("meta"), "meta"
    except Exception:  # noqa: BLE001 - needs real values at init: build it for real
        module, device = build("cpu"), "cpu"
    named = list(module.named_parameters())
    info: dict[str, Any] = {
        "kind": kind, "name": name, "preset": preset,
        "params": resolved.model_dump(mode="json"),
        "total_params": sum(t.numel() for _, t in named),
        "trainable_params": sum(t.numel() for _, t in named if t.requires_grad),
        "size": list(size),
        "built_on": device,
    }
    info["state_dict"] = [[k, list(v.shape)] for k, v in module.state_dict().items()]
    macs, error, countable = _count(module, device, size)
    if macs is None and countable and device == "meta":  # e.g. data-dependent routing: real values
        macs, error, _ = _count(build("cpu"), "cpu", size)
    info["macs"] = macs
    if error is not None:
        info["macs_error"] = error
    return info


def run_inspect(args: argparse.Namespace) -> int:
    from .registry import normalise_kind

    kind, name, params = args.kind, args.name, apply_sets({}, args.set or [])
    if args.weights:  # the backbone and its sizes detected from a checkpoint (type: auto)
        from vlir.plugins.backbones.auto import describe

        found = describe(args.weights)
        kind, name, params = "backbone", found["type"], {**found["params"], **params}
        print(f"{args.weights}: backbone {name}, params {json.dumps(found['params'])}",
              file=sys.stderr if args.json else sys.stdout)
    elif not (kind and name):
        raise UserError("give KIND NAME (e.g. backbone nafnet) or --weights FILE")
    info = inspect_component(normalise_kind(kind), name, args.preset, params, args.size)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{info['kind']} {info['name']}" + (f" (preset {info['preset']})" if info["preset"] else ""))
    print(f"  parameters: {info['total_params']:,} total, {info['trainable_params']:,} trainable")
    h, w = info["size"]
    if info["macs"] is not None:
        print(f"  MACs at {h}x{w}: {macs_text(info['macs'])}")
    else:
        print(f"  MACs at {h}x{w}: n/a ({info['macs_error']})")
    if not args.no_keys:
        print(f"  state dict ({len(info['state_dict'])} tensors):")
        for k, shape in info["state_dict"]:
            print(f"    {k}\t{tuple(shape)}")
    return 0


# -- spec -------------------------------------------------------------------------------------
def run_spec_validate(args: argparse.Namespace) -> int:
    from .validate import validate

    spec = validate(args.file)
    comps = [f"{p.role or p.type} ({p.type})" for p in spec.perceivers]
    print(f"{args.file}: ok — backbone {spec.backbone.type}"
          + (f", perceivers {', '.join(comps)}" if comps else "")
          + (f", process {spec.process.type}" if spec.process else "")
          + (f", losses {', '.join(l.type for l in spec.losses)}" if spec.losses else ""))
    if args.resolved:
        print(spec.to_yaml())
    return 0


def run_spec_schema(args: argparse.Namespace) -> int:
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
def add_components_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pattern", nargs="?", default="*", help="name pattern, e.g. 'naf*'")
    p.add_argument("--kind", help="perceiver, backbone, loss, process or degradation")
    p.add_argument("--json", action="store_true")
    p.add_argument("--check", action="store_true",
                   help="import every component's module and report broken ones (exit 1 if any)")


def add_inspect_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", nargs="?")
    p.add_argument("name", nargs="?")
    p.add_argument("--weights", metavar="FILE", help="detect the backbone and its sizes from a checkpoint")
    p.add_argument("--preset")
    p.add_argument("--set", action="append", type=parse_set, metavar="KEY=VALUE", help="override a param (repeatable)")
    p.add_argument("--size", type=_size, default=(256, 256), metavar="HxW", help="input size for MACs")
    p.add_argument("--json", action="store_true")
    p.add_argument("--no-keys", action="store_true", help="do not list the state-dict keys")


def add_spec_arguments(p: argparse.ArgumentParser) -> None:
    ssub = p.add_subparsers(dest="spec_command", metavar="ACTION", required=True)
    q = ssub.add_parser("validate", help="validate a spec file; all errors are reported with their paths")
    q.add_argument("file")
    q.add_argument("--resolved", action="store_true", help="print the fully resolved spec")
    q.set_defaults(func=run_spec_validate)
    q = ssub.add_parser("schema", help="JSON Schema of specs, generated from the registry (for editors)")
    q.add_argument("-o", "--output")
    q.set_defaults(func=run_spec_schema)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The ``vlir`` parser: one subparser per :data:`COMMANDS` record, its module's arguments
    first, then the shared options it names. With ``only`` (the command about to run) only that
    command's module is imported; the others keep their name and help (start-up of ``vlir restore``)."""
    from . import __version__

    parser = argparse.ArgumentParser(prog="vlir", description="vision-language image restoration")
    parser.add_argument("--version", action="version", version=f"vlir {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for cmd in COMMANDS:
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        if only is not None and cmd.name != only:
            continue
        try:
            mod = importlib.import_module(cmd.module)
        except ModuleNotFoundError:
            p.set_defaults(func=_missing(cmd.name))
            continue
        getattr(mod, f"add_{cmd.name}_arguments", getattr(mod, "add_arguments", lambda _p: None))(p)
        shared = p.add_argument_group("shared options") if cmd.options else None
        for option in cmd.options:
            OPTIONS[option](shared)
        run = getattr(mod, f"run_{cmd.name}", getattr(mod, "run", None))
        if run is not None:  # else its sub-actions set func (vlir spec validate)
            p.set_defaults(func=run)
    return parser


def _missing(name: str) -> Callable[[argparse.Namespace], int]:
    def run(_args: argparse.Namespace) -> int:
        raise UserError(f"'vlir {name}' is not available in this installation")
    return run


def _terminate(signum: int, _frame: Any) -> None:
    raise Terminated()


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM raises :class:`~vlir.core.errors.Terminated` (a KeyboardInterrupt) while a command runs."""
    try:
        previous = signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    """Run a ``vlir`` command. Exit status: 0 done, 1 some inputs failed or memory ran out,
    2 a user error (:class:`~vlir.core.errors.UserError`: one line, no traceback), 130 Ctrl-C,
    141 a closed pipe, 143 SIGTERM; temporary files of unfinished writes are removed."""
    words = sys.argv[1:] if argv is None else list(argv)
    first = next((w for w in words if not w.startswith("-")), None)
    parser = build_parser(first if any(c.name == first for c in COMMANDS) else None)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    with _sigterm_as_interrupt():
        try:
            if getattr(args, "threads", None):
                import torch

                torch.set_num_threads(args.threads)
            rc = int(args.func(args) or 0)
            sys.stdout.flush()  # a reader gone early (`vlir classify --json | head`) fails here, not at exit
            return rc
        except BrokenPipeError:  # stop quietly, as cat and git do; nothing more goes to the closed pipe
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 141  # 128 + SIGPIPE, as a shell reports it
        except (UserError, FileNotFoundError) as e:
            print(f"vlir {args.command}: error: {e}", file=sys.stderr)
            return 2
        except Terminated:
            print(f"vlir {args.command}: terminated (SIGTERM)", file=sys.stderr)
            return 143  # 128 + SIGTERM
        except KeyboardInterrupt:
            print(f"vlir {args.command}: interrupted", file=sys.stderr)
            return 130
        except Exception as e:
            if not out_of_memory(e):
                raise
            print(f"vlir {args.command}: error: {memory_message(e)}", file=sys.stderr)
            return 1
        finally:
            report_plugin_errors()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
