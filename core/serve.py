"""``vlir serve``: a local web page to try a pipeline on one's own images.

The page (``assets/serve/``: plain HTML, CSS and JavaScript, nothing fetched from elsewhere, no
telemetry; its Content-Security-Policy allows this server only) takes a dropped or picked image,
shows the degradation classes the perceiver recognised with their probabilities, the restoration
path (perceiver, conditioning, which expert or backbone ran, tiles), a before/after slider and a
download link. The degradation can be chosen, or typed as an instruction ("remove the rain"),
which is matched to a class word (:func:`match_instruction`).

The server is the standard library's ``ThreadingHTTPServer``; one image runs at a time per model
(a lock; other requests wait). Its HTTP API, used by the page and by scripts:

- ``GET /api/info``: pipeline name, class words, whether the degradation can be chosen, limits.
- ``POST /api/restore?name=FILE[&degradation=WORD | &instruction=TEXT]``, the image file as the
  body: JSON with the recognised classes, the class used, the path, and the input and the result
  as PNG data URLs. Bad uploads (empty, too big, too many pixels, not an image, an unknown class,
  an instruction naming no class) get status 4xx and ``{"error": message}``.

Importing this module imports no torch (``vlir --help`` builds every command's parser).
"""
from __future__ import annotations

import argparse
import base64
import json
import socket
import sys
import tempfile
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from .data.images import MAX_PIXELS, max_pixels_arg
from .errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    from .pipeline import Pipeline

ASSETS = Path(__file__).resolve().parent / "assets" / "serve"
PAGES = {"/": ("index.html", "text/html; charset=utf-8"),
         "/app.js": ("app.js", "text/javascript; charset=utf-8"),
         "/style.css": ("style.css", "text/css; charset=utf-8")}
# the page may load and call this server only: no CDN, no fonts, no analytics can slip in
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
       "connect-src 'self' blob:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
PORT = 8765
TILE = 512
MAX_UPLOAD_MB = 50.0
WAIT_S = 600  # how long a request waits for the model before "busy"
_DRAIN = 1 << 30  # an over-limit body up to this size is read and dropped, so the browser sees the message
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class ServeError(UserError):
    """A problem with the command (an option, the address): one line, exit code 2."""


class BadRequest(Exception):
    """A request the server refuses: an HTTP status and a message for the page."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


# -- instructions ------------------------------------------------------------------------------
def match_instruction(text: str, classes: list[str]) -> str:
    """The one class word an instruction names ("remove the rain" -> "rainy"), by
    :func:`vlir.core.chain.words_from_prompt`; none, or several (the page removes one at a time),
    is a :class:`BadRequest` naming the class words."""
    from .chain import SteerError, words_from_prompt

    try:
        found = words_from_prompt(text, classes)
    except SteerError:
        raise BadRequest(400, f"the instruction {text!r} names no degradation this model knows; "
                              f"use one of its words: {', '.join(classes)}") from None
    if len(found) > 1:
        found = [c for c in classes if c in found]
        raise BadRequest(400, f"the instruction {text!r} matches several degradations ({', '.join(found)}); "
                              "name one")
    return found[0]


# -- the model side -----------------------------------------------------------------------------
class Service:
    """A pipeline behind a lock, with the upload limits: what the HTTP handler calls."""

    def __init__(self, pipe: "Pipeline", name: str = "pipeline", *, tile: int | None = TILE,
                 overlap: int | None = None, max_pixels: int = MAX_PIXELS,
                 max_bytes: int = int(MAX_UPLOAD_MB * 1e6), wait_s: float = WAIT_S):
        from .chain import classes, why_not_steerable
        from .inference import tile_plan

        self.pipe, self.name = pipe, name
        self.tile, self.overlap = tile_plan(pipe, tile or None, overlap)
        self.max_pixels, self.max_bytes, self.wait_s = max_pixels, max_bytes, wait_s
        self.lock = threading.Lock()
        self.role, self.classes = classes(pipe)
        # a chosen class can steer the backbone when it is conditioned on the class probabilities
        self.steerable = why_not_steerable(pipe) is None

    def info(self) -> dict[str, Any]:
        return {"pipeline": self.name, "classes": self.classes, "steerable": self.steerable,
                "max_bytes": self.max_bytes, "max_pixels": self.max_pixels, "tile": self.tile}

    def choose(self, degradation: str | None, instruction: str | None) -> str | None:
        """The class to restore for (None: the recognised one), from a class word or an instruction."""
        degradation = (degradation or "").strip() or None
        instruction = (instruction or "").strip() or None
        if degradation is None and instruction is None:
            return None
        if not self.steerable:
            raise BadRequest(400, f"{self.name} cannot be told the degradation (its backbone is not routed by "
                                  "class probabilities); leave the choice on automatic")
        if degradation is not None:
            if degradation not in self.classes:
                raise BadRequest(400, f"unknown degradation {degradation!r}; this model knows "
                                      f"{', '.join(self.classes)}")
            return degradation
        return match_instruction(instruction, self.classes)

    def read(self, data: bytes, name: str):
        """The upload as ``read_image`` reads a file: (image [3, H, W], info); bad ones -> BadRequest."""
        from .data.images import IMAGE_SUFFIXES, ImageError, PixelLimitError, read_image

        if not data:
            raise BadRequest(400, "the upload is empty: choose an image file")
        suffix = Path(name).suffix.lower()
        with tempfile.TemporaryDirectory(prefix="vlir-serve-") as tmp:
            path = Path(tmp) / ("upload" + (suffix if suffix in IMAGE_SUFFIXES else ""))
            path.write_bytes(data)
            try:
                return read_image(path, max_pixels=self.max_pixels)
            except PixelLimitError as e:
                raise BadRequest(413, f"{name}: {e.reason.replace('--max-pixels N', 'vlir serve --max-pixels N')}"
                                 ) from None
            except ImageError as e:
                raise BadRequest(415, f"{name}: {e.reason}") from None

    def restore(self, data: bytes, name: str = "image", degradation: str | None = None,
                instruction: str | None = None) -> dict[str, Any]:
        """Restore one uploaded image file: the JSON answer of ``POST /api/restore``."""
        chosen = self.choose(degradation, instruction)
        img, info = self.read(data, name)
        if not self.lock.acquire(timeout=self.wait_s):
            raise BadRequest(503, "the model is busy with other images; try again in a moment")
        try:
            start = time.perf_counter()
            restored, perceptions, cond, done = self._run(img, chosen)
            seconds = time.perf_counter() - start
        finally:
            self.lock.release()
        from .restore import summarize

        summary = summarize(perceptions)
        if done is None:
            used = summary.get("degradation")
        else:  # step by step: the class of its first step (none when the image was left as it is)
            used = done.steps[0].word if done.steps else None
        h, w = img.shape[-2:]
        tiled = self.tile is not None and max(h, w) > self.tile
        return {
            "name": f"{Path(name).stem or 'image'}_restored.png", "width": w, "height": h,
            "degradation": summary.get("degradation"), "confidence": summary.get("confidence"),
            "probabilities": summary.get("probabilities", {}), "quality_score": summary.get("quality_score"),
            "used": chosen or used, "chosen": chosen,
            "instruction": instruction.strip() if chosen and not (degradation or "").strip() else None,
            "path": self.path(summary, chosen, cond, tiled, done), "steps": str(done) if done is not None else None,
            "tiled": tiled, "seconds": round(seconds, 3),
            "note": info.get("converted"),
            "before": _png_url(img, 8), "image": _png_url(restored, 16 if info["bit_depth"] > 8 else 8),
        }

    def _run(self, img, chosen: str | None):
        """(restored image, perceptions, the conditioning of the input, the chain's Path or None): as
        ``vlir restore`` does it, step by step where the pipeline chains by default."""
        import torch

        from .api import pipeline_dtype
        from .chain import restore_auto, steer
        from .inference import run_backbone

        pipe = self.pipe
        with torch.inference_mode():
            lq = img[None].to(pipe.device, pipeline_dtype(pipe))
            gen = torch.Generator(device=pipe.device).manual_seed(0) if pipe.process is not None else None
            done = None
            if chosen is None:
                out, perceptions, paths = restore_auto(pipe, lq, tile=self.tile, overlap=self.overlap, generator=gen)
                cond, done = pipe.condition(perceptions), (paths[0] if paths is not None else None)
            else:  # the perception as the model gave it, routed as if it had seen the chosen class
                perceptions = pipe.perceive(lq)
                cond = pipe.condition(steer(pipe, perceptions, chosen))
                out = run_backbone(pipe, lq, cond, tile=self.tile, overlap=self.overlap, generator=gen).clamp(0, 1)
        return out[0].float().cpu(), perceptions, cond, done

    def path(self, summary: dict[str, Any], chosen: str | None, cond, tiled: bool, done=None) -> list[str]:
        """The restoration path in words: perceiver, conditioning, the backbone (which expert, or the
        chain's steps ``done``), tiles."""
        import torch

        spec, pipe = self.pipe.spec, self.pipe
        steps = []
        if self.role is not None:
            seen = (f": {summary['degradation']} ({summary['confidence']:.0%})" if "degradation" in summary else "")
            kind = spec.perceivers[list(pipe.perceivers).index(self.role)].type
            steps.append(f"perceiver {self.role}" + (f" ({kind})" if kind != self.role else "") + seen)
        if chosen is not None:
            steps.append(f"degradation chosen: {chosen}")
        c = spec.condition
        if cond is not None:
            source = c.vector_source if c is not None else "degradation"
            what = {"probs": "class probabilities", "degradation": "degradation embedding",
                    "quality": "quality probabilities"}.get(source)
            parts = ([what] if what and cond.vector is not None else []) + (["content tokens"] if cond.tokens is not None else [])
            if parts:
                steps.append("conditioning: " + " + ".join(parts))
        b = pipe.backbone
        if done is not None:
            steps.append(f"step by step ({spec.backbone.type}): {done}")
        elif spec.backbone.type == "experts" and cond is not None and cond.vector is not None:
            if b.params.routing == "hard":
                k = int(cond.vector[0].argmax())
                label = self.classes[k] if k < len(self.classes) else f"class {k}"
                net = b.nets[k]
                steps.append(f"backbone experts: expert {k} of {len(b.nets)} ({label})"
                             + (": no restoration (identity)" if isinstance(net, torch.nn.Identity)
                                else f", a {b.params.expert} of {sum(t.numel() for t in net.parameters()) / 1e6:.1f}M "
                                     "parameters"))
            else:
                steps.append(f"backbone experts: {len(b.nets)} {b.params.expert} experts mixed by the probabilities")
        else:
            n = sum(t.numel() for t in b.parameters())
            steps.append(f"backbone {spec.backbone.type} ({n / 1e6:.1f}M parameters)")
        if pipe.process is not None:
            steps.append(f"process {spec.process.type} (sampling)")
        steps.append(f"tiles of {self.tile}x{self.tile} pixels, overlap {self.overlap}" if tiled else "whole image")
        return steps


def size_text(n: int) -> str:
    """A byte count as people read it: 512 bytes, 12.3 kB, 4.5 MB (decimal units, as --max-upload-mb)."""
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB" if n >= 1e3 else f"{n} bytes"


def _png_url(img, bit_depth: int) -> str:
    """A [3, H, W] image in [0, 1] as a PNG data URL (16-bit when asked)."""
    from .data.images import write_image

    with tempfile.TemporaryDirectory(prefix="vlir-serve-") as tmp:
        path = write_image(Path(tmp) / "out.png", img, bit_depth=bit_depth)
        return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


# -- HTTP ---------------------------------------------------------------------------------------
class Handler(BaseHTTPRequestHandler):
    """The page and the JSON API of one :class:`Service` (``self.server.service``)."""

    server_version = "vlir-serve"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        if getattr(self.server, "verbose", False):
            super().log_message(format, *args)

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _host_ok(self) -> bool:
        """On a loopback address, only requests naming it (no DNS rebinding from other web pages)."""
        if self.server.server_address[0] not in _LOOPBACK and not self.server.server_address[0].startswith("127."):
            return True
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0].strip("[]").lower()
        return host in _LOOPBACK or host.startswith("127.")

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if not self._host_ok():
            return self._json(403, {"error": "unexpected Host header"})
        route = urlsplit(self.path).path
        if route == "/api/info":
            return self._json(200, self.server.service.info())
        if route in PAGES:
            file, ctype = PAGES[route]
            return self._send(200, (ASSETS / file).read_bytes(), ctype)
        self._json(404, {"error": f"no page {route}"})

    def do_POST(self) -> None:  # noqa: N802
        if not self._host_ok():
            return self._json(403, {"error": "unexpected Host header"})
        url = urlsplit(self.path)
        if url.path != "/api/restore":
            return self._json(404, {"error": f"no endpoint {url.path}"})
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        service: Service = self.server.service
        name = Path(query.get("name", "image")).name or "image"
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            return self._json(411, {"error": "the upload has no Content-Length"})
        if length > service.max_bytes:
            self._drop(length)
            return self._json(413, {"error": f"{name} is {size_text(length)}; the limit is "
                                             f"{size_text(service.max_bytes)} (vlir serve --max-upload-mb)"})
        data = self.rfile.read(length) if length > 0 else b""
        try:
            self._json(200, service.restore(data, name, query.get("degradation"), query.get("instruction")))
        except BadRequest as e:
            self._json(e.status, {"error": e.message})
        except Exception as e:  # noqa: BLE001 - the page gets a message, the console the traceback
            traceback.print_exc(file=sys.stderr)
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            if isinstance(e, MemoryError) or "out of memory" in msg.lower():
                msg = f"out of memory ({msg}); restart vlir serve with a smaller --tile"
            self._json(500, {"error": f"restoring {name} failed: {type(e).__name__}: {msg}"})

    def _drop(self, length: int) -> None:
        if length > _DRAIN:
            self.close_connection = True
            return
        while length > 0:
            chunk = self.rfile.read(min(length, 1 << 20))
            if not chunk:
                break
            length -= len(chunk)


class Server(ThreadingHTTPServer):
    daemon_threads = True


class Server6(Server):
    address_family = socket.AF_INET6


def make_server(service: Service | None, host: str = "127.0.0.1", port: int = PORT, verbose: bool = False
                ) -> Server:
    """A server (not yet serving) for ``service`` on ``host:port`` (port 0: a free one; an IPv6
    host such as ``::1`` listens on IPv6). ``service`` may be set later, before serving."""
    server = (Server6 if ":" in host else Server)((host, port), Handler)
    server.service = service
    server.verbose = verbose
    return server


# -- the command ---------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pipeline", default="default", metavar="P",
                   help="'default' (the built-in model), a pipeline folder, a spec file or a Hugging Face "
                        "repository id (default: default)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=PORT, help=f"port (default {PORT}; 0: any free port)")
    p.add_argument("--tile", type=int, default=TILE, metavar="N",
                   help=f"images larger than N pixels run in N x N tiles (default {TILE}; 0: whole images)")
    p.add_argument("--max-pixels", type=max_pixels_arg, default=MAX_PIXELS, metavar="N",
                   help=f"refuse images over N pixels, checked before decoding (default {MAX_PIXELS:,}; 0: no limit)")
    p.add_argument("--max-upload-mb", type=float, default=MAX_UPLOAD_MB, metavar="MB",
                   help=f"refuse uploads over MB megabytes (default {MAX_UPLOAD_MB:g})")
    p.add_argument("--verbose", action="store_true", help="log every request")


def run(args: argparse.Namespace) -> int:
    from .restore import RestoreError  # an unusable --device

    try:
        return _serve(args)
    except (ServeError, RestoreError) as e:
        print(f"vlir serve: error: {e}", file=sys.stderr)
        return 2


def _serve(args: argparse.Namespace) -> int:
    if not 0 <= args.port <= 65535:
        raise ServeError(f"--port must be in 0..65535, got {args.port}")
    if args.max_upload_mb <= 0:
        raise ServeError(f"--max-upload-mb must be positive, got {args.max_upload_mb:g}")
    from .inference import TilingError, tiling

    tile = args.tile or None
    try:
        tiling(tile)  # a bad --tile fails before the slow model load
    except TilingError as e:
        raise ServeError(str(e)) from None
    import torch

    from .api import load
    from .cli import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    try:  # the address first: a port in use is said at once, not after loading the model
        server = make_server(None, args.host, args.port, args.verbose)
    except OSError as e:
        raise ServeError(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}; choose another --port") from None
    try:
        pipe = load(args.pipeline, device=device)
    except BaseException:
        server.server_close()
        raise
    server.service = service = Service(pipe, Path(args.pipeline).name if args.pipeline != "default" else "default model",
                                       tile=tile, max_pixels=args.max_pixels, max_bytes=int(args.max_upload_mb * 1e6))
    host, port = server.server_address[:2]
    shown = f"[{host}]" if ":" in host else host
    if host not in _LOOPBACK and not host.startswith("127."):
        print(f"vlir serve: warning: listening on {host}: other machines can reach this page", file=sys.stderr)
    print(f"vlir serve: {service.name} on http://{shown}:{port}/ (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
