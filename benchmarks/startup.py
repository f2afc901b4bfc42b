"""Start-up of ``vlir restore`` on one 512 x 512 image: this tree against a base commit, side by side.

    python benchmarks/startup.py [--repeat 3] [--base 801769f] [--threads 1]
    python benchmarks/startup.py --base 53d71be --pipeline runs/default-v2c/pipeline --target 1.5 \
        --out benchmarks/results/startup_v2.json    # issue 23: the v2 model (chaining) against v1 before it

Both trees run from their source folders in the same session, interleaved (base, this, this,
base, ...: drift and load spikes hit both): each through a folder of links that maps the tree's
``package-dir`` (``vlir.core`` -> ``core/``, ...) put first on ``PYTHONPATH``, with this Python,
``python -m vlir.core.cli restore IMAGE -o DIR`` with the built-in default model (this tree: the
``--pipeline`` folder when given; its outputs then differ from the base's). The base is a git
worktree of ``--base`` made (once) at ``--base-dir``. Each repeat times the plain command (wall
clock of the process); one more run per tree, with ``-X importtime`` and timers around
``Pipeline.load`` and ``Pipeline.restore`` (or ``restore_steps``), says where the time goes: importing torch, importing
open_clip, loading the pipeline (building + weights, less an open_clip import inside it),
restoring, and the rest (interpreter, CLI, other imports, image files). The restored files of
both trees are compared pixel for pixel. Writes ``benchmarks/results/startup.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SHARED = Path(os.environ.get("VLIR_SHARED", ROOT.parent / "shared"))
BASE = "801769f"  # the commit before the start-up work

# run inside each tree: the CLI with timers around Pipeline.load / Pipeline.restore (and .restore_steps)
_TIMED = r"""
import json, sys, time
out, argv = sys.argv[1], sys.argv[2:]
T = {"load": 0.0, "restore": 0.0, "open_clip_in_load": False}
import vlir.core.pipeline as P
load = P.Pipeline.__dict__["load"].__func__
def timed_load(cls, *a, **k):
    had = "open_clip" in sys.modules
    t = time.perf_counter(); r = load(cls, *a, **k); T["load"] += time.perf_counter() - t
    T["open_clip_in_load"] = T["open_clip_in_load"] or (not had and "open_clip" in sys.modules)
    return r
depth = [0]
def timed(fn):  # restore, and restore_steps (step by step) where the tree has it; outermost call only
    def run(self, *a, **k):
        depth[0] += 1; t = time.perf_counter()
        try:
            return fn(self, *a, **k)
        finally:
            depth[0] -= 1
            if not depth[0]:
                T["restore"] += time.perf_counter() - t
    return run
P.Pipeline.load = classmethod(timed_load)
for name in ("restore", "restore_steps"):
    if hasattr(P.Pipeline, name):
        setattr(P.Pipeline, name, timed(getattr(P.Pipeline, name)))
from vlir.core.cli import main
rc = main(argv)
open(out, "w").write(json.dumps(T))
sys.exit(rc)
"""


def package_dirs(tree: Path) -> dict[str, str]:
    """``[tool.setuptools] package-dir`` of a tree's pyproject (package -> folder)."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    cfg = tomllib.loads((tree / "pyproject.toml").read_text())
    return cfg["tool"]["setuptools"].get("package-dir", {})


def link_tree(tree: Path, folder: Path) -> Path:
    """A folder to put on ``PYTHONPATH`` that imports ``vlir`` from ``tree``'s sources (no install)."""
    folder.mkdir(parents=True, exist_ok=True)
    top = folder / "vlir"
    top.mkdir(exist_ok=True)
    dirs = package_dirs(tree)
    if "vlir" in dirs:  # vlir itself is a folder of the tree (pkg/): link its files
        for f in (tree / dirs["vlir"]).iterdir():
            if not (top / f.name).exists():
                (top / f.name).symlink_to(f)
    for pkg, sub in dirs.items():
        if pkg != "vlir":
            link = folder / Path(*pkg.split("."))
            if not link.exists():
                link.symlink_to(tree / sub)
    return folder


def base_tree(commit: str, where: Path) -> Path:
    """A git worktree of ``commit`` at ``where`` (made when missing)."""
    if not (where / "pyproject.toml").is_file():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(where), commit], check=True,
                       capture_output=True, text=True)
    return where


def test_image(folder: Path, given: str | None) -> Path:
    """The image to restore: ``--image``, else a 512 x 512 crop of a shared photo or the demo image."""
    if given:
        return Path(given)
    from PIL import Image

    src = SHARED / "data" / "PolyU" / "test" / "noisy"
    files = sorted(src.glob("*.png")) if src.is_dir() else []
    if files:
        img = Image.open(files[0]).convert("RGB")
    else:
        from vlir.core.demo import demo_image

        img = Image.open(demo_image()).convert("RGB")
    img = img.resize((max(512, img.width), max(512, img.height))).crop((0, 0, 512, 512))
    path = folder / "image.png"
    img.save(path)
    return path


def run_once(label: str, path: Path, argv: list[str], env: dict[str, str], timed: Path | None = None) -> float:
    """Wall seconds of one ``vlir restore`` process (``timed``: with import and phase timers)."""
    run_env = {**env, "PYTHONPATH": str(path)}
    if timed is None:
        cmd = [sys.executable, "-m", "vlir.core.cli", *argv]
    else:
        cmd = [sys.executable, "-X", "importtime", "-c", _TIMED, str(timed), *argv]
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=run_env, capture_output=True, text=True, cwd=tempfile.gettempdir())
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"{label}: vlir restore failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    if timed is not None:
        timed.with_suffix(".imports").write_text(proc.stderr)
    return wall


def import_seconds(log: str, module: str) -> float:
    """Cumulative import seconds of ``module`` in a ``-X importtime`` log (0 when not imported)."""
    m = re.search(rf"^import time:\s+\d+ \|\s+(\d+) \| +{re.escape(module)}$", log, re.M)
    return int(m.group(1)) / 1e6 if m else 0.0


def phases(wall: float, timed: Path) -> dict[str, float]:
    t = json.loads(timed.read_text())
    log = timed.with_suffix(".imports").read_text()
    torch_s, clip_s = import_seconds(log, "torch"), import_seconds(log, "open_clip")
    load = t["load"] - (clip_s if t["open_clip_in_load"] else 0.0)
    out = {"wall": wall, "import torch": torch_s, "import open_clip": clip_s, "load pipeline": load,
           "restore": t["restore"]}
    out["rest"] = wall - sum(v for k, v in out.items() if k != "wall")
    return {k: round(v, 3) for k, v in out.items()}


def same_pixels(a: Path, b: Path) -> bool:
    import numpy as np
    from PIL import Image

    return bool(np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b))))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3, help="timed runs of each tree (default 3)")
    ap.add_argument("--base", default=BASE, help=f"base commit (default {BASE})")
    ap.add_argument("--base-dir", default=str(Path(tempfile.gettempdir()) / "vlir-base"),
                    help="where the base worktree is made (default: /tmp/vlir-base)")
    ap.add_argument("--image", help="image to restore (default: a 512 x 512 crop of a shared photo)")
    ap.add_argument("--threads", type=int, help="--threads N for vlir restore (default: torch's choice)")
    ap.add_argument("--pipeline", help="pipeline folder this tree restores with (default: the built-in model; "
                                       "the base always uses its built-in model)")
    ap.add_argument("--target", type=float, default=0.5, help="the ratio this/base aimed at (default 0.5)")
    ap.add_argument("--note", default="", help="free text stored with the results (e.g. the machine's load)")
    ap.add_argument("--out", default=str(RESULTS / "startup.json"))
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="vlir-startup-"))
    try:
        trees = {"base": base_tree(args.base, Path(args.base_dir)), "this": ROOT}
        paths = {k: link_tree(t, work / f"path-{k}") for k, t in trees.items()}
        image = test_image(work, args.image)
        extra = ["--threads", str(args.threads)] if args.threads else []
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VLIR_DEFAULT_PIPELINE")}

        model = ["--pipeline", str(Path(args.pipeline).resolve())] if args.pipeline else []

        def cmd(k: str, n: int) -> list[str]:
            return ["restore", str(image), "-o", str(work / f"out-{k}-{n}"), "--no-progress", *extra,
                    *(model if k == "this" else [])]

        for k in trees:  # warm the file cache (and the .pyc files) of both
            run_once(k, paths[k], cmd(k, 0), env)
        walls: dict[str, list[float]] = {k: [] for k in trees}
        for i in range(args.repeat):
            for k in (("base", "this") if i % 2 == 0 else ("this", "base")):
                walls[k].append(round(run_once(k, paths[k], cmd(k, i + 1), env), 3))
                print(f"run {i + 1} {k}: {walls[k][-1]:.2f} s", file=sys.stderr)
        breakdown = {}
        for k in trees:
            timed = work / f"timed-{k}.json"
            wall = run_once(k, paths[k], cmd(k, args.repeat + 1), env, timed=timed)
            breakdown[k] = phases(wall, timed)
        identical = same_pixels(work / "out-base-0" / image.name, work / "out-this-0" / image.name)
        med = {k: statistics.median(v) for k, v in walls.items()}
        res = {
            "benchmark": "startup", "command": "vlir restore IMAGE(512x512) -o DIR --no-progress" + (
                f" --threads {args.threads}" if args.threads else ""),
            "base": args.base, "this": _head(), "pipeline": args.pipeline or "built-in", "repeat": args.repeat,
            "walls_s": walls,
            "median_s": {k: round(v, 3) for k, v in med.items()}, "ratio": round(med["this"] / med["base"], 3),
            "target_ratio": args.target, "outputs_identical": identical, "phases_s": breakdown,
            "python": platform.python_version(), "cpus": os.cpu_count(), "load_average": _loadavg(),
            "note": args.note,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(res, indent=2) + "\n")
    tmp.replace(out)  # atomic
    for k in ("base", "this"):
        print(f"{k:<5} median {res['median_s'][k]:6.2f} s  phases: "
              + ", ".join(f"{p} {v:.2f}" for p, v in breakdown[k].items()))
    print(f"ratio this/base {res['ratio']:.3f} (target <= {args.target}); outputs identical: {identical}; wrote {out}")
    return 0


def _head() -> str:
    r = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return r.stdout.strip() + ("+changes" if dirty else "")


def _loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


if __name__ == "__main__":
    sys.exit(main())
