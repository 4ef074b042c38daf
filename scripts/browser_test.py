#!/usr/bin/env python3
"""The page at GET /, driven in a real headless Chromium (Debian's chromium and
chromedriver, through Selenium) against real servers on loopback port 0:

- an open server: upload a PNG; the top-k equals the JSON API's answer for the same image;
  the canvas equals the server's own overlay PNG at the same opacity; a click on the second
  class explains it (target shown, picture changed, as the API answers for that target);
  the opacity slider, moved by keyboard, redraws with no request (the server's /metrics
  count and the page's own count unchanged) and still equals the server's overlay; the
  centre-crop mode; the overlay PNG and the JSON download; a JPEG (decoded by the browser,
  so within a few levels of the server's overlay); a text file shows the problem's title
  and detail, and the page goes on working; screenshots at desktop and phone width;
- a server with --api-keys and a small upload limit: the token field, 401 without a token,
  413 over the limit, an answer with the token typed in, the token kept for the tab only;
- a server with --ui false: / is 404 problem+json;
- with --exported FILE, a server of that exported model (gradcam_export): the page offers
  its layers (taps) and default, shows its own labels, and its canvas equals the server's
  overlay at a layer other than the default.

Waits are conditions (WebDriverWait), never fixed sleeps. Screenshots go to
target/browser-test/. Ends with "N passed, M failed"; exit status 1 when any failed.
"""

import argparse
import base64
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.request
import uuid
import zlib
from http.client import HTTPConnection
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select, WebDriverWait

from serving import NotServing, wait_until_serving

ROOT = Path(__file__).resolve().parent.parent
WAIT = 60  # seconds any one condition may take (a 2-core machine, shared)


# ------------------------------------------------------------------ servers and HTTP
class Server:
    def __init__(self, binary, *args, weights=None):
        """Demo weights, or the model file `weights`."""
        self.log = tempfile.TemporaryFile()
        model = ["--weights", str(weights)] if weights else [
            "--demo-weights", "--weights", "/nonexistent.safetensors"]
        self.proc = subprocess.Popen(
            [binary, "serve", "--bind", "127.0.0.1:0", *model, *args],
            stdout=subprocess.PIPE, stderr=self.log, text=True)
        try:
            self.url = wait_until_serving(self.proc)
        except NotServing as e:
            self.stop()
            self.log.seek(0)
            said = self.log.read().decode(errors="replace").strip()[-600:]
            raise RuntimeError(f"{e}; it said: {said}") from None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def explain_requests(self):
        """POST /explain requests counted by the server, any status."""
        _, _, body = http(self.url + "/metrics")
        return sum(int(float(m)) for m in re.findall(
            r'^gradcam_requests_total\{endpoint="/explain",[^}]*\} (\S+)$',
            body.decode(), re.M))


def http(url, data=None, headers=None):
    req = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=WAIT) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def post_explain(server, image, fields, headers=None):
    """POST /explain as a program would; returns (status, headers, parsed JSON)."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"'
                     f'\r\n\r\n{value}\r\n'.encode())
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; '
                 f'filename="x"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode()
                 + image + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    h = {"Content-Type": f"multipart/form-data; boundary={boundary}",
         "Accept": "application/json", **(headers or {})}
    status, rh, body = http(server.url + "/explain", b"".join(parts), h)
    return status, rh, json.loads(body)


def png_bytes(width, height, pixel):
    """A plain RGB PNG (no colour profile, so a browser decodes it to the same bytes)."""
    raw = b"".join(b"\0" + b"".join(bytes(pixel(x, y)) for x in range(width))
                   for y in range(height))

    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def bilevel_png(width, height):
    """A 1-bit grey PNG: a few KiB for many pixels (slow to explain, quick to send)."""
    row = b"\0" + b"\xaa" * ((width + 7) // 8)

    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(row * height, 9)) + chunk(b"IEND", b""))


def tiff_bytes(width, height, pixel):
    """An uncompressed RGB baseline TIFF (the server reads it; Chromium does not)."""
    data = b"".join(bytes(pixel(x, y)) for y in range(height) for x in range(width))
    entries = [(256, 3, 1, width), (257, 3, 1, height), (258, 3, 3, None), (259, 3, 1, 1),
               (262, 3, 1, 2), (273, 4, 1, None), (277, 3, 1, 3), (278, 3, 1, height),
               (279, 4, 1, len(data)), (284, 3, 1, 1)]
    ifd_at = 8
    bits_at = ifd_at + 2 + 12 * len(entries) + 4
    data_at = bits_at + 6
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        value = {258: bits_at, 273: data_at}.get(tag, value)
        packed = struct.pack("<HI", value, 0)[:4] if kind == 3 else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, kind, count) + packed
    return (b"II*\0" + struct.pack("<I", ifd_at) + ifd + b"\0\0\0\0"
            + struct.pack("<HHH", 8, 8, 8) + data)


class PrefixProxy:
    """A gateway that serves the server under /gradcam/, as nginx would with
    `location /gradcam/ { proxy_pass http://upstream/; }`."""

    PREFIX = "/gradcam"

    def __init__(self, upstream):
        host, port = upstream.removeprefix("http://").split(":")
        prefix = self.PREFIX

        class Handler(BaseHTTPRequestHandler):
            def forward(self):
                if not self.path.startswith(prefix + "/"):
                    self.send_error(404)
                    return
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("host", "connection")}
                conn = HTTPConnection(host, int(port), timeout=WAIT)
                conn.request(self.command, self.path[len(prefix):], body, headers)
                r = conn.getresponse()
                data = r.read()
                conn.close()
                self.send_response(r.status)
                for k, v in r.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_POST = do_HEAD = forward

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}{prefix}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def png_size(data):
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


# ------------------------------------------------------------------ the browser
def browser(download_dir):
    options = Options()
    options.binary_location = "/usr/bin/chromium"
    for flag in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--no-first-run", "--no-default-browser-check",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-extensions", "--disable-default-apps",
                 "--metrics-recording-only", "--password-store=basic",
                 f"--user-data-dir={tempfile.mkdtemp(prefix='gradcam-chromium-')}",
                 "--window-size=1280,900"]:
        options.add_argument(flag)
    options.add_experimental_option("prefs", {
        "download.default_directory": str(download_dir),
        "download.prompt_for_download": False,
    })
    # With the driver's path given, Selenium runs it and fetches nothing.
    os.environ["SE_OFFLINE"] = "true"
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    driver.execute_cdp_cmd("Browser.setDownloadBehavior",
                           {"behavior": "allow", "downloadPath": str(download_dir)})
    return driver


def viewport(driver, width, height, mobile):
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile})


def screenshot(driver, path, full):
    """The viewport from the top, or the whole page (full=True)."""
    driver.execute_script("window.scrollTo(0, 0)")
    params = {"format": "png"}
    if full:
        w, h = driver.execute_script(
            "return [document.documentElement.clientWidth, "
            "document.documentElement.scrollHeight]")
        params.update(captureBeyondViewport=True,
                      clip={"x": 0, "y": 0, "width": w, "height": h, "scale": 1})
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", params)
    path.write_bytes(base64.b64decode(shot["data"]))


def wait(driver, condition, what):
    try:
        return WebDriverWait(driver, WAIT, poll_frequency=0.05).until(
            lambda d: condition(d), message=what)
    except TimeoutException:
        error = driver.execute_script(
            "const e = document.getElementById('error');"
            "return e && !e.hidden ? e.innerText : ''")
        raise AssertionError(f"timed out waiting for {what}"
                             + (f" (the page shows: {error!r})" if error else ""))


def state(driver, expression):
    return driver.execute_script(f"return window.gradcamPage.{expression}")


def canvas_url(driver):
    return driver.execute_script("return document.getElementById('picture').toDataURL()")


def settled(driver):
    """No request in flight and no error: the page shows an answer."""
    return driver.execute_script(
        "return !document.body.classList.contains('busy') && "
        "!document.getElementById('result').hidden && "
        "document.querySelectorAll('#top-k-list li').length > 0")


def upload(driver, path, fresh_answer=True):
    before = state(driver, "requests")
    driver.find_element(By.ID, "file").send_keys(str(path))
    wait(driver, lambda d: state(d, "requests") > before, "the page to send the picture")
    if fresh_answer:
        wait(driver, settled, f"the answer for {path.name}")


def shown_top_k(driver):
    return driver.execute_script("""
        return Array.from(document.querySelectorAll('#top-k-list .class-bar')).map(b => ({
          class_index: Number(b.dataset.classIndex), score: Number(b.dataset.score),
          label: b.querySelector('.label').textContent,
          pressed: b.getAttribute('aria-pressed') === 'true'}))""")


def compare_canvas(driver, png):
    """Pixels of the page's canvas against a PNG (the server's overlay): the largest
    difference, and how many pixels differ at all and by more than 2 levels."""
    return driver.execute_async_script("""
        const [b64, done] = arguments;
        const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
        createImageBitmap(new Blob([bytes], {type: 'image/png'})).then(bmp => {
          const canvas = document.getElementById('picture');
          if (bmp.width !== canvas.width || bmp.height !== canvas.height) {
            done({size: [canvas.width, canvas.height, bmp.width, bmp.height]});
            return;
          }
          const off = new OffscreenCanvas(bmp.width, bmp.height);
          const octx = off.getContext('2d');
          octx.drawImage(bmp, 0, 0);
          const want = octx.getImageData(0, 0, bmp.width, bmp.height).data;
          const got = canvas.getContext('2d').getImageData(0, 0, bmp.width, bmp.height).data;
          let max = 0, differ = 0, over2 = 0;
          for (let i = 0; i < got.length; i += 4) {
            let m = 0;
            for (let c = 0; c < 3; c++) m = Math.max(m, Math.abs(got[i + c] - want[i + c]));
            if (m > 0) differ++;
            if (m > 2) over2++;
            max = Math.max(max, m);
          }
          done({max, differ, over2, pixels: got.length / 4});
        }, e => done({error: String(e)}));""", base64.b64encode(png).decode())


# ------------------------------------------------------------------ checks
class Checks:
    def __init__(self):
        self.passed = 0
        self.failed = []
        self.stopped = False

    def run(self, name, fn):
        """Runs one check; after a failure the scenario's later checks are not run (they
        build on it) and count as failed."""
        if self.stopped:
            self.failed.append(name)
            print(f"FAIL {name}: not run after an earlier failure in this scenario", flush=True)
            return
        started = time.monotonic()
        try:
            note = fn()
            self.passed += 1
            print(f"ok   {name} ({time.monotonic() - started:.1f} s)"
                  + (f": {note}" if note else ""), flush=True)
        except Exception as e:  # noqa: BLE001 - every failure is reported the same way
            self.failed.append(name)
            self.stopped = True
            print(f"FAIL {name}: {e}", flush=True)
            if not isinstance(e, AssertionError):
                traceback.print_exc()

    def scenario(self, title):
        print(f"--- {title}", flush=True)
        self.stopped = False


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", default=str(ROOT / "target/release/gradcam-serve"))
    ap.add_argument("--out", default=str(ROOT / "target/browser-test"))
    ap.add_argument("--exported", help="an exported model file (gradcam_export) to test too")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.png"):
        old.unlink()
    work = Path(tempfile.mkdtemp(prefix="gradcam-browser-test-"))
    downloads = work / "downloads"
    downloads.mkdir()
    started = time.monotonic()
    checks = Checks()
    servers = []
    driver = None
    try:
        checks.scenario("open server")
        server = Server(args.bin)
        servers.append(server)
        model = json.loads(http(server.url + "/model")[2])
        jpeg = (ROOT / "docs/chelsea.jpg").read_bytes()
        # The photo as a plain PNG (the server's overlay at opacity 0 is the picture, so
        # the browser and the server decode the same bytes).
        status, _, photo = post_explain(server, jpeg, {"alpha": "0"})
        assert status == 200, f"making the test PNG: {status} {photo}"
        photo_png = base64.b64decode(photo["overlay_png"])
        png_path = work / "chelsea.png"
        png_path.write_bytes(photo_png)
        jpeg_path = ROOT / "docs/chelsea.jpg"
        text_path = work / "notes.txt"
        text_path.write_bytes(b"this is not a picture\n")
        driver = browser(downloads)
        viewport(driver, 1280, 900, False)
        ctx = {}

        def page_is_served():
            status, h, body = http(server.url + "/")
            assert status == 200 and h["content-type"].startswith("text/html"), (status, h)
            assert "no-cache" in h.get("cache-control", ""), h
            assert "script-src 'self'" in h.get("content-security-policy", ""), h
            for asset, kind in [("ui/app.js", "text/javascript"), ("ui/style.css", "text/css")]:
                assert f'"{asset}?v=' in body.decode(), f"/ does not name {asset}"
                s, ah, _ = http(f"{server.url}/{asset}")
                assert s == 200 and ah["content-type"].startswith(kind), (asset, s, ah)
            spec = json.loads(http(server.url + "/openapi.json")[2])
            assert "/" not in spec["paths"], "the page is listed as an API operation"

        def page_loads():
            driver.get(server.url + "/")
            wait(driver, lambda d: len(Select(d.find_element(By.ID, "layer")).options) > 0,
                 "the layers from GET model")
            layers = [o.get_attribute("value")
                      for o in Select(driver.find_element(By.ID, "layer")).options]
            assert layers == model["layers"], (layers, model["layers"])
            chosen = Select(driver.find_element(By.ID, "layer")).first_selected_option
            assert chosen.get_attribute("value") == model["default_layer"]
            offered = [(o.get_attribute("value"), o.text)
                       for o in Select(driver.find_element(By.ID, "method")).options]
            # Every method the server runs on the model.
            listed = [(m["name"], f'{m["reference"]} ({m["name"]})') for m in model["methods"]]
            assert offered == listed, (offered, listed)
            assert len(offered) >= 10 and offered[0][0] == "gradcam", offered
            assert not driver.find_element(By.ID, "token-field").is_displayed(), \
                "a token field without api_keys"
            unlabelled = driver.execute_script("""
                return Array.from(document.querySelectorAll('input, select, button, canvas[role=img]'))
                  .filter(e => !((e.labels && e.labels.length) || e.getAttribute('aria-label')
                                 || (e.tagName === 'BUTTON' && e.textContent.trim())))
                  .map(e => e.id || e.outerHTML.slice(0, 60))""")
            assert not unlabelled, f"controls without a label: {unlabelled}"
            assert "demo" in driver.find_element(By.ID, "demo-warning").text

        def png_top_k_equals_api():
            upload(driver, png_path)
            status, _, api = post_explain(server, photo_png, {"overlay": "false"})
            assert status == 200, api
            ctx["api"] = api
            shown = shown_top_k(driver)
            assert [(c["class_index"], c["label"]) for c in shown] == \
                [(c["class_index"], c["label"]) for c in api["top_k"]], (shown, api["top_k"])
            for s, a in zip(shown, api["top_k"]):
                assert abs(s["score"] - a["score"]) <= 1e-6 * max(1, a["score"]), (s, a)
            assert shown[0]["pressed"], "the top-1 class is not marked as the one explained"
            page = state(driver, "answer")
            assert page["saliency"] == api["saliency"], "the map differs from the API's"
            prediction = driver.find_element(By.ID, "prediction").text
            assert api["prediction"]["label"] in prediction, prediction
            timing = driver.find_element(By.ID, "timing").text
            assert "Server:" in timing and "round trip" in timing, timing
            alt = driver.find_element(By.ID, "picture").get_attribute("aria-label")
            assert api["target"]["label"] in alt, alt
            return f"top-{len(shown)}: " + ", ".join(c["label"] for c in shown)

        def canvas_equals_server_overlay(alpha="0.5", resize="stretch", image=None):
            status, _, api = post_explain(server, image or photo_png, {
                "alpha": alpha, "resize": resize,
                "target": str(state(driver, "answer.target.class_index"))})
            assert status == 200, api
            diff = compare_canvas(driver, base64.b64decode(api["overlay_png"]))
            assert diff.get("max") == 0, f"canvas vs server overlay at alpha {alpha}: {diff}"
            return f"alpha {alpha}, {resize}: all {diff['pixels']} pixels equal"

        def second_class():
            shown = shown_top_k(driver)
            second = shown[1]["class_index"]
            before = canvas_url(driver)
            # By keyboard: Enter on the class's button.
            driver.find_elements(By.CSS_SELECTOR, "#top-k-list .class-bar")[1].send_keys(Keys.ENTER)
            wait(driver, lambda d: settled(d) and
                 state(d, "answer.target.class_index") == second, "the second class's map")
            target = driver.find_element(By.ID, "target").text
            assert target.startswith(f"{second} {shown[1]['label']}"), target
            assert shown_top_k(driver)[1]["pressed"], "the second class is not marked"
            assert canvas_url(driver) != before, "the picture did not change"
            status, _, api = post_explain(server, photo_png,
                                          {"overlay": "false", "target": str(second)})
            assert state(driver, "answer.saliency") == api["saliency"]
            return f"target {target}"

        def another_method():
            method = Select(driver.find_element(By.ID, "method"))
            method.select_by_value("eigencam")
            wait(driver, lambda d: settled(d) and state(d, "answer.method") == "eigencam",
                 "the EigenCAM answer")
            target = state(driver, "answer.target.class_index")
            status, _, api = post_explain(server, photo_png, {
                "overlay": "false", "method": "eigencam", "target": str(target)})
            assert status == 200, api
            assert state(driver, "answer.saliency") == api["saliency"], "map differs from the API's"
            method.select_by_value("gradcam")
            wait(driver, lambda d: settled(d) and state(d, "answer.method") == "gradcam",
                 "the Grad-CAM answer again")
            return f"EigenCAM's map equals the API's for class {target}"

        def pictures_the_server_draws():
            # Guided backpropagation (deprocess_image) and DFF (concepts and a legend): the
            # canvas is the server's picture, byte for byte.
            method = Select(driver.find_element(By.ID, "method"))
            shown = []
            for name in ("guided-backprop", "dff"):
                method.select_by_value(name)
                wait(driver, lambda d: settled(d) and state(d, "answer.method") == name,
                     f"the {name} answer")
                target = state(driver, "answer.target.class_index")
                status, _, api = post_explain(server, photo_png, {
                    "method": name, "target": str(target), "layer": model["default_layer"],
                    "resize": driver.find_element(By.ID, "resize").get_attribute("value")})
                assert status == 200, api
                diff = compare_canvas(driver, base64.b64decode(api["overlay_png"]))
                assert diff.get("max") == 0, f"{name}: canvas vs server picture: {diff}"
                shown.append(f'{name} {api["overlay_image"]["width"]}x'
                             f'{api["overlay_image"]["height"]}')
            method.select_by_value("gradcam")
            wait(driver, lambda d: settled(d) and state(d, "answer.method") == "gradcam",
                 "the Grad-CAM answer again")
            return ", ".join(shown)

        def auto_and_scores():
            # method=auto: the page shows what it chose and how each candidate scored; "Score
            # the map" asks for ROAD and the confidence change, shown as the API gives them.
            method = Select(driver.find_element(By.ID, "method"))
            method.select_by_value("auto")
            wait(driver, lambda d: settled(d) and state(d, "answer.candidates") is not None,
                 "the auto answer")
            chosen = state(driver, "answer.method")
            line = driver.find_element(By.ID, "faithfulness").text
            assert line.startswith(f"auto chose {chosen} by confidence_change"), line
            target = state(driver, "answer.target.class_index")
            status, _, api = post_explain(server, photo_png, {
                "overlay": "false", "method": "auto", "target": str(target),
                "layer": model["default_layer"],
                "resize": driver.find_element(By.ID, "resize").get_attribute("value")})
            assert status == 200 and api["method"] == chosen, api
            assert state(driver, "answer.saliency") == api["saliency"]
            method.select_by_value("gradcam")
            wait(driver, lambda d: settled(d) and state(d, "answer.method") == "gradcam",
                 "the Grad-CAM answer again")
            assert not driver.find_element(By.ID, "faithfulness").is_displayed()
            box = driver.find_element(By.ID, "score-map")
            box.click()
            wait(driver, lambda d: settled(d) and state(d, "answer.scores") is not None,
                 "the scored answer")
            scores = state(driver, "answer.scores")
            assert sorted(scores) == ["confidence_change", "road"], scores
            status, _, api = post_explain(server, photo_png, {
                "overlay": "false", "scores": "road,confidence_change",
                "target": str(state(driver, "answer.target.class_index")),
                "layer": model["default_layer"],
                "resize": driver.find_element(By.ID, "resize").get_attribute("value")})
            assert status == 200 and api["scores"] == scores, (api.get("scores"), scores)
            line = driver.find_element(By.ID, "faithfulness").text
            assert line.startswith("Scores: confidence_change"), line
            box.click()
            wait(driver, lambda d: settled(d) and state(d, "answer.scores") is None,
                 "the unscored answer again")
            return f"auto chose {chosen}; road {scores['road']:.3f}"

        def slider_needs_no_request():
            requests = server.explain_requests()
            page_requests = state(driver, "requests")
            before = canvas_url(driver)
            slider = driver.find_element(By.ID, "alpha")
            slider.click()  # focus (and the click sets a value: pressing Home resets it)
            slider.send_keys(Keys.HOME)
            for _ in range(30):
                slider.send_keys(Keys.ARROW_RIGHT)
            wait(driver, lambda d: d.find_element(By.ID, "alpha-value").text == "30 %",
                 "the opacity to read 30 %")
            wait(driver, lambda d: canvas_url(d) != before, "the picture to change")
            assert server.explain_requests() == requests, "the server got a request"
            assert state(driver, "requests") == page_requests, "the page sent a request"
            return canvas_equals_server_overlay("0.3")

        def crop_mode():
            Select(driver.find_element(By.ID, "resize")).select_by_value("crop")
            wait(driver, lambda d: settled(d) and
                 state(d, "blend.region.width") != state(d, "answer.image.width"),
                 "the centre-crop answer")
            note = canvas_equals_server_overlay("0.3", "crop")
            Select(driver.find_element(By.ID, "resize")).select_by_value("stretch")
            wait(driver, lambda d: settled(d) and
                 state(d, "blend.region.width") == state(d, "answer.image.width"),
                 "the whole-picture answer")
            return note

        def downloads_work():
            for f in downloads.iterdir():
                f.unlink()
            driver.find_element(By.ID, "download-json").click()
            driver.find_element(By.ID, "download-png").click()
            target = state(driver, "answer.target.class_index")
            names = {f"chelsea-gradcam-{target}.json", f"chelsea-gradcam-{target}.png"}
            wait(driver, lambda d: {f.name for f in downloads.iterdir()} >= names,
                 f"the downloads {sorted(names)}")
            saved = json.loads((downloads / f"chelsea-gradcam-{target}.json").read_text())
            assert saved == state(driver, "answer"), "the JSON saved is not the answer"
            size = png_size((downloads / f"chelsea-gradcam-{target}.png").read_bytes())
            assert size == (saved["image"]["width"], saved["image"]["height"]), size
            return f"{sorted(names)}, PNG {size[0]}x{size[1]}"

        def screenshots_and_phone_width():
            screenshot(driver, out / "desktop.png", full=False)
            screenshot(driver, out / "desktop-full.png", full=True)
            viewport(driver, 390, 844, True)
            wait(driver, lambda d: d.execute_script("return window.innerWidth") == 390,
                 "the phone viewport")
            overflow = driver.execute_script(
                "return document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 0, f"the page is {overflow} px wider than a phone screen"
            screenshot(driver, out / "phone.png", full=False)
            screenshot(driver, out / "phone-full.png", full=True)
            viewport(driver, 1280, 900, False)
            return f"{out}/desktop.png, phone.png (+ -full)"

        def jpeg_close_to_server():
            upload(driver, jpeg_path)
            status, _, api = post_explain(server, jpeg, {"alpha": "0.3"})
            shown = shown_top_k(driver)
            assert [c["class_index"] for c in shown] == \
                [c["class_index"] for c in api["top_k"]], (shown, api["top_k"])
            diff = compare_canvas(driver, base64.b64decode(api["overlay_png"]))
            assert "max" in diff, diff
            # The browser decodes the JPEG itself (another decoder than the server's).
            assert diff["over2"] <= diff["pixels"] // 100, f"JPEG canvas vs server: {diff}"
            return (f"{diff['differ']} of {diff['pixels']} pixels differ, "
                    f"{diff['over2']} by more than 2 levels, at most {diff['max']}")

        def text_file_shows_the_problem():
            status, _, problem = post_explain(server, text_path.read_bytes(), {})
            assert status == 400, (status, problem)
            upload(driver, text_path, fresh_answer=False)
            wait(driver, lambda d: d.find_element(By.ID, "error").is_displayed(),
                 "the error")
            title = driver.find_element(By.ID, "error-title").text
            detail = driver.find_element(By.ID, "error-detail").text
            assert title == problem["title"], (title, problem)
            assert detail == problem["detail"], (detail, problem)
            assert "400" in driver.find_element(By.ID, "error-status").text
            # Still usable: another picture is explained and the error goes away.
            upload(driver, png_path)
            assert not driver.find_element(By.ID, "error").is_displayed()
            return f"{title}: {detail}"

        checks.run("GET / serves the page and its assets, not in the OpenAPI spec",
                   page_is_served)
        checks.run("the page loads the layers and methods from GET model; every control labelled",
                   page_loads)
        checks.run("upload a PNG: the top-k equals the JSON API's", png_top_k_equals_api)
        checks.run("the canvas equals the server's overlay PNG",
                   lambda: canvas_equals_server_overlay())
        checks.run("click the second class: target shown, picture changed", second_class)
        checks.run("choose EigenCAM: the page explains with it, as the API does",
                   another_method)
        checks.run("guided backpropagation and DFF: the canvas is the server's picture",
                   pictures_the_server_draws)
        checks.run("method=auto and the scores: shown as the API answers them",
                   auto_and_scores)
        checks.run("the opacity slider redraws with no request", slider_needs_no_request)
        checks.run("centre-crop mode equals the server's overlay", crop_mode)
        checks.run("overlay PNG and JSON download", downloads_work)
        checks.run("screenshots at 1280x900 and 390x844, no sideways scrolling",
                   screenshots_and_phone_width)
        checks.run("a JPEG: top-k as the API, canvas within 2 levels of the server's",
                   jpeg_close_to_server)
        checks.run("a text file: the problem's title and detail, page still usable",
                   text_file_shows_the_problem)

        small_png = png_bytes(
            160, 120, lambda x, y: ((x * 7 + y) % 256, (y * 5) % 256, (x * y) % 256))
        small_path = work / "small.png"
        small_path.write_bytes(small_png)

        def drop_and_paste():
            notes = []
            for kind in ["drop", "paste"]:
                before = state(driver, "requests")
                driver.execute_script("""
                    const [b64, kind] = arguments;
                    const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
                    const dt = new DataTransfer();
                    dt.items.add(new File([bytes], kind + '.png', {type: 'image/png'}));
                    const init = {bubbles: true, cancelable: true};
                    const event = kind === 'drop'
                      ? new DragEvent('drop', {...init, dataTransfer: dt})
                      : new ClipboardEvent('paste', {...init, clipboardData: dt});
                    document.querySelector('main').dispatchEvent(event);""",
                    base64.b64encode(small_png).decode(), kind)
                wait(driver, lambda d: state(d, "requests") > before and settled(d) and
                     state(d, "fileName") == f"{kind}.png", f"the {kind}ped picture's answer")
                size = state(driver, "answer.image")
                assert size == {"width": 160, "height": 120}, size
                notes.append(f"{kind}: {driver.find_element(By.ID, 'caption').text[:40]}…")
            return "; ".join(notes)

        def tiff_from_the_servers_copy():
            tiff = tiff_bytes(160, 120, lambda x, y: ((x * 3) % 256, (y * 2) % 256, 255 - x))
            tiff_path = work / "picture.tiff"
            tiff_path.write_bytes(tiff)
            upload(driver, tiff_path)
            assert state(driver, "browserDecoded") is False, "Chromium decoded a TIFF?"
            assert "as the server decoded it" in driver.find_element(By.ID, "caption").text
            status, _, api = post_explain(server, tiff, {"overlay": "false"})
            assert [c["class_index"] for c in shown_top_k(driver)] == \
                [c["class_index"] for c in api["top_k"]]
            assert "overlay_png" not in json.loads(state(driver, "answerText"))
            requests = server.explain_requests()
            before = canvas_url(driver)
            driver.find_element(By.ID, "alpha").send_keys(Keys.ARROW_RIGHT * 5)
            wait(driver, lambda d: canvas_url(d) != before, "the picture to change")
            assert server.explain_requests() == requests, "the slider sent a request"
            alpha = driver.find_element(By.ID, "alpha").get_attribute("value")
            _, _, drawn = post_explain(server, tiff, {"alpha": alpha})
            diff = compare_canvas(driver, base64.b64decode(drawn["overlay_png"]))
            assert diff.get("max", 99) <= 3, f"canvas vs server overlay: {diff}"
            return f"alpha {alpha}: {diff['differ']} of {diff['pixels']} pixels differ, at most {diff['max']}"

        def under_a_path_prefix():
            proxy = PrefixProxy(server.url)
            try:
                driver.get(proxy.url)
                wait(driver, lambda d: len(Select(d.find_element(By.ID, "layer")).options) > 0,
                     "the layers from GET model through the proxy")
                upload(driver, small_path)
                _, _, api = post_explain(server, small_png, {"overlay": "false"})
                assert [c["class_index"] for c in shown_top_k(driver)] == \
                    [c["class_index"] for c in api["top_k"]]
                return f"{proxy.url}: answered"
            finally:
                proxy.stop()

        checks.run("drop a picture on the page, paste one", drop_and_paste)
        checks.run("a TIFF (Chromium cannot read it): the server's copy, slider still local",
                   tiff_from_the_servers_copy)
        checks.run("under a path prefix behind a proxy (relative URLs)", under_a_path_prefix)

        checks.scenario("server with --api-keys secret --max-upload-bytes 65536 --queue-capacity 1")
        keyed = Server(args.bin, "--api-keys", "secret", "--max-upload-bytes", "65536",
                       "--queue-capacity", "1")
        servers.append(keyed)
        assert len(photo_png) > 65536, "the test PNG must be over the upload limit"

        def token_field_shown():
            driver.get(keyed.url + "/")
            wait(driver, lambda d: len(Select(d.find_element(By.ID, "layer")).options) > 0,
                 "the layers from GET model")
            assert driver.find_element(By.ID, "token-field").is_displayed()
            token = driver.find_element(By.ID, "token")
            assert token.get_attribute("type") == "password"

        def unauthorized_without_token():
            upload(driver, small_path, fresh_answer=False)
            wait(driver, lambda d: d.find_element(By.ID, "error").is_displayed(), "the 401")
            title = driver.find_element(By.ID, "error-title").text
            assert title == "Unauthorized", title
            assert driver.switch_to.active_element.get_attribute("id") == "token", \
                "the token field does not have the focus"
            return f"{title}: {driver.find_element(By.ID, 'error-detail').text}"

        def too_large_with_token():
            driver.find_element(By.ID, "token").send_keys("secret")
            upload(driver, png_path, fresh_answer=False)
            wait(driver, lambda d: d.find_element(By.ID, "error").is_displayed() and
                 d.find_element(By.ID, "error-title").text != "Unauthorized", "the 413")
            title = driver.find_element(By.ID, "error-title").text
            detail = driver.find_element(By.ID, "error-detail").text
            assert title == "Upload too large" and "65536" in detail, (title, detail)
            assert "413" in driver.find_element(By.ID, "error-status").text
            screenshot(driver, out / "error.png", full=False)
            return f"{title}: {detail}"

        def answer_with_token():
            upload(driver, small_path)
            status, _, api = post_explain(keyed, small_path.read_bytes(), {"overlay": "false"},
                                          {"Authorization": "Bearer secret"})
            assert status == 200, api
            assert [c["class_index"] for c in shown_top_k(driver)] == \
                [c["class_index"] for c in api["top_k"]]
            stored = driver.execute_script(
                "return [sessionStorage.getItem('gradcam-serve.token'), localStorage.length,"
                " document.cookie]")
            assert stored == ["secret", 0, ""], f"token kept as {stored}"
            driver.refresh()  # same tab: the token is still there
            wait(driver, lambda d: d.find_element(By.ID, "token").get_attribute("value")
                 == "secret", "the token after a reload")

        def busy_503_with_retry_after():
            big = bilevel_png(6000, 6000)  # about 1 s of work: the queue of 1 is full
            auth = {"Authorization": "Bearer secret"}
            upload(driver, small_path)  # a picture to ask about again
            for attempt in range(1, 6):
                result = {}
                worker = threading.Thread(target=lambda: result.update(
                    r=post_explain(keyed, big, {"overlay": "false"}, auth)))
                worker.start()
                deadline = time.monotonic() + WAIT
                while worker.is_alive() and time.monotonic() < deadline:
                    if json.loads(http(keyed.url + "/health")[2])["queue_depth"] >= 1:
                        break
                    time.sleep(0.01)
                before = state(driver, "requests")
                driver.find_element(By.ID, "run").click()
                wait(driver, lambda d: state(d, "requests") > before and not d.execute_script(
                    "return document.body.classList.contains('busy')"), "the page's answer")
                worker.join()
                assert result["r"][0] == 200, result["r"]
                if not driver.find_element(By.ID, "error").is_displayed():
                    continue  # the big one was done before the page asked: again
                title = driver.find_element(By.ID, "error-title").text
                retry = driver.find_element(By.ID, "error-retry-text").text
                assert title == "Server overloaded", title
                assert "503" in driver.find_element(By.ID, "error-status").text
                assert "wait 1 s" in retry, retry
                assert driver.find_element(By.ID, "retry").is_displayed()
                driver.find_element(By.ID, "retry").click()
                wait(driver, lambda d: settled(d) and not d.find_element(By.ID, "error")
                     .is_displayed(), "the answer after Try again")
                return f"try {attempt}: {title}: {retry}"
            raise AssertionError("the queue was never full when the page asked (5 tries)")

        checks.run("with api_keys: a token field (password)", token_field_shown)
        checks.run("no token: 401 shown, focus on the token field", unauthorized_without_token)
        checks.run("token typed, upload over the limit: 413 shown", too_large_with_token)
        checks.run("token typed: the answer; token in sessionStorage only", answer_with_token)
        checks.run("queue full: 503 shown with its Retry-After, Try again answers",
                   busy_503_with_retry_after)

        checks.scenario("server with --ui false")
        dark = Server(args.bin, "--ui", "false")
        servers.append(dark)

        def no_page():
            for path in ["/", "/ui/app.js"]:
                status, h, body = http(dark.url + path)
                assert status == 404, (path, status)
                assert h["content-type"] == "application/problem+json", h
                assert json.loads(body)["status"] == 404
            assert http(dark.url + "/model")[0] == 200

        checks.run("ui = false: / and its assets are 404 problem+json", no_page)

        if args.exported:
            checks.scenario(f"server with an exported model ({Path(args.exported).name})")
            exported = Server(args.bin, weights=args.exported)
            servers.append(exported)
            described = json.loads(http(exported.url + "/model")[2])

            def exported_page_offers_its_layers_and_labels():
                assert described["backend"] == "torchscript", described["backend"]
                driver.get(exported.url + "/")
                wait(driver, lambda d: len(Select(d.find_element(By.ID, "layer")).options)
                     == len(described["layers"]), "the exported model's layers")
                select = Select(driver.find_element(By.ID, "layer"))
                layers = [o.get_attribute("value") for o in select.options]
                assert layers == described["layers"], (layers, described["layers"])
                chosen = select.first_selected_option.get_attribute("value")
                assert chosen == described["default_layer"], chosen
                assert "demo" not in driver.find_element(By.ID, "demo-warning").text
                info = driver.find_element(By.ID, "model-info").text
                assert described["architecture"] in info, info
                upload(driver, png_path)
                shown = shown_top_k(driver)
                assert all(c["label"] in described["labels"] for c in shown), shown
                return f"layers {', '.join(layers)}; top-1 {shown[0]['label']}"

            def exported_canvas_equals_server_overlay_at_another_layer():
                other = described["layers"][-1]
                Select(driver.find_element(By.ID, "layer")).select_by_value(other)
                wait(driver, lambda d: state(d, "answer.model.target_layer") == other,
                     f"the answer at {other}")
                wait(driver, settled, "the redrawn picture")
                status, _, api = post_explain(exported, photo_png, {
                    "layer": other, "alpha": "0.5",
                    "target": str(state(driver, "answer.target.class_index"))})
                assert status == 200, api
                diff = compare_canvas(driver, base64.b64decode(api["overlay_png"]))
                assert diff.get("max") == 0, f"canvas vs server overlay at {other}: {diff}"
                screenshot(driver, out / "exported-model.png", False)
                return f"{other}: all {diff['pixels']} pixels equal"

            checks.run("exported model: its layers, default and labels on the page",
                       exported_page_offers_its_layers_and_labels)
            checks.run("exported model: canvas equals the server's overlay at another layer",
                       exported_canvas_equals_server_overlay_at_another_layer)
    except Exception as e:  # noqa: BLE001
        checks.failed.append(f"set-up: {e}")
        print(f"FAIL set-up: {e}", flush=True)
        traceback.print_exc()
    finally:
        if driver is not None:
            driver.quit()
        for s in servers:
            s.stop()
    print(f"browser test: {time.monotonic() - started:.1f} s; screenshots in {out}")
    if checks.failed:
        print("failed: " + "; ".join(checks.failed))
    print(f"{checks.passed} passed, {len(checks.failed)} failed")
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main())
