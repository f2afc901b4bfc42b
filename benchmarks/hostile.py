"""Hostile inputs: is each refused within seconds and under 1.5 GB peak RSS?

    python benchmarks/hostile.py [--timeout 60] [--cap-gb 4] [--out benchmarks/results/hostile.json]

Each case runs one ``vlir`` command in its own process: an alias bomb in a nested field
(``experts.expert_params``) read by ``vlir spec validate``, ``vlir train`` and from a pipeline folder's ``spec.yaml``
by ``vlir restore --pipeline``, YAML nested 5000 deep, oversized params (NAFNet width 1e8, 100000
experts) validated and built, and a small PNG declaring 12000x12000 pixels. Measured per case: exit
code, wall seconds and the child's peak RSS (``os.wait4``'s rusage of that one child, as
``resource.getrusage(RUSAGE_CHILDREN)`` gives for a single child). Target: refused with a message
(a non-zero exit without a traceback: 2 for a refused spec, 1 for a refused image), under 10 s and
1.5 GB. As a safety net for the machine each child runs under an address
space cap (``--cap-gb``) and a timeout; a case stopped by either has missed the target.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_S, TARGET_MIB = 10.0, 1536


def alias_bomb(levels: int = 9, fan: int = 10) -> str:
    """Under 1 KB; ``experts.expert_params`` expands to ``fan ** (levels + 1)`` strings."""
    lines = ["vlir: 1", "backbone:", "  type: experts", "  params:", "    expert_params:",
             "      a0: &a0 [" + ",".join(["x"] * fan) + "]"]
    lines += [f"      a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * fan) + "]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


def png_declaring(path: Path, h: int, w: int) -> Path:
    """An RGB PNG of h x w black pixels, written row by row (small on disk, small to write)."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    comp, row, parts = zlib.compressobj(9), b"\0" * (1 + 3 * w), []
    for _ in range(h):
        parts.append(comp.compress(row))
    parts.append(comp.flush())
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b""))
    return path


def small_png(path: Path) -> Path:
    return png_declaring(path, 32, 32)


def cases(tmp: Path) -> dict[str, tuple[list[str], int]]:
    """name -> (vlir arguments, input size in bytes)."""
    bomb = tmp / "bomb.yaml"
    bomb.write_text(alias_bomb())
    folder = tmp / "bomb-pipeline"
    folder.mkdir()
    (folder / "spec.yaml").write_text(alias_bomb(levels=8))
    deep = tmp / "deep.yaml"
    deep.write_text("vlir: 1\nbackbone: " + "{a: " * 5000 + "1" + "}" * 5000 + "\n")
    wide = tmp / "wide.yaml"
    wide.write_text("vlir: 1\nbackbone: {type: nafnet, params: {width: 100000000}}\n")
    many = tmp / "many.yaml"
    many.write_text("vlir: 1\nbackbone: {type: experts, params: {experts: 100000, expert_params: "
                    "{width: 8, enc_blk_nums: [1], middle_blk_num: 1, dec_blk_nums: [1]}}}\n")
    img = small_png(tmp / "small.png")
    huge = png_declaring(tmp / "huge.png", 12000, 12000)
    out = str(tmp / "out")
    return {
        "alias bomb: spec validate": (["spec", "validate", str(bomb)], bomb.stat().st_size),
        "alias bomb: train": (["train", str(bomb)], bomb.stat().st_size),
        "alias bomb: restore --pipeline": (["restore", str(img), "--pipeline", str(folder), "-o", out],
                                           (folder / "spec.yaml").stat().st_size),
        "5000 deep: spec validate": (["spec", "validate", str(deep)], deep.stat().st_size),
        "width 1e8: spec validate": (["spec", "validate", str(wide)], wide.stat().st_size),
        "width 1e8: restore --spec": (["restore", str(img), "--spec", str(wide), "-o", out], wide.stat().st_size),
        "100000 experts: spec validate": (["spec", "validate", str(many)], many.stat().st_size),
        "100000 experts: restore --spec": (["restore", str(img), "--spec", str(many), "-o", out],
                                           many.stat().st_size),
        "12000x12000 PNG: restore (default model)": (["restore", str(huge), "-o", out], huge.stat().st_size),
    }


def run(argv: list[str], timeout: float, cap_bytes: int) -> dict:
    exe = shutil.which("vlir")
    cmd = ([exe] if exe else [sys.executable, "-m", "vlir.core.cli"]) + argv

    def limits() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (cap_bytes, cap_bytes))

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, preexec_fn=limits, env=env)
        timed_out = False
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() - t0 > timeout:
                proc.send_signal(signal.SIGKILL)
                pid, status, usage = os.wait4(proc.pid, 0)
                timed_out = True
                break
            time.sleep(0.05)
        seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        text = log.read().decode(errors="replace")
    rss_mib = usage.ru_maxrss / 1024  # kilobytes on Linux
    rc = proc.returncode
    refused = rc > 0 and not timed_out and "Traceback" not in text  # a message, not a crash
    return {"command": "vlir " + " ".join(argv), "exit_code": rc, "seconds": round(seconds, 2),
            "peak_rss_mib": round(rss_mib, 1), "timed_out": timed_out, "traceback": "Traceback" in text,
            "refused": refused, "meets_target": refused and seconds < TARGET_S and rss_mib < TARGET_MIB,
            "output_tail": text.strip().splitlines()[-3:]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds before a case is killed")
    ap.add_argument("--cap-gb", type=float, default=4.0, help="address-space cap of each case (safety net)")
    ap.add_argument("--only", help="run the cases whose name contains this text")
    ap.add_argument("--out", default=str(RESULTS / "hostile.json"))
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (argv, size) in cases(Path(tmp)).items():
            if args.only and args.only not in name:
                continue
            r = {"case": name, "input_bytes": size, **run(argv, args.timeout, int(args.cap_gb * 2**30))}
            r["command"] = r["command"].replace(tmp, "$TMP")
            r["output_tail"] = [line.replace(tmp, "$TMP") for line in r["output_tail"]]
            results.append(r)
            flag = "ok " if r["meets_target"] else "MISS"
            print(f"{flag} {name:<42} exit {r['exit_code']:>4}  {r['seconds']:>6.2f} s  "
                  f"{r['peak_rss_mib']:>7.1f} MiB  {r['output_tail'][-1][:90] if r['output_tail'] else ''}",
                  flush=True)
    out = {"benchmark": "hostile", "target": {"refused": True, "seconds_below": TARGET_S, "peak_rss_mib_below": TARGET_MIB},
           "cap_gb": args.cap_gb, "timeout_s": args.timeout, "python": platform.python_version(),
           "machine": platform.machine(), "cpus": os.cpu_count(), "cases": results,
           "all_meet_target": all(r["meets_target"] for r in results)}
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = path.with_name(f".{path.name}.tmp")
    tmp_path.write_text(json.dumps(out, indent=2) + "\n")
    os.replace(tmp_path, path)  # atomic
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
