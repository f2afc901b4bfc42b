"""``vlir serve``: the HTTP API (urllib) and the page end to end in headless Chromium (selenium).

The server runs in a thread on a free port with a tiny pipeline (a random tiny DA-CLIP perceiver
routing to three tiny NAFNet experts), saved to a folder and opened with ``vlir.load``.
``VLIR_SERVE_SCREENSHOT=docs/serve.png`` makes :func:`test_screenshot` restore a rainy photo with
the default model in the browser and save the page as that PNG (the README's screenshot).
"""
from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vlir
from vlir.core.pipeline import Pipeline
from vlir.core.serve import BadRequest, Service, make_server, match_instruction

TINY = {"width": 8, "enc_blk_nums": [1], "middle_blk_num": 1, "dec_blk_nums": [1]}
CLASSES = ["noisy", "jpeg-compressed", "rainy"]
SPEC = {"perceivers": [{"type": "daclip", "preset": "tiny", "params": {"degradations": CLASSES}}],
        "backbone": {"type": "experts", "params": {"expert_params": TINY}},
        "condition": {"vector": "probs", "tokens": False}}


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    torch.manual_seed(0)
    built = Pipeline.from_spec(SPEC, build_losses=False)
    with torch.no_grad():  # experts that differ (NAFNet's output scales start at zero)
        for p in built.backbone.parameters():
            p.add_(0.05 * torch.randn_like(p))
    folder = built.save(tmp_path_factory.mktemp("tiny") / "pipeline")
    return vlir.load(folder)


@pytest.fixture(scope="module")
def served(pipe):
    service = Service(pipe, "tiny", tile=32)
    server = make_server(service, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield service, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def png(h: int, w: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def post(base: str, query: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(f"{base}/api/restore?{query}", data=body, method="POST", headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def decode(data_url: str) -> Image.Image:
    head, _, b64 = data_url.partition(",")
    assert head == "data:image/png;base64"
    img = Image.open(io.BytesIO(base64.b64decode(b64)))
    img.load()
    return img


def as_tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)


# -- instructions ---------------------------------------------------------------------------------
@pytest.mark.parametrize("text, word", [
    ("remove the rain", "rainy"), ("Derain, please", "rainy"), ("denoise", "noisy"), ("too noisy", "noisy"),
    ("fix the JPEG compression", "jpeg-compressed"), ("compressed badly", "jpeg-compressed")])
def test_instruction_maps_to_a_class_word(text, word):
    assert match_instruction(text, CLASSES) == word


def test_instruction_naming_no_class_or_several_is_refused():
    with pytest.raises(BadRequest, match=r"names no degradation .* noisy, jpeg-compressed, rainy"):
        match_instruction("make it prettier", CLASSES)
    with pytest.raises(BadRequest, match=r"matches several degradations \(noisy, rainy\)"):
        match_instruction("remove rain and noise", CLASSES)
    assert match_instruction("brighten the low light", ["low-light", "hazy"]) == "low-light"
    assert match_instruction("dehaze", ["low-light", "hazy"]) == "hazy"


# -- HTTP API -----------------------------------------------------------------------------------
def test_info_and_page_are_self_contained(served):
    service, base = served
    with urllib.request.urlopen(f"{base}/api/info") as r:
        info = json.load(r)
    assert info["classes"] == CLASSES and info["steerable"] is True and info["tile"] == 32
    with urllib.request.urlopen(f"{base}/") as r:
        page = r.read().decode()
        csp = r.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "connect-src 'self'" in csp
    for name in ("app.js", "style.css"):
        with urllib.request.urlopen(f"{base}/{name}") as r:
            text = r.read().decode()
        assert not re.search(r"https?://", text), f"{name} refers to another host"
    assert not re.search(r"https?://", page) and 'src="app.js"' in page
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"{base}/nothing")
    assert e.value.code == 404


def test_restore_returns_classes_path_and_the_restored_image(served, pipe):
    service, base = served
    status, res = post(base, "name=photo.png", png(24, 30))
    assert status == 200, res
    assert list(res["probabilities"]) == CLASSES
    assert sum(res["probabilities"].values()) == pytest.approx(1, abs=1e-4)
    assert res["degradation"] == max(res["probabilities"], key=res["probabilities"].get) == res["used"]
    assert res["chosen"] is None and res["name"] == "photo_restored.png" and not res["tiled"]
    k = CLASSES.index(res["degradation"])
    assert res["path"][0].startswith("perceiver daclip: ")
    assert f"backbone experts: expert {k} of 3 ({res['degradation']})" in res["path"][2]
    assert res["path"][-1] == "whole image"
    before, after = decode(res["before"]), decode(res["image"])
    assert before.size == after.size == (30, 24) and (res["width"], res["height"]) == (30, 24)
    # the image is the pipeline's own result, as pipe.restore gives it
    expected, _ = pipe.restore(as_tensor(before)[None])
    assert (as_tensor(after) - expected[0]).abs().max() <= 0.5 / 255 + 1e-6


def test_chosen_degradation_routes_to_its_expert(served, pipe):
    service, base = served
    body = png(24, 24, seed=1)
    for query, word in [("degradation=rainy", "rainy"), ("instruction=remove+the+rain", "rainy"),
                        ("degradation=noisy", "noisy")]:
        status, res = post(base, f"name=a.png&{query}", body)
        assert status == 200, res
        k = CLASSES.index(word)
        assert res["chosen"] == res["used"] == word
        assert "degradation chosen: " + word in res["path"]
        assert any(step.startswith(f"backbone experts: expert {k} of 3 ({word})") for step in res["path"])
        assert res["instruction"] == ("remove the rain" if query.startswith("instruction") else None)
        lq = as_tensor(decode(res["before"]))[None]
        with torch.no_grad():
            expected = pipe.backbone.nets[k](lq).clamp(0, 1)[0]
        assert (as_tensor(decode(res["image"])) - expected).abs().max() <= 0.5 / 255 + 1e-6


def test_sixteen_bit_input_gives_a_sixteen_bit_result(served):
    service, base = served
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(4).integers(0, 65536, (20, 20), dtype=np.uint16)).save(buf, "PNG")
    status, res = post(base, "name=scan.png", buf.getvalue())
    assert status == 200, res
    depth = {k: base64.b64decode(res[k].partition(",")[2])[24] for k in ("image", "before")}  # IHDR bit depth
    assert depth == {"image": 16, "before": 8} and decode(res["image"]).size == (20, 20)
    assert "16-bit" in res["note"]


def test_import_is_light():
    from conftest import imports_torch

    assert not imports_torch("vlir.core.serve")


def test_large_images_run_in_tiles(served, pipe):
    service, base = served
    status, res = post(base, "name=big.png", png(40, 72, seed=2))
    assert status == 200, res
    assert res["tiled"] and res["path"][-1] == "tiles of 32x32 pixels, overlap 8"
    expected, _ = pipe.restore(as_tensor(decode(res["before"]))[None], tile=32)
    assert decode(res["image"]).size == (72, 40)
    assert (as_tensor(decode(res["image"])) - expected[0]).abs().max() <= 0.5 / 255 + 1e-6


def test_bad_uploads_get_a_clear_message(served, monkeypatch):
    service, base = served
    assert post(base, "name=notes.txt", b"just some text") == (
        415, {"error": "notes.txt: not a recognised image format (corrupt or not an image)"})
    assert post(base, "name=x.png", b"") == (400, {"error": "the upload is empty: choose an image file"})
    status, res = post(base, "name=cut.png", png(24, 24)[:200])
    assert status == 415 and res["error"].startswith("cut.png: ") and "truncated" in res["error"]
    status, res = post(base, "name=x.png&degradation=foggy", png(8, 8))
    assert status == 400 and res["error"] == "unknown degradation 'foggy'; this model knows noisy, jpeg-compressed, rainy"
    status, res = post(base, "name=x.png&instruction=make+it+nice", png(8, 8))
    assert status == 400 and "names no degradation" in res["error"]
    monkeypatch.setattr(service, "max_pixels", 20 * 20)
    status, res = post(base, "name=wide.png", png(24, 24))
    assert status == 413 and res["error"].startswith("wide.png: 24x24 pixels") and "vlir serve --max-pixels" in res["error"]
    monkeypatch.setattr(service, "max_bytes", 1000)
    status, res = post(base, "name=heavy.png", png(64, 64))
    assert status == 413 and re.fullmatch(r"heavy\.png is \d+\.\d kB; the limit is 1\.0 kB \(vlir serve --max-upload-mb\)",
                                          res["error"]), res


def test_one_image_at_a_time_per_model(served, pipe):
    service, base = served
    active, peak, lock = [0], [0], threading.Lock()

    def enter(*_):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.2)

    def leave(*_):
        with lock:
            active[0] -= 1

    hooks = [pipe.backbone.register_forward_pre_hook(enter), pipe.backbone.register_forward_hook(leave)]
    try:
        results = []
        threads = [threading.Thread(target=lambda s=s: results.append(post(base, "name=a.png", png(16, 16, s))))
                   for s in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        for h in hooks:
            h.remove()
    assert [s for s, _ in results] == [200, 200, 200]
    assert peak[0] == 1


def test_busy_model_answers_503(served, monkeypatch):
    service, base = served
    monkeypatch.setattr(service, "wait_s", 0.05)
    with service.lock:
        status, res = post(base, "name=a.png", png(8, 8))
    assert status == 503 and "busy" in res["error"]


def test_foreign_host_header_is_refused(served):
    service, base = served
    req = urllib.request.Request(f"{base}/api/info", headers={"Host": "attacker.example:80"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req)
    assert e.value.code == 403


def test_pipeline_not_routed_by_classes_cannot_be_steered():
    spec = {"perceivers": [{"type": "daclip", "preset": "tiny", "params": {"degradations": CLASSES}}],
            "backbone": {"type": "nafnet", "preset": "tiny"}}
    service = Service(Pipeline.from_spec(spec, build_losses=False).eval(), "plain", tile=None)
    assert service.info()["steerable"] is False
    with pytest.raises(BadRequest, match="cannot be told the degradation"):
        service.restore(png(16, 16), "a.png", degradation="noisy")
    res = service.restore(png(16, 16), "a.png")
    assert res["path"][-2].startswith("backbone nafnet (") and res["path"][-1] == "whole image"
    assert decode(res["image"]).size == (16, 16)


# -- the command --------------------------------------------------------------------------------
def test_command_rejects_bad_options_before_loading(tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    for args, msg in [(["--port", "70000"], "--port must be in 0..65535, got 70000"),
                      (["--tile", "4"], "--tile must be at least 8 pixels, got 4"),
                      (["--max-upload-mb", "0"], "--max-upload-mb must be positive"),
                      (["--port", str(port), "--pipeline", str(tmp_path / "nothing")],
                       f"cannot listen on 127.0.0.1:{port}: Address already in use; choose another --port"),
                      (["--port", "0", "--pipeline", str(tmp_path / "nothing")],
                       f"vlir.load('{tmp_path / 'nothing'}'): not 'default', a pipeline folder")]:
        out = subprocess.run([sys.executable, "-m", "vlir.core.cli", "serve", *args], capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 2 and f"vlir serve: error: {msg}" in out.stderr, out.stderr
    taken.close()


def test_command_serves_a_pipeline_folder(pipe, tmp_path):
    folder = pipe.save(tmp_path / "p")
    proc = subprocess.Popen([sys.executable, "-m", "vlir.core.cli", "serve", "--pipeline", str(folder), "--port", "0",
                             "--device", "cpu", "--threads", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        line = proc.stdout.readline()
        m = re.search(r"on (http://127\.0\.0\.1:\d+/) \(Ctrl-C to stop\)", line)
        assert m, (line, proc.stderr.read() if proc.poll() is not None else "")
        with urllib.request.urlopen(m.group(1) + "api/info", timeout=60) as r:
            info = json.load(r)
        assert info["pipeline"] == "p" and info["classes"] == CLASSES and info["tile"] == 512
        status, res = post(m.group(1).rstrip("/"), "name=a.png&instruction=denoise", png(16, 16))
        assert status == 200 and res["used"] == "noisy"
    finally:
        proc.terminate()
        proc.wait(30)
        proc.stdout.close()
        proc.stderr.close()


# -- the page in headless Chromium ----------------------------------------------------------------
def chrome(width: int = 1280, height: int = 860):
    pytest.importorskip("selenium", reason="the browser test needs selenium (pip install selenium)")
    binary = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    driver = shutil.which("chromedriver")
    if not (binary and driver):
        pytest.skip("the browser test needs headless Chromium: apt-get install chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-extensions", f"--window-size={width},{height}", "--hide-scrollbars"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=DriverService(executable_path=driver), options=opts)


def wait_state(driver, timeout: float = 120) -> str:
    """Wait until the page is done or shows an error; its ``body[data-state]``."""
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(
        lambda d: d.execute_script("return document.body.dataset.state") in ("done", "error"))
    return driver.execute_script("return document.body.dataset.state")


def upload(driver, path: Path) -> str:
    from selenium.webdriver.common.by import By

    driver.execute_script("document.body.dataset.state = 'idle'")
    driver.find_element(By.ID, "file").send_keys(str(path))
    return wait_state(driver)


def open_page(driver, base: str, n_classes: int) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(base + "/")
    WebDriverWait(driver, 30).until(
        lambda d: d.execute_script("return document.querySelectorAll('#degradation option').length") == n_classes + 1)


def test_page_in_headless_chromium(served, tmp_path, monkeypatch):
    from selenium.webdriver.common.by import By

    service, base = served
    driver = chrome()
    try:
        open_page(driver, base, len(CLASSES))
        assert driver.find_element(By.ID, "pipeline").text == "tiny"
        photo = tmp_path / "street.png"
        photo.write_bytes(png(40, 56, seed=3))  # larger than the tile (32): runs in tiles
        assert upload(driver, photo) == "done", driver.find_element(By.ID, "message").text
        rows = driver.find_elements(By.CSS_SELECTOR, "#classes li")
        assert sorted(r.get_attribute("data-class") for r in rows) == sorted(CLASSES)
        assert all(re.fullmatch(r"\d+\.\d%", r.find_element(By.CLASS_NAME, "p").text) for r in rows)
        top = driver.find_element(By.CSS_SELECTOR, "#classes li.top").get_attribute("data-class")
        path = [li.text for li in driver.find_elements(By.CSS_SELECTOR, "#path li")]
        assert path[0].startswith(f"perceiver daclip: {top}") and "tiles of 32x32 pixels, overlap 8" in path
        assert "56×40 restored in" in driver.find_element(By.ID, "status").text
        # the download: a PNG of the input's size
        link = driver.find_element(By.ID, "download")
        assert link.get_attribute("download") == "street_restored.png"
        b64 = driver.execute_async_script(
            "const done = arguments[1]; fetch(arguments[0]).then(r => r.blob()).then(b => {"
            " const f = new FileReader(); f.onload = () => done(f.result.split(',')[1]); f.readAsDataURL(b); })"
            ".catch(e => done(String(e)));",
            link.get_attribute("href"))
        result = Image.open(io.BytesIO(base64.b64decode(b64)))
        result.load()
        assert result.format == "PNG" and result.size == (56, 40)
        # an image dropped on the page
        driver.execute_script(
            "const bytes = Uint8Array.from(atob(arguments[0]), c => c.charCodeAt(0));"
            "const dt = new DataTransfer(); dt.items.add(new File([bytes], 'dropped.png', {type: 'image/png'}));"
            "document.body.dataset.state = 'idle';"
            "document.getElementById('drop').dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true}));",
            base64.b64encode(png(20, 28, seed=5)).decode())
        assert wait_state(driver) == "done"
        assert driver.find_element(By.ID, "download").get_attribute("download") == "dropped_restored.png"
        assert "28×20 restored in" in driver.find_element(By.ID, "status").text
        # the slider uncovers the result from its position on
        driver.execute_script("const s = document.getElementById('slider'); s.value = 30;"
                              "s.dispatchEvent(new Event('input'));")
        assert driver.execute_script("return document.getElementById('after').style.clipPath") == "inset(0px 0px 0px 30%)"
        # an instruction chooses the degradation
        driver.find_element(By.ID, "instruction").send_keys("remove the rain")
        driver.execute_script("document.body.dataset.state = 'idle'")
        driver.find_element(By.ID, "run").click()
        assert wait_state(driver) == "done"
        assert driver.find_element(By.CSS_SELECTOR, "#classes li.used").get_attribute("data-class") == "rainy"
        path = [li.text for li in driver.find_elements(By.CSS_SELECTOR, "#path li")]
        assert 'instruction "remove the rain" → rainy' in path
        assert any(p.startswith("backbone experts: expert 2 of 3 (rainy)") for p in path)
        # a bad upload: the message, not a result
        bad = tmp_path / "notes.txt"
        bad.write_text("not an image")
        assert upload(driver, bad) == "error"
        assert driver.find_element(By.ID, "message").text == (
            "notes.txt: not a recognised image format (corrupt or not an image)")
        # a file over the upload limit is refused before it is sent
        monkeypatch.setattr(service, "max_bytes", 1000)
        open_page(driver, base, len(CLASSES))
        assert upload(driver, photo) == "error"
        assert re.fullmatch(r"street\.png is \d+\.\d kB; the limit is 1\.0 kB \(vlir serve --max-upload-mb\)",
                            driver.find_element(By.ID, "message").text)
        # nothing was fetched from any other host
        urls = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert urls and all(u.startswith(base + "/") or u.startswith(("data:", "blob:")) for u in urls), urls
    finally:
        driver.quit()


@pytest.mark.skipif(not os.environ.get("VLIR_SERVE_SCREENSHOT"), reason="set VLIR_SERVE_SCREENSHOT=docs/serve.png")
def test_screenshot(tmp_path):
    """The README's screenshot: the default model on the demo photo with rain, in the browser."""
    from selenium.webdriver.common.by import By

    from vlir.core.demo import demo_image
    from vlir.core.data.images import read_image, write_image
    from vlir.core.registry import get_registry

    clean, _ = read_image(demo_image())
    with torch.no_grad():
        rainy = get_registry().build("degradation", "rain")(clean[None], generator=torch.Generator().manual_seed(0))
    photo = write_image(tmp_path / "coffee-rain.png", rainy[0].clamp(0, 1))
    service = Service(vlir.load("default"), "default model")
    server = make_server(service, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    driver = chrome(1100, 900)
    try:
        open_page(driver, f"http://127.0.0.1:{server.server_address[1]}", len(service.classes))
        assert upload(driver, photo) == "done", driver.find_element(By.ID, "message").text
        driver.execute_script("const s = document.getElementById('slider'); s.value = 45;"
                              "s.dispatchEvent(new Event('input'));")
        out = Path(os.environ["VLIR_SERVE_SCREENSHOT"])
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.stem}.tmp.png")
        assert driver.save_screenshot(str(tmp))
        os.replace(tmp, out)
    finally:
        driver.quit()
        server.shutdown()
        server.server_close()


def test_ipv6_loopback(pipe):
    try:
        server = make_server(Service(pipe, "tiny", tile=None), host="::1", port=0)
    except OSError as e:
        pytest.skip(f"no IPv6 loopback here: {e}")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with urllib.request.urlopen(f"http://[::1]:{server.server_address[1]}/api/info", timeout=30) as r:
            assert json.load(r)["classes"] == CLASSES
    finally:
        server.shutdown()
        server.server_close()


def test_a_chaining_pipeline_restores_step_by_step_as_vlir_restore_does():
    """A pipeline fed by a multi-label perceiver chains in `vlir serve` as in `vlir restore`: a clean
    image comes back bit for bit, a dark noisy one along the chain's path (vlir.core.chain)."""
    from test_multilabel import dark_noisy, rules_pipeline

    from vlir.core.chain import default_steps, restore_steps

    pipe = rules_pipeline()
    service = Service(pipe, "rules", tile=None)
    g = np.random.default_rng(3)
    flat = np.full((24, 24, 3), 140, np.uint8) + g.integers(0, 2, (24, 24, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(flat).save(buf, format="PNG")
    res = service.restore(buf.getvalue(), "flat.png")
    assert res["steps"] == "clean" and res["used"] is None
    assert any(step == "step by step (experts): clean" for step in res["path"])
    assert np.array_equal(np.asarray(decode(res["image"]).convert("RGB")), flat)

    x = dark_noisy()
    buf = io.BytesIO()
    Image.fromarray((x[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(buf, format="PNG")
    res = service.restore(buf.getvalue(), "dark.png")
    x8 = torch.from_numpy(np.array(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))).permute(2, 0, 1)[None] / 255
    with torch.inference_mode():
        want, _, paths = restore_steps(pipe, x8.float(), steps=default_steps(pipe))
    assert res["steps"] == str(paths[0]) and res["used"] == paths[0].steps[0].word
    got = torch.from_numpy(np.array(decode(res["image"]).convert("RGB"))).permute(2, 0, 1)[None] / 255
    assert (got - want).abs().max() <= 1 / 255 + 1e-6
