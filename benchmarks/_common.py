"""Shared helpers of the vlir benchmarks: machine info, timing, peak memory, isolated runs, output.

Each measurement runs in its own fresh process (:func:`run_isolated`), forked from a clean
forkserver that has imported torch but run nothing, so a measurement's peak RSS is its own.
Peak RSS is ``resource.getrusage(RUSAGE_SELF).ru_maxrss``; on Linux the high-water mark is reset
(``/proc/self/clear_refs``) once the model and inputs are built, so the reported delta is the
peak increase during inference.
"""
from __future__ import annotations

import gc
import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

RESULTS = Path(__file__).resolve().parent / "results"
MiB = 1024 * 1024


def offline() -> None:
    """Make sure nothing is downloaded (Hugging Face hub and friends stay offline)."""
    for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ.setdefault(k, "1")


def set_threads(n: int | None = None) -> int:
    """``torch.set_num_threads(n or os.cpu_count())``; returns the count."""
    import torch

    n = n or os.cpu_count() or 1
    torch.set_num_threads(n)
    return n


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(threads: int | None = None) -> dict[str, Any]:
    """CPU count, torch threads, torch version and device names (run it in a worker: imports torch)."""
    import torch

    threads = threads or os.cpu_count()
    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "torch_num_threads": threads,  # what every measurement sets
        "torch_num_threads_call": "torch.set_num_threads(os.cpu_count())" if threads == os.cpu_count()
        else f"torch.set_num_threads({threads}) (--threads)",
        "cpu": _cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
    }
    if info["cuda_available"]:
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    try:
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    return info


# -- memory -------------------------------------------------------------------------------------
def rss_bytes() -> int:
    """Current resident set size of this process."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return peak_rss_bytes()  # no /proc: the peak is the best we have


def peak_rss_bytes() -> int:
    """``ru_maxrss`` in bytes (KiB on Linux, bytes on macOS)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024


def reset_peak_rss() -> bool:
    """Reset the RSS high-water mark to the current RSS (Linux >= 4.0); False if unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakRSS:
    """``with PeakRSS() as m: ...`` -> ``m.baseline``, ``m.peak``, ``m.delta`` (bytes)."""

    def __enter__(self) -> "PeakRSS":
        gc.collect()
        self.baseline = rss_bytes()
        self.reset = reset_peak_rss()
        self.peak_before = peak_rss_bytes()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.peak = peak_rss_bytes()
        # without a reset ru_maxrss may still hold an older, higher peak: then the delta is a lower bound
        self.delta = max(0, self.peak - self.baseline)

    def as_dict(self) -> dict[str, Any]:
        out = {"baseline_rss_mib": self.baseline / MiB, "peak_rss_mib": self.peak / MiB,
               "peak_rss_delta_mib": self.delta / MiB}
        if not self.reset:
            out["note"] = "peak not reset (no /proc/self/clear_refs): delta is a lower bound"
        return out


# -- timing -------------------------------------------------------------------------------------
def time_calls(fn: Callable[[], Any], warmup: int, repeat: int, cuda: bool = False) -> list[float]:
    """Milliseconds of ``repeat`` calls of ``fn`` after ``warmup`` calls (CUDA events on GPU)."""
    import torch

    for _ in range(warmup):
        fn()
    if cuda:
        torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
    return times


def summary(times_ms: list[float]) -> dict[str, Any]:
    return {"median_ms": statistics.median(times_ms), "min_ms": min(times_ms), "max_ms": max(times_ms),
            "n": len(times_ms)}


def to_device(obj: Any, device: str) -> Any:
    """Tensors, Conditioning and containers of them moved to ``device``."""
    if hasattr(obj, "to") and callable(obj.to):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


# -- isolated runs ------------------------------------------------------------------------------
_WORKER: dict[str, Any] = {"preload": ["torch"], "threads": None}


def start_workers(preload: list[str], threads: int | None = None) -> None:
    """Modules the forkserver imports once and the torch thread count of every measurement
    (default ``os.cpu_count()``); call before the first :func:`run_isolated`."""
    _WORKER["preload"] = ["torch", *preload]
    _WORKER["threads"] = threads
    if _context().get_start_method() == "forkserver":
        from multiprocessing import forkserver

        forkserver.ensure_running()  # the server imports the preload while this process goes on


def _context() -> Any:
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(_WORKER["preload"])
        return ctx
    return mp.get_context("spawn")


def _child(conn: Any, threads: int | None, fn: Callable[..., Any], kwargs: dict[str, Any]) -> None:
    try:
        set_threads(threads)
        conn.send(("ok", fn(**kwargs)))
    except BaseException:  # noqa: BLE001 - reported to the parent
        conn.send(("error", traceback.format_exc(limit=6)))
    finally:
        conn.close()


def run_isolated(fn: Callable[..., Any], timeout: float | None = None, **kwargs: Any) -> dict[str, Any]:
    """``fn(**kwargs)`` (a module-level function returning a dict) in a fresh process.

    Returns its dict, or ``{"error": text}`` when it raised, died or ran past ``timeout`` seconds.
    """
    ctx = _context()
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(send, _WORKER["threads"], fn, kwargs), daemon=True)
    proc.start()
    send.close()
    try:
        if not recv.poll(timeout):
            proc.kill()
            return {"error": f"timed out after {timeout} s"}
        status, value = recv.recv()
    except EOFError:
        proc.join(10)
        return {"error": f"worker died (exit code {proc.exitcode}; out of memory?)"}
    finally:
        recv.close()
        proc.join(30)
        if proc.is_alive():
            proc.kill()
    return value if status == "ok" else {"error": value}


# -- output -------------------------------------------------------------------------------------
def busy_warning(machine: dict[str, Any]) -> str | None:
    """A warning when the 1-minute load average says other work shares the CPUs."""
    load = (machine.get("load_average") or [0.0])[0]
    cpus = machine.get("cpu_count") or 1
    if load > 0.5 * cpus:
        return (f"machine busy at start (load average {load:.1f} on {cpus} CPUs): CPU timings are unreliable, "
                "and with several torch threads they can be many times too slow (threads wait for each other)")
    return None


def md_table(headers: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        return "n/a" if v is None else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt(v: float | None, digits: int = 1) -> str | None:
    return None if v is None else f"{v:,.{digits}f}"


def write_outputs(data: dict[str, Any], markdown: str, out: str | Path) -> tuple[Path, Path]:
    """JSON to ``out`` and the markdown beside it (same stem, ``.md``)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    md = out.with_suffix(".md")
    md.write_text(markdown + "\n", encoding="utf-8")
    return out, md


def run_and_write(args: Any, run: Callable[[Any], dict[str, Any]], markdown: Callable[[dict[str, Any]], str]) -> int:
    """A one-process benchmark's main: ``run(args)``, then its JSON at ``args.out`` and markdown beside it."""
    data = run(args)
    out, md = write_outputs(data, markdown(data).rstrip("\n"), args.out)
    print(f"wrote {out} and {md}")
    return 0


def reporter(res: dict, machine: dict):
    """``log(msg)`` with elapsed seconds on stderr, and ``check(label, result)`` recording a
    measurement's error in ``res["errors"]``; records the busy-machine warning in ``res``."""
    import sys
    import time

    t_start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:7.1f} s] {msg}", file=sys.stderr, flush=True)

    warning = busy_warning(machine)
    if warning:
        res["warning"] = warning
        log(f"WARNING: {warning}")

    def check(label: str, r: dict) -> dict:
        if "error" in r:
            res["errors"].append(f"{label}: {r['error'].strip().splitlines()[-1]}")
            log(f"  ERROR {label}: {r['error']}")
        return r

    return log, check


def md_footer(res: dict[str, Any]) -> list[str]:
    """Markdown lines for a result's errors and busy-machine warning (empty when there are none)."""
    out: list[str] = []
    if res["errors"]:
        out += ["## Errors", ""] + [f"- {e}" for e in res["errors"]] + [""]
    if "warning" in res:
        out += [f"**Warning:** {res['warning']}.", ""]
    return out


def timing_devices(setting: str, cuda_available: bool) -> list[str]:
    """The devices ``--device`` names: ``auto`` the CPU and the GPU where there is one."""
    if setting == "cuda":
        if not cuda_available:
            raise SystemExit("--device cuda: torch sees no CUDA device here")
        return ["cuda"]
    return ["cpu"] + (["cuda"] if setting == "auto" and cuda_available else [])


def add_timing_arguments(ap: Any) -> None:
    """``--warmup``, ``--device``, ``--threads`` and ``--timeout``, shared by the isolated benchmarks."""
    ap.add_argument("--warmup", type=int, default=1, help="untimed calls before timing (default 1)")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                    help="auto: CPU, and GPU too when torch.cuda.is_available(); cuda: the GPU alone")
    ap.add_argument("--threads", type=int,
                    help="torch threads per measurement (default os.cpu_count(); 1 avoids thread thrashing "
                         "on a busy machine)")
    ap.add_argument("--timeout", type=float, help="seconds allowed per measurement (default 3600; quick 300)")
