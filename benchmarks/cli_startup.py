"""Wall time of `vlir --help` and `vlir components` (goal: under 1 s each).

    python benchmarks/cli_startup.py [--repeat 5] [--out benchmarks/results/cli_startup.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = {"vlir --help": ["--help"], "vlir components": ["components"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "cli_startup.json"))
    args = ap.parse_args()
    exe = shutil.which("vlir")
    base = [exe] if exe else [sys.executable, "-m", "vlir.core.cli"]
    results = {}
    for label, argv in COMMANDS.items():
        subprocess.run(base + argv, capture_output=True, check=True)  # warm the file cache
        times = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            subprocess.run(base + argv, capture_output=True, check=True)
            times.append(time.perf_counter() - t)
        results[label] = {"median_s": round(statistics.median(times), 4), "min_s": round(min(times), 4),
                          "max_s": round(max(times), 4), "goal_s": 1.0, "meets_goal": statistics.median(times) < 1.0}
        print(f"{label:<18} median {results[label]['median_s']:.3f} s (min {results[label]['min_s']:.3f})")
    out = {"benchmark": "cli_startup", "python": platform.python_version(), "machine": platform.machine(),
           "cpus": __import__("os").cpu_count(), "repeat": args.repeat, "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
