"""Safe, atomic reading and writing of checkpoints and images."""
from __future__ import annotations

import contextlib
import os
import re
import stat
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping

if TYPE_CHECKING:  # pragma: no cover
    import torch


from .errors import UserError


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be read or does not fit the module."""


# the hidden temporary file of an atomic write of NAME by process PID: .NAME.PID-XXXXXXXX.tmp[.ext]
_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)-[a-z0-9_]{8}\.tmp(\.[^.]*)?$")
_OLD_TEMP = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp(\.[^.]*)?$")  # before the PID was in the name
OLD_TEMP_AGE = 3600.0  # seconds after which an old-style temporary file counts as abandoned


def temp_prefix(name: str) -> str:
    """``mkstemp`` prefix of a temporary file for ``name``: hidden, tagged with this process's id."""
    return f".{name}.{os.getpid()}-"


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: a live process of another user
        return True
    return True


def remove_stale_temp(folder: str | os.PathLike, owner: bool = False) -> list[Path]:
    """Remove the temporary files that interrupted atomic writes (SIGKILL, power loss) left in
    ``folder``: those of processes no longer running (old-style names: when over an hour old, or at
    once when the caller is the ``owner`` of the folder, as a training run is of its run folder).
    Returns the removed paths; a file that cannot be removed is left as it is."""
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        m = _TEMP.match(entry.name)
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            if m is not None:
                stale = not _running(int(m["pid"]))
            else:
                old = _OLD_TEMP.match(entry.name) is not None or (
                    owner and entry.name.startswith(".") and (entry.name.endswith(".tmp") or ".tmp." in entry.name))
                stale = old and (owner or now - entry.stat().st_mtime > OLD_TEMP_AGE)
            if stale:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            continue
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    Nothing is left behind on failure, and an existing file is only replaced when the new one
    is complete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name), suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give outputs the usual permissions
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def save_safetensors(tensors: Mapping[str, torch.Tensor], path: str | os.PathLike,
                     metadata: dict[str, str] | None = None) -> None:
    """Write tensors to a safetensors file atomically (shared storage is cloned)."""
    from safetensors.torch import save_file

    clean = {k: v.detach().contiguous().clone() if v.is_shared() or not v.is_contiguous() else v.detach()
             for k, v in tensors.items()}
    # safetensors refuses tensors sharing memory: clone all to be safe and simple
    clean = {k: v.cpu().clone() for k, v in clean.items()}
    with atomic_path(path) as tmp:
        save_file(clean, str(tmp), metadata=metadata)


def _safe_globals() -> list:
    """Extra types allowed in ``torch.load(weights_only=True)``: numpy scalars and dtypes.

    Official checkpoints (DA-CLIP's, BasicSR's) store numpy scalars in their metadata.
    """
    import numpy as np

    allowed: list = []
    core = getattr(np, "_core", None) or getattr(np, "core")
    allowed.append(core.multiarray.scalar)
    allowed.append(np.dtype)
    for name in ("Float64DType", "Float32DType", "Int64DType", "Int32DType", "BoolDType"):
        t = getattr(np.dtypes, name, None)
        if t is not None:
            allowed.append(t)
    return allowed


def load_checkpoint(path: str | os.PathLike) -> Any:
    """Read a checkpoint without executing pickled code.

    ``.safetensors`` files are read with safetensors; anything else with
    ``torch.load(weights_only=True)`` with numpy scalars allow-listed.
    """
    import torch

    path = Path(path)
    check_regular_file(path, "checkpoint")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(f"checkpoint {path}: not a readable safetensors file ({e})") from e
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(
            f"checkpoint {path}: cannot be read safely ({type(e).__name__}: {str(e).splitlines()[0]}); "
            "vlir loads only tensors and plain containers (weights_only=True)"
        ) from e


def file_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be read as a weights file, or None: missing, or not a regular file (a
    device such as /dev/zero, a pipe or a folder: reading it would never end or fail obscurely)."""
    try:
        mode = os.stat(Path(path).expanduser()).st_mode
    except FileNotFoundError:
        return "no such file"
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    if stat.S_ISREG(mode):
        return None
    kind = ("a folder" if stat.S_ISDIR(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "a pipe" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "not a file")
    return f"is {kind}, not a regular file; give a weights file (.safetensors, .pth or .pt)"


def check_regular_file(path: str | os.PathLike, what: str = "file") -> None:
    """:func:`file_problem` as a :class:`CheckpointError` naming ``what`` and ``path``."""
    problem = file_problem(path)
    if problem is not None:
        raise CheckpointError(f"{what} {path}: {problem}")


def strip_prefix(sd: Mapping[str, Any], prefix: str = "module.") -> dict[str, Any]:
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in sd.items()}


def unwrap_state_dict(obj: Any, keys: tuple[str, ...] = ("params_ema", "params", "state_dict", "model")
                      ) -> dict[str, torch.Tensor]:
    """Find the state dict inside an official checkpoint and strip ``module.`` prefixes."""
    import torch

    if isinstance(obj, Mapping):
        for k in keys:
            if k in obj and isinstance(obj[k], Mapping):
                return unwrap_state_dict(obj[k], keys)
        sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if sd:
            return strip_prefix(sd)
    raise CheckpointError(f"no state dict found in checkpoint (looked for tensors or keys {list(keys)})")


def load_state_dict_checked(module: torch.nn.Module, sd: Mapping[str, torch.Tensor], source: str = "checkpoint",
                            strict: bool = True, assign: bool = False) -> None:
    """``load_state_dict`` that reports missing, unexpected and shape-mismatched keys by name
    (``assign``: the tensors become the module's, as ``load_state_dict(assign=True)``)."""
    own = module.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    mismatched = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if mismatched or (strict and (missing or unexpected)):
        def fmt(title, items):
            if not items:
                return ""
            more = f" ... and {len(items) - 10} more" if len(items) > 10 else ""
            return f"\n  {title} ({len(items)}): " + ", ".join(items[:10]) + more
        raise CheckpointError(
            f"{source} does not fit {type(module).__name__}:"
            + fmt("missing keys", missing) + fmt("unexpected keys", unexpected)
            + fmt("shape mismatches", mismatched)
        )
    module.load_state_dict(dict(sd), strict=strict, assign=assign)
