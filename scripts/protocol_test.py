#!/usr/bin/env python3
"""End-to-end test of the inference-protocol endpoints (KServe v1, Open Inference Protocol v2),
driven by clients this project did not write: NVIDIA's `tritonclient[http]` and the `kserve`
SDK's REST client (`kserve.InferenceRESTClient`), both from PyPI; every answer compared with the
service's own `POST /explain` for the same image and options.

    protocol_test.py URL [--limits URL2 --limits-model NAME --limits-max-upload BYTES
                          --limits-queue N]

URL: a server with default limits (demo weights are fine). URL2, optional: a second server
started with a small `--max-upload-bytes` (BYTES) and `--queue-capacity` (N) and with
GRADCAM_MODEL_NAME=NAME, for the 413, 503 and model-name checks. scripts/protocol-test.sh
starts both and runs this with its venv.

The model's name on URL is $GRADCAM_MODEL_NAME when set (the server reads the same variable),
else GET /model's `architecture`.

Prints one `ok` / `FAIL` (or `skip`) line per check and closes with
`protocol-test: N passed, M failed`; exits 1 on any failure. `-k TEXT` runs only the checks
whose name contains TEXT.
"""

import argparse
import asyncio
import base64
import io
import json
import os
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import requests
import tritonclient.http as tc
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig
from kserve.protocol.infer_type import RequestedOutput
from PIL import Image
from tritonclient.utils import InferenceServerException

# Tolerances. Same image, same options, same server: the protocols run the same pipeline as
# /explain, so only batching (several images in one forward pass) may move the last bits.
PROB_TOL = 1e-5  # absolute, on softmax probabilities
MAP_TOL = 1e-5  # relative: max |a - b| <= MAP_TOL * max(1, max |reference map|)
# FP32 input the test normalised itself vs the server's own decoding of the same 224x224
# PNG. The server normalises with the same f32 operations, (v / 255 - mean) / std
# (src/preprocess.rs), and resizing 224x224 to 224x224 is the identity, so these should agree
# to the bit; the map's bound leaves room for a resampler that rounds a pixel differently.
CLOSE_PROB_TOL = 1e-5
CLOSE_MAP_TOL = 1e-4

OUTPUTS = ("probabilities", "saliency", "overlay_png")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------- the runner


class Runner:
    def __init__(self, only=None):
        self.only = only
        self.passed = 0
        self.failed = []
        self.skipped = 0

    def check(self, name, fn, *args):
        if self.only and self.only not in name:
            return
        started = time.monotonic()
        try:
            note = fn(*args)
        except Skip as s:
            self.skipped += 1
            print(f"skip {name}: {s}", flush=True)
            return
        except AssertionError as e:
            self.failed.append(name)
            text = str(e)
            print(f"FAIL {name}: {text[:1500]}" + (" [...]" if len(text) > 1500 else ""), flush=True)
            return
        except Exception as e:  # noqa: BLE001 - a client's exception is a failure too
            self.failed.append(name)
            where = traceback.extract_tb(e.__traceback__)[-1]
            print(
                f"FAIL {name}: {type(e).__name__}: {str(e)[:600]} "
                f"(at {os.path.basename(where.filename)}:{where.lineno})",
                flush=True,
            )
            return
        self.passed += 1
        took = time.monotonic() - started
        print(f"ok   {name}" + (f" ({note})" if note else "") + f" [{took:.1f}s]", flush=True)


class Skip(Exception):
    pass


def expect(cond, message):
    if not cond:
        raise AssertionError(message)


# ---------------------------------------------------------------------------- images


def pattern(width, height, variant):
    """A colour pattern: gradients, a checkerboard and a disc, so that the classifier and
    the map have something to work on."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r = 255 * x / max(width - 1, 1)
    g = 255 * y / max(height - 1, 1)
    b = np.where(((x // (12 + 4 * variant)) + (y // 16)) % 2 == 0, 220.0, 35.0)
    cx, cy = width * (0.3 + 0.2 * variant), height * 0.55
    disc = (x - cx) ** 2 + (y - cy) ** 2 < (min(width, height) * 0.22) ** 2
    r = np.where(disc, 250.0 - 60 * variant, r)
    g = np.where(disc, 40.0 + 50 * variant, g)
    b = np.where(disc, 60.0, b)
    return np.stack([r, g, b], axis=-1).clip(0, 255).astype(np.uint8)


class TestImage:
    def __init__(self, name, array, fmt, **save):
        buf = io.BytesIO()
        Image.fromarray(array, "RGB").save(buf, fmt, **save)
        self.name = name
        self.bytes = buf.getvalue()
        self.array = array
        self.height, self.width = array.shape[:2]
        self.mime = "image/jpeg" if fmt == "JPEG" else "image/png"
        self.b64 = base64.b64encode(self.bytes).decode("ascii")

    def __repr__(self):
        return f"{self.name} ({self.width}x{self.height}, {len(self.bytes)} bytes)"


def noise_png(min_bytes, seed=0):
    """A PNG of noise (incompressible) of at least `min_bytes` bytes."""
    side = int(np.ceil(np.sqrt(min_bytes / 3))) + 16
    rng = np.random.default_rng(seed)
    img = TestImage("noise.png", rng.integers(0, 256, (side, side, 3), dtype=np.uint8), "PNG")
    assert len(img.bytes) >= min_bytes, (len(img.bytes), min_bytes)
    return img


JPEG = TestImage("pattern-256.jpg", pattern(256, 256, 0), "JPEG", quality=90)
PNG = TestImage("pattern-300x200.png", pattern(300, 200, 1), "PNG")
# Already the model input's size: the server's resize (stretch) is the identity, so the
# FP32 tensor this test normalises itself must give what the server's own decoding gives.
PNG224 = TestImage("pattern-224.png", pattern(224, 224, 2), "PNG")
SMALL = TestImage("pattern-64.png", pattern(64, 64, 1), "PNG")
NOT_AN_IMAGE = b"this is plain text, not an image file"


# ---------------------------------------------------------------------------- the service


class Service:
    """One server: its URL, model name, GET /model, and /explain answers (cached)."""

    def __init__(self, url, name=None):
        self.url = url.rstrip("/")
        self.hostport = self.url.split("://", 1)[1]
        r = requests.get(self.url + "/model", timeout=30)
        r.raise_for_status()
        self.model = r.json()
        self.architecture = self.model["architecture"]
        self.name = name or os.environ.get("GRADCAM_MODEL_NAME") or self.architecture
        self.num_classes = self.model["num_classes"]
        self.input_size = self.model["input_size"]
        self.mean = np.array(self.model["mean"], dtype=np.float32)
        self.std = np.array(self.model["std"], dtype=np.float32)
        self._explained = {}
        self.triton = tc.InferenceServerClient(self.hostport, network_timeout=120.0)

    def explain(self, image, **options):
        """POST /explain (multipart `image`, options in the query): the reference."""
        key = (image.name, tuple(sorted((k, str(v)) for k, v in options.items())))
        if key not in self._explained:
            r = requests.post(
                self.url + "/explain",
                params=options,
                files={"image": (image.name, image.bytes, image.mime)},
                timeout=120,
            )
            expect(r.status_code == 200, f"/explain {image.name} {options}: {r.status_code} {r.text[:300]}")
            self._explained[key] = r.json()
        return self._explained[key]

    def normalised(self, image):
        """The FP32 [3, size, size] tensor of an image already the model input's size."""
        expect(
            (image.width, image.height) == (self.input_size, self.input_size),
            f"{image} is not {self.input_size}x{self.input_size}",
        )
        x = image.array.astype(np.float32) / np.float32(255.0)
        x = (x - self.mean) / self.std
        return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)


# ---------------------------------------------------------------------------- comparisons


def png_size(data, what):
    expect(isinstance(data, (bytes, bytearray)), f"{what}: {type(data).__name__}, not bytes")
    expect(bytes(data[:8]) == PNG_MAGIC, f"{what}: not PNG bytes (starts {bytes(data[:8])!r})")
    with Image.open(io.BytesIO(bytes(data))) as im:
        im.load()
        return im.size


def b64_png_size(text, what):
    expect(isinstance(text, (str, bytes)), f"{what}: {type(text).__name__}, not a base64 string")
    try:
        data = base64.b64decode(text, validate=True)
    except Exception as e:  # noqa: BLE001
        raise AssertionError(f"{what}: not base64: {e}")
    return png_size(data, what)


def compare_probabilities(probs, ref, what, tol=PROB_TOL):
    probs = np.asarray(probs, dtype=np.float64).reshape(-1)
    expect(np.all(np.isfinite(probs)), f"{what}: non-finite probabilities")
    expect(abs(probs.sum() - 1.0) < 1e-3, f"{what}: probabilities sum to {probs.sum():.6f}, not 1")
    top = int(np.argmax(probs))
    want = ref["prediction"]["class_index"]
    expect(
        top == want or abs(probs[top] - probs[want]) <= tol,
        f"{what}: top-1 class {top} (p={probs[top]:.7f}), /explain says {want} (p={ref['prediction']['score']:.7f})",
    )
    for entry in [ref["prediction"]] + ref["top_k"]:
        c = entry["class_index"]
        d = abs(probs[c] - entry["score"])
        expect(d <= tol, f"{what}: p[{c}] = {probs[c]:.8f}, /explain says {entry['score']:.8f} (diff {d:.2e} > {tol:g})")


def map_diff(arr, ref_saliency, what, tol=MAP_TOL):
    ref = np.asarray(ref_saliency["data"], dtype=np.float64)
    expect(
        ref.shape == (ref_saliency["height"], ref_saliency["width"]),
        f"{what}: /explain's saliency is {ref.shape}, says {ref_saliency['height']}x{ref_saliency['width']}",
    )
    arr = np.asarray(arr, dtype=np.float64)
    expect(arr.shape == ref.shape, f"{what}: saliency shape {list(arr.shape)}, /explain's is {list(ref.shape)}")
    d = float(np.max(np.abs(arr - ref))) if arr.size else 0.0
    bound = tol * max(1.0, float(np.max(np.abs(ref))) if ref.size else 0.0)
    expect(d <= bound, f"{what}: saliency differs from /explain's by {d:.3e} (allowed {bound:.3e})")
    return d


def compare_class(got, ref, what):
    expect(isinstance(got, dict), f"{what}: {got!r} is not an object")
    expect(set(got) >= {"class_index", "label", "score"}, f"{what}: keys {sorted(got)}")
    expect(got["class_index"] == ref["class_index"], f"{what}: class {got['class_index']}, /explain says {ref['class_index']}")
    expect(got["label"] == ref["label"], f"{what}: label {got['label']!r}, /explain says {ref['label']!r}")
    expect(
        abs(got["score"] - ref["score"]) <= PROB_TOL,
        f"{what}: score {got['score']}, /explain says {ref['score']}",
    )


def compare_top_k(got, ref, what):
    expect(isinstance(got, list), f"{what}: top_k is {type(got).__name__}")
    expect(len(got) == len(ref), f"{what}: {len(got)} top_k entries, /explain gives {len(ref)}")
    for i, (g, r) in enumerate(zip(got, ref)):
        compare_class(g, r, f"{what} top_k[{i}]")


def approx_equal(a, b, path):
    """The first difference between two JSON values (floats within 1e-5 relative), or None."""
    if isinstance(a, bool) or isinstance(b, bool):
        return None if a == b else f"{path}: {a!r} != {b!r}"
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return None if abs(a - b) <= 1e-5 * max(1.0, abs(b)) else f"{path}: {a!r} != {b!r}"
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return f"{path}: keys {sorted(a)} != {sorted(b)}"
        for k in a:
            d = approx_equal(a[k], b[k], f"{path}.{k}")
            if d:
                return d
        return None
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{path}: {len(a)} items != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            d = approx_equal(x, y, f"{path}[{i}]")
            if d:
                return d
        return None
    return None if a == b else f"{path}: {a!r} != {b!r}"


def compare_explanation(got, ref, image, what):
    """An explanation from v1 :explain against /explain's JSON for the same image and options:
    the same fields, the same values (timing aside), the overlay a PNG of the image's size."""
    expect(isinstance(got, dict), f"{what}: {type(got).__name__}, not an object")
    expect(set(got) == set(ref), f"{what}: fields {sorted(got)}, /explain's are {sorted(ref)}")
    compare_class(got["prediction"], ref["prediction"], f"{what} prediction")
    compare_class(got["target"], ref["target"], f"{what} target")
    compare_top_k(got["top_k"], ref["top_k"], what)
    map_diff(got["saliency"]["data"], ref["saliency"], what)
    for k in ("width", "height", "scaled", "channels"):
        expect(got["saliency"].get(k) == ref["saliency"].get(k), f"{what}: saliency.{k} {got['saliency'].get(k)!r} != {ref['saliency'].get(k)!r}")
    for key in sorted(set(ref) - {"prediction", "target", "top_k", "saliency", "timing_ms", "overlay_png"}):
        d = approx_equal(got[key], ref[key], f"{what}.{key}")
        expect(d is None, d)
    if "overlay_png" in ref:
        size = b64_png_size(got["overlay_png"], f"{what} overlay_png")
        expect(size == (image.width, image.height), f"{what}: overlay_png is {size}, the image is {image.width}x{image.height}")


def check_error_response(r, status, what):
    """A raw answer: the status, JSON content, and exactly {"error": "<message>"}."""
    expect(r.status_code == status, f"{what}: status {r.status_code}, expected {status}; body {r.text[:300]!r}")
    ctype = r.headers.get("content-type", "")
    expect(ctype.split(";")[0].strip().lower() == "application/json", f"{what}: Content-Type {ctype!r}, not application/json")
    try:
        body = r.json()
    except ValueError:
        raise AssertionError(f"{what}: body is not JSON: {r.text[:300]!r}")
    expect(
        isinstance(body, dict) and set(body) == {"error"} and isinstance(body["error"], str) and body["error"].strip(),
        f"{what}: body is not {{\"error\": \"<message>\"}}: {r.text[:300]!r}",
    )
    return body["error"]


def triton_error(call, status, what):
    """A tritonclient call that must fail: InferenceServerException with the HTTP status and
    the server's message (tritonclient reads the body's `error`)."""
    try:
        call()
    except InferenceServerException as e:
        expect(e.status() == str(status), f"{what}: tritonclient got status {e.status()}, expected {status}: {e.message()}")
        msg = e.message() or ""
        expect(
            msg and not msg.startswith("an exception occurred in the client"),
            f"{what}: tritonclient could not read the error body: {msg[:300]}",
        )
        return msg
    raise AssertionError(f"{what}: tritonclient raised nothing; expected {status}")


async def kserve_error(coro, status, what):
    """A kserve REST client call that must fail: httpx.HTTPStatusError with the status, and
    the server's message in the exception (kserve copies `error` only when Content-Type is
    exactly `application/json`)."""
    try:
        await coro
    except httpx.HTTPStatusError as e:
        expect(e.response.status_code == status, f"{what}: kserve got {e.response.status_code}, expected {status}: {str(e)[:300]}")
        err = check_error_response(e.response, status, what)
        expect(err in str(e), f"{what}: kserve's exception lacks the server's message {err!r} (Content-Type {e.response.headers.get('content-type')!r}): {str(e)[:300]}")
        return err
    raise AssertionError(f"{what}: kserve raised nothing; expected {status}")


# ---------------------------------------------------------------------------- v2 helpers


def bytes_input(images, binary=True, name="image"):
    inp = tc.InferInput(name, [len(images)], "BYTES")
    if binary:
        inp.set_data_from_numpy(np.array([i.bytes for i in images], dtype=np.object_), binary_data=True)
    else:
        inp.set_data_from_numpy(np.array([i.b64.encode() for i in images], dtype=np.object_), binary_data=False)
    return inp


def fp32_input(tensor, binary=True, name="input"):
    inp = tc.InferInput(name, list(tensor.shape), "FP32")
    inp.set_data_from_numpy(tensor, binary_data=binary)
    return inp


def triton_outputs(result, expected_names, binary, n, svc, what):
    """The answer's outputs: exactly `expected_names`, each binary or JSON as asked
    (`binary`: name -> bool), with the spec's datatypes and shapes."""
    response = result.get_response()
    outs = response.get("outputs")
    expect(isinstance(outs, list), f"{what}: no outputs list in {str(response)[:200]}")
    by_name = {o.get("name"): o for o in outs}
    expect(
        sorted(by_name) == sorted(expected_names) and len(outs) == len(expected_names),
        f"{what}: outputs {[o.get('name') for o in outs]}, expected {sorted(expected_names)}",
    )
    types = {"probabilities": "FP32", "saliency": "FP32", "overlay_png": "BYTES"}
    for name, o in by_name.items():
        expect(o.get("datatype") == types[name], f"{what}: {name} datatype {o.get('datatype')}, expected {types[name]}")
        is_binary = "binary_data_size" in (o.get("parameters") or {})
        expect(is_binary == binary[name], f"{what}: {name} came {'binary' if is_binary else 'as JSON data'}, asked {'binary' if binary[name] else 'JSON'}")
        shape = o.get("shape")
        expect(isinstance(shape, list) and shape and shape[0] == n, f"{what}: {name} shape {shape}, first dimension should be {n}")
    if "probabilities" in by_name:
        shape = by_name["probabilities"]["shape"]
        expect(shape == [n, svc.num_classes], f"{what}: probabilities shape {shape}, expected {[n, svc.num_classes]}")
    if "saliency" in by_name:
        expect(len(by_name["saliency"]["shape"]) == 3, f"{what}: saliency shape {by_name['saliency']['shape']}, expected [N, h, w]")
    if "overlay_png" in by_name:
        expect(by_name["overlay_png"]["shape"] == [n], f"{what}: overlay_png shape {by_name['overlay_png']['shape']}, expected [{n}]")
    return {name: result.as_numpy(name) for name in by_name}


def overlay_element(value, what):
    """An overlay_png element: PNG bytes (binary) or a base64 string (JSON data)."""
    if isinstance(value, (bytes, bytearray)):
        return png_size(value, what)
    return b64_png_size(value, what)


def compare_v2(outs, images, refs, what, overlay_sizes=None, prob_tol=PROB_TOL, map_tol=MAP_TOL):
    for i, (image, ref) in enumerate(zip(images, refs)):
        w = f"{what} [{i}] {image.name}"
        if "probabilities" in outs:
            compare_probabilities(outs["probabilities"][i], ref, w, prob_tol)
        if "saliency" in outs:
            map_diff(outs["saliency"][i], ref["saliency"], w, map_tol)
        if "overlay_png" in outs:
            size = overlay_element(outs["overlay_png"][i], f"{w} overlay_png")
            want = overlay_sizes[i] if overlay_sizes else (image.width, image.height)
            expect(size == want, f"{w}: overlay_png is {size[0]}x{size[1]}, expected {want[0]}x{want[1]}")


# ---------------------------------------------------------------------------- v2: tritonclient


def t_live_ready(svc):
    c = svc.triton
    expect(c.is_server_live() is True, "is_server_live() is not True")
    expect(c.is_server_ready() is True, "is_server_ready() is not True")
    r = requests.get(svc.url + "/v2/health/live", timeout=10)
    expect(r.status_code == 200 and r.json() == {"live": True}, f"GET /v2/health/live: {r.status_code} {r.text[:200]}")
    r = requests.get(svc.url + "/v2/health/ready", timeout=10)
    expect(r.status_code == 200 and r.json() == {"ready": True}, f"GET /v2/health/ready: {r.status_code} {r.text[:200]}")


def t_model_ready(svc):
    c = svc.triton
    expect(c.is_model_ready(svc.name) is True, f"is_model_ready({svc.name!r}) is not True")
    expect(c.is_model_ready(svc.name, "1") is True, f"is_model_ready({svc.name!r}, '1') is not True")
    expect(c.is_model_ready("no-such-model") is False, "is_model_ready('no-such-model') is not False")
    r = requests.get(f"{svc.url}/v2/models/{svc.name}/ready", timeout=10)
    expect(r.status_code == 200, f"GET /v2/models/{svc.name}/ready: {r.status_code}")
    expect(r.json() == {"name": svc.name, "ready": True}, f"GET /v2/models/{svc.name}/ready: {r.text[:200]}")
    check_error_response(requests.get(f"{svc.url}/v2/models/no-such-model/ready", timeout=10), 404, "GET /v2/models/no-such-model/ready")


def t_server_metadata(svc):
    m = svc.triton.get_server_metadata()
    expect(m.get("name") == "gradcam-serve", f"name {m.get('name')!r}")
    expect(isinstance(m.get("version"), str) and m["version"], f"version {m.get('version')!r}")
    expect(isinstance(m.get("extensions"), list) and "binary_tensor_data" in m["extensions"], f"extensions {m.get('extensions')!r} lack binary_tensor_data")
    return f"version {m['version']}, extensions {m['extensions']}"


EXPECTED_INPUTS = [
    {"name": "image", "datatype": "BYTES", "shape": [-1]},
    {"name": "input", "datatype": "FP32", "shape": [-1, 3, 224, 224]},
]


def expected_outputs(svc):
    return [
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, svc.num_classes]},
        # The map's size depends on the layer and the method a request chooses.
        {"name": "saliency", "datatype": "FP32", "shape": [-1, -1, -1]},
        {"name": "overlay_png", "datatype": "BYTES", "shape": [-1]},
    ]


def t_model_metadata(svc):
    for version in ("", "1"):
        m = svc.triton.get_model_metadata(svc.name, version)
        w = f"get_model_metadata({svc.name!r}, {version!r})"
        expect(m.get("name") == svc.name, f"{w}: name {m.get('name')!r}")
        expect(m.get("versions") == ["1"], f"{w}: versions {m.get('versions')!r}")
        expect(m.get("platform") == "gradcam-serve", f"{w}: platform {m.get('platform')!r}")
        for key, want in (("inputs", EXPECTED_INPUTS), ("outputs", expected_outputs(svc))):
            got = m.get(key)
            expect(isinstance(got, list), f"{w}: {key} {got!r}")
            slim = [{k: t.get(k) for k in ("name", "datatype", "shape")} for t in got]
            expect(
                sorted(slim, key=lambda t: t["name"]) == sorted(want, key=lambda t: t["name"]),
                f"{w}: {key} {slim}, expected {want}",
            )


def t_model_metadata_unknown(svc):
    msg = triton_error(lambda: svc.triton.get_model_metadata("no-such-model"), 404, "get_model_metadata('no-such-model')")
    check_error_response(requests.get(f"{svc.url}/v2/models/no-such-model", timeout=10), 404, "GET /v2/models/no-such-model")
    return f"message: {msg[:80]}"


def t_server_metadata_raw(svc):
    r = requests.get(svc.url + "/v2", timeout=10)
    expect(r.status_code == 200, f"GET /v2: {r.status_code}")
    body = r.json()
    expect(body.get("name") == "gradcam-serve" and "binary_tensor_data" in body.get("extensions", []), f"GET /v2: {body}")


def t_infer_binary_default(svc):
    # No outputs named: tritonclient adds parameters.binary_data_output = true, so all three
    # outputs come back binary.
    result = svc.triton.infer(svc.name, [bytes_input([JPEG])])
    outs = triton_outputs(result, OUTPUTS, dict.fromkeys(OUTPUTS, True), 1, svc, "binary BYTES in, all outputs")
    compare_v2(outs, [JPEG], [svc.explain(JPEG)], "binary BYTES")


def t_infer_json(svc):
    outputs = [tc.InferRequestedOutput("probabilities", binary_data=False), tc.InferRequestedOutput("saliency", binary_data=False)]
    result = svc.triton.infer(svc.name, [bytes_input([PNG], binary=False)], outputs=outputs)
    outs = triton_outputs(result, ["probabilities", "saliency"], {"probabilities": False, "saliency": False}, 1, svc, "JSON base64 in, 2 JSON outputs")
    compare_v2(outs, [PNG], [svc.explain(PNG)], "JSON BYTES")


def t_infer_json_in_default_out(svc):
    # JSON input, no outputs named: binary_data_output = true all the same.
    result = svc.triton.infer(svc.name, [bytes_input([JPEG], binary=False)])
    outs = triton_outputs(result, OUTPUTS, dict.fromkeys(OUTPUTS, True), 1, svc, "JSON base64 in, all outputs")
    compare_v2(outs, [JPEG], [svc.explain(JPEG)], "JSON BYTES, binary out")


def t_infer_mixed_outputs(svc):
    outputs = [tc.InferRequestedOutput("saliency", binary_data=True), tc.InferRequestedOutput("overlay_png", binary_data=False)]
    result = svc.triton.infer(svc.name, [bytes_input([PNG])], outputs=outputs)
    outs = triton_outputs(result, ["saliency", "overlay_png"], {"saliency": True, "overlay_png": False}, 1, svc, "saliency binary + overlay JSON")
    expect(isinstance(outs["overlay_png"][0], str), f"JSON overlay_png element is {type(outs['overlay_png'][0]).__name__}, not a base64 string")
    compare_v2(outs, [PNG], [svc.explain(PNG)], "mixed outputs")


def t_infer_batch(svc):
    images = [JPEG, PNG]
    result = svc.triton.infer(svc.name, [bytes_input(images)])
    outs = triton_outputs(result, OUTPUTS, dict.fromkeys(OUTPUTS, True), 2, svc, "N=2 BYTES")
    compare_v2(outs, images, [svc.explain(i) for i in images], "N=2")


def t_infer_batch_json(svc):
    images = [PNG, JPEG]
    outputs = [tc.InferRequestedOutput(n, binary_data=False) for n in OUTPUTS]
    result = svc.triton.infer(svc.name, [bytes_input(images, binary=False)], outputs=outputs)
    outs = triton_outputs(result, OUTPUTS, dict.fromkeys(OUTPUTS, False), 2, svc, "N=2 JSON")
    compare_v2(outs, images, [svc.explain(i) for i in images], "N=2 JSON")


def t_infer_fp32(svc):
    tensor = svc.normalised(PNG224)[None]
    result = svc.triton.infer(svc.name, [fp32_input(tensor)])
    outs = triton_outputs(result, OUTPUTS, dict.fromkeys(OUTPUTS, True), 1, svc, "FP32 binary")
    size = (svc.input_size, svc.input_size)
    # Against /explain for the PNG (the server decodes and normalises it) ...
    compare_v2(outs, [PNG224], [svc.explain(PNG224)], "FP32 vs /explain", [size], CLOSE_PROB_TOL, CLOSE_MAP_TOL)
    # ... and against v2 with the same PNG as BYTES.
    as_bytes = svc.triton.infer(svc.name, [bytes_input([PNG224])])
    b = triton_outputs(as_bytes, OUTPUTS, dict.fromkeys(OUTPUTS, True), 1, svc, "BYTES of the 224 PNG")
    dp = float(np.max(np.abs(outs["probabilities"] - b["probabilities"])))
    ds = float(np.max(np.abs(outs["saliency"] - b["saliency"])))
    bound = CLOSE_MAP_TOL * max(1.0, float(np.max(np.abs(b["saliency"]))))
    expect(dp <= CLOSE_PROB_TOL, f"FP32 vs BYTES: probabilities differ by {dp:.2e}")
    expect(ds <= bound, f"FP32 vs BYTES: saliency differs by {ds:.2e} (allowed {bound:.2e})")
    return f"FP32 vs BYTES: max diff p {dp:.1e}, map {ds:.1e}"


def t_infer_fp32_json(svc):
    tensor = svc.normalised(PNG224)[None]
    outputs = [tc.InferRequestedOutput("probabilities", binary_data=False), tc.InferRequestedOutput("saliency", binary_data=True)]
    result = svc.triton.infer(svc.name, [fp32_input(tensor, binary=False)], outputs=outputs)
    outs = triton_outputs(result, ["probabilities", "saliency"], {"probabilities": False, "saliency": True}, 1, svc, "FP32 JSON")
    compare_v2(outs, [PNG224], [svc.explain(PNG224)], "FP32 JSON vs /explain", None, CLOSE_PROB_TOL, CLOSE_MAP_TOL)


def t_infer_fp32_batch(svc):
    t = svc.normalised(PNG224)
    tensor = np.stack([t, t[:, ::-1, :].copy()])  # the image and its upside-down copy
    result = svc.triton.infer(svc.name, [fp32_input(tensor)], outputs=[tc.InferRequestedOutput("saliency"), tc.InferRequestedOutput("probabilities")])
    outs = triton_outputs(result, ["saliency", "probabilities"], {"saliency": True, "probabilities": True}, 2, svc, "FP32 N=2")
    compare_v2({k: v[:1] for k, v in outs.items()}, [PNG224], [svc.explain(PNG224)], "FP32 N=2 [0]", None, CLOSE_PROB_TOL, CLOSE_MAP_TOL)
    flipped = TestImage("pattern-224-flipped.png", PNG224.array[::-1].copy(), "PNG")
    compare_v2({k: v[1:] for k, v in outs.items()}, [flipped], [svc.explain(flipped)], "FP32 N=2 [1]", None, CLOSE_PROB_TOL, CLOSE_MAP_TOL)


def t_infer_options(svc):
    opts = {"target": 1, "method": "hirescam"}
    result = svc.triton.infer(svc.name, [bytes_input([JPEG])], parameters=opts)
    outs = triton_outputs(result, OUTPUTS, dict.fromkeys(OUTPUTS, True), 1, svc, "options")
    ref = svc.explain(JPEG, **opts)
    expect(ref["target"]["class_index"] == 1, f"/explain?target=1 explains {ref['target']}")
    compare_v2(outs, [JPEG], [ref], "target=1 method=hirescam")
    default = np.asarray(svc.explain(JPEG)["saliency"]["data"])
    if np.allclose(default, np.asarray(ref["saliency"]["data"])):
        return "note: /explain gives the same map with and without the options; weak check"
    return None


def t_infer_layer(svc):
    if "layer3" not in svc.model.get("layers", []):
        raise Skip(f"the model has no layer3 (layers {svc.model.get('layers')})")
    opts = {"layer": "layer3"}
    result = svc.triton.infer(svc.name, [bytes_input([PNG])], outputs=[tc.InferRequestedOutput("saliency", binary_data=False)], parameters=opts)
    outs = triton_outputs(result, ["saliency"], {"saliency": False}, 1, svc, "layer3")
    ref = svc.explain(PNG, **opts)
    compare_v2(outs, [PNG], [ref], "layer=layer3")
    return f"saliency {list(outs['saliency'].shape)}"


def t_infer_versioned(svc):
    result = svc.triton.infer(svc.name, [bytes_input([PNG])], model_version="1", outputs=[tc.InferRequestedOutput("probabilities"), tc.InferRequestedOutput("saliency")])
    outs = triton_outputs(result, ["probabilities", "saliency"], {"probabilities": True, "saliency": True}, 1, svc, "versions/1")
    compare_v2(outs, [PNG], [svc.explain(PNG)], "versions/1")


def t_binary_framing_raw(svc):
    """The binary answer as bytes on the wire: what both clients need to split it."""
    body, json_size = tc.InferenceServerClient.generate_request_body([bytes_input([JPEG])])
    expect(json_size is not None, "tritonclient made no binary body")
    r = requests.post(
        f"{svc.url}/v2/models/{svc.name}/infer",
        data=body,
        headers={"Inference-Header-Content-Length": str(json_size)},
        timeout=120,
    )
    expect(r.status_code == 200, f"binary infer without Content-Type: {r.status_code} {r.text[:300]}")
    header = r.headers.get("Inference-Header-Content-Length")
    expect(header is not None and header.isdigit(), f"no Inference-Header-Content-Length in the binary answer (headers {dict(r.headers)})")
    n = int(header)
    head = json.loads(r.content[:n])
    expect(head.get("model_name") == svc.name, f"model_name {head.get('model_name')!r} (kserve's client reads it)")
    sizes = [o.get("parameters", {}).get("binary_data_size", 0) for o in head["outputs"]]
    expect(sum(sizes) == len(r.content) - n, f"binary_data_size sum {sum(sizes)} != {len(r.content) - n} bytes after the JSON")
    binary_type = r.headers.get("content-type")
    # A JSON answer (no binary outputs asked): plain JSON with model_name and data.
    body, json_size = tc.InferenceServerClient.generate_request_body(
        [bytes_input([JPEG], binary=False)], outputs=[tc.InferRequestedOutput("saliency", binary_data=False)]
    )
    r = requests.post(f"{svc.url}/v2/models/{svc.name}/infer", data=body, headers={"Content-Type": "application/json"}, timeout=120)
    expect(r.status_code == 200, f"JSON infer: {r.status_code} {r.text[:300]}")
    head = r.json()
    expect(head.get("model_name") == svc.name, f"JSON answer's model_name {head.get('model_name')!r}")
    expect([o["name"] for o in head["outputs"]] == ["saliency"] and "data" in head["outputs"][0], f"JSON answer outputs {str(head['outputs'])[:200]}")
    return f"Content-Type of the binary answer {binary_type!r}, of the JSON one {r.headers.get('content-type')!r}"


# ---------------------------------------------------------------------------- v1 and v2: kserve


def run(coro):
    return asyncio.run(coro)


def k_v1_ready(svc):
    async def go():
        async with InferenceRESTClient(RESTConfig(protocol="v1", timeout=120)) as c:
            expect(await c.is_model_ready(svc.url, svc.name) is True, f"v1 is_model_ready({svc.name!r}) is not True")
            await kserve_error(c.is_model_ready(svc.url, "no-such-model"), 404, "v1 is_model_ready('no-such-model')")

    run(go())
    r = requests.get(svc.url + "/v1/models", timeout=10)
    expect(r.status_code == 200 and r.json() == {"models": [svc.name]}, f"GET /v1/models: {r.status_code} {r.text[:200]}")
    r = requests.get(f"{svc.url}/v1/models/{svc.name}", timeout=10)
    expect(r.status_code == 200 and r.json() == {"name": svc.name, "ready": True}, f"GET /v1/models/{svc.name}: {r.status_code} {r.text[:200]}")


def k_v1_predict(svc):
    body = {
        "instances": [
            {"image_bytes": {"b64": JPEG.b64}},
            {"b64": PNG.b64, "top_k": 3},
            {"data": PNG224.b64},
        ],
        "parameters": {"top_k": 2},
    }

    async def go():
        async with InferenceRESTClient(RESTConfig(protocol="v1", timeout=120)) as c:
            return await c.infer(svc.url, body, model_name=svc.name)

    out = run(go())
    expect(isinstance(out, dict) and set(out) == {"predictions"}, f"answer fields {sorted(out) if isinstance(out, dict) else type(out)}")
    preds = out["predictions"]
    expect(isinstance(preds, list) and len(preds) == 3, f"{len(preds)} predictions for 3 instances")
    for i, (image, k) in enumerate([(JPEG, 2), (PNG, 3), (PNG224, 2)]):
        ref = svc.explain(image, top_k=k)
        w = f"prediction {i} ({image.name}, top_k {k})"
        compare_class(preds[i], ref["prediction"], w)
        compare_top_k(preds[i].get("top_k"), ref["top_k"], w)
        expect(set(preds[i]) == {"class_index", "label", "score", "top_k"}, f"{w}: fields {sorted(preds[i])}")


def k_v1_explain(svc):
    body = {
        "instances": [
            {"b64": JPEG.b64, "target": 1, "method": "hirescam"},
            {"image_bytes": {"b64": PNG.b64}},
        ],
        "parameters": {"top_k": 3},
    }

    async def go():
        async with InferenceRESTClient(RESTConfig(protocol="v1", timeout=120)) as c:
            return await c.explain(svc.url, svc.name, body)

    out = run(go())
    expect(isinstance(out, dict) and set(out) == {"explanations"}, f"answer fields {sorted(out) if isinstance(out, dict) else type(out)}")
    ex = out["explanations"]
    expect(isinstance(ex, list) and len(ex) == 2, f"{len(ex)} explanations for 2 instances")
    compare_explanation(ex[0], svc.explain(JPEG, target=1, method="hirescam", top_k=3), JPEG, "explanation 0")
    compare_explanation(ex[1], svc.explain(PNG, top_k=3), PNG, "explanation 1")


def k_v1_live(svc):
    # kserve's v1 is_server_live GETs the base URL itself and wants {"status": "alive"}: the
    # server answers that to a GET / that does not ask for HTML (a browser gets the page).
    async def go():
        async with InferenceRESTClient(RESTConfig(protocol="v1", timeout=30)) as c:
            return await c.is_server_live(svc.url)

    live = run(go())
    expect(live is True, f"kserve v1 is_server_live returned {live!r}")


def kserve_v2_client():
    return InferenceRESTClient(RESTConfig(protocol="v2", timeout=120))


def kserve_outputs(resp, expected, n, svc, what):
    names = [o.name for o in resp.outputs]
    expect(sorted(names) == sorted(expected), f"{what}: outputs {names}, expected {sorted(expected)}")
    expect(resp.model_name == svc.name, f"{what}: model_name {resp.model_name!r}")
    outs = {}
    for o in resp.outputs:
        if o.name == "overlay_png":
            data = o.data if o.data is not None else list(o.as_numpy())
            expect(o.shape == [n] and len(data) == n, f"{what}: overlay_png shape {o.shape}, {len(data)} elements")
            outs[o.name] = list(data)
        else:
            outs[o.name] = o.as_numpy()
            expect(outs[o.name].shape[0] == n, f"{what}: {o.name} shape {o.shape}")
    return outs


def k_v2_health(svc):
    async def go():
        async with kserve_v2_client() as c:
            expect(await c.is_server_live(svc.url) is True, "v2 is_server_live is not True")
            expect(await c.is_server_ready(svc.url) is True, "v2 is_server_ready is not True")
            expect(await c.is_model_ready(svc.url, svc.name) is True, f"v2 is_model_ready({svc.name!r}) is not True")
            expect(await c.is_model_ready(svc.url, "no-such-model") is False, "v2 is_model_ready('no-such-model') is not False")

    run(go())


def k_v2_infer_binary(svc):
    inp = InferInput("image", [2], "BYTES")
    inp.set_data_from_numpy(np.array([JPEG.bytes, PNG.bytes], dtype=np.object_), binary_data=True)
    req = InferRequest(svc.name, [inp])

    async def go():
        async with kserve_v2_client() as c:
            return await c.infer(svc.url, req, model_name=svc.name)

    resp = run(go())
    outs = kserve_outputs(resp, OUTPUTS, 2, svc, "kserve v2 binary BYTES")
    compare_v2(outs, [JPEG, PNG], [svc.explain(JPEG), svc.explain(PNG)], "kserve v2 binary BYTES")


def k_v2_infer_json(svc):
    inp = InferInput("image", [1], "BYTES", data=[PNG.b64])
    req = InferRequest(
        svc.name,
        [inp],
        parameters={"target": 1},
        request_outputs=[RequestedOutput("saliency"), RequestedOutput("overlay_png")],
    )

    async def go():
        async with kserve_v2_client() as c:
            return await c.infer(svc.url, req, model_name=svc.name)

    resp = run(go())
    outs = kserve_outputs(resp, ["saliency", "overlay_png"], 1, svc, "kserve v2 JSON BYTES")
    compare_v2(outs, [PNG], [svc.explain(PNG, target=1)], "kserve v2 JSON BYTES target=1")


def k_v2_infer_fp32(svc):
    inp = InferInput("input", [1, 3, svc.input_size, svc.input_size], "FP32")
    inp.set_data_from_numpy(svc.normalised(PNG224)[None], binary_data=True)
    # Binary FP32 outputs: kserve splits them with the answer's Inference-Header-Content-Length.
    # (Not overlay_png: kserve turns every binary output into JSON-able data and fails on
    # BYTES that are not UTF-8, such as PNG.)
    req = InferRequest(
        svc.name,
        [inp],
        request_outputs=[
            RequestedOutput("probabilities", {"binary_data": True}),
            RequestedOutput("saliency", {"binary_data": True}),
        ],
    )

    async def go():
        async with kserve_v2_client() as c:
            headers = {}
            resp = await c.infer(svc.url, req, model_name=svc.name, response_headers=headers)
            return resp, headers

    resp, headers = run(go())
    expect("inference-header-content-length" in {k.lower() for k in headers}, f"binary answer without Inference-Header-Content-Length: {sorted(headers)}")
    outs = kserve_outputs(resp, ["probabilities", "saliency"], 1, svc, "kserve v2 FP32")
    compare_v2(outs, [PNG224], [svc.explain(PNG224)], "kserve v2 FP32", None, CLOSE_PROB_TOL, CLOSE_MAP_TOL)


def k_v2_infer_fp32_json(svc):
    tensor = svc.normalised(PNG224)[None]
    inp = InferInput("input", list(tensor.shape), "FP32", data=tensor.reshape(-1).tolist())
    req = InferRequest(svc.name, [inp], request_outputs=[RequestedOutput("probabilities")])

    async def go():
        async with kserve_v2_client() as c:
            return await c.infer(svc.url, req, model_name=svc.name)

    outs = kserve_outputs(run(go()), ["probabilities"], 1, svc, "kserve v2 FP32 JSON")
    compare_v2(outs, [PNG224], [svc.explain(PNG224)], "kserve v2 FP32 JSON", None, CLOSE_PROB_TOL, CLOSE_MAP_TOL)


# ---------------------------------------------------------------------------- bad input


def v2_raw(svc, inputs, outputs=None, parameters=None, model=None, version=None):
    body, json_size = tc.InferenceServerClient.generate_request_body(inputs, outputs=outputs, parameters=parameters)
    headers = {"Content-Type": "application/json"} if json_size is None else {"Inference-Header-Content-Length": str(json_size)}
    path = f"/v2/models/{model or svc.name}" + (f"/versions/{version}" if version else "") + "/infer"
    return requests.post(svc.url + path, data=body, headers=headers, timeout=120)


def bad_v2_case(svc, what, status, inputs, parameters=None, model=None):
    """One bad v2 request: raw (status and body shape), then through tritonclient."""
    err = check_error_response(v2_raw(svc, inputs, parameters=parameters, model=model), status, what)
    triton_error(lambda: svc.triton.infer(model or svc.name, inputs, parameters=parameters), status, what)
    return err


def b_v2_datatype(svc):
    inp = tc.InferInput("input", [1, 3, 224, 224], "INT32")
    inp.set_data_from_numpy(np.zeros((1, 3, 224, 224), dtype=np.int32))
    bad_v2_case(svc, "INT32 `input`", 400, [inp])
    inp = tc.InferInput("image", [1], "FP32")
    inp.set_data_from_numpy(np.zeros(1, dtype=np.float32))
    bad_v2_case(svc, "FP32 `image`", 400, [inp])


def b_v2_shape(svc):
    inp = tc.InferInput("input", [1, 3, 100, 100], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 3, 100, 100), dtype=np.float32))
    bad_v2_case(svc, "FP32 [1,3,100,100]", 400, [inp])
    inp = tc.InferInput("input", [3, 224, 224], "FP32")
    inp.set_data_from_numpy(np.zeros((3, 224, 224), dtype=np.float32))
    bad_v2_case(svc, "FP32 [3,224,224]", 400, [inp])
    # FP32 whose data disagrees with its shape: [2,3,224,224] announced, one image sent.
    inp = fp32_input(np.zeros((1, 3, 224, 224), dtype=np.float32))
    inp.set_shape([2, 3, 224, 224])
    bad_v2_case(svc, "FP32 shape [2,...] with one image of data", 400, [inp])


def b_v2_bytes_shape(svc):
    inp = bytes_input([JPEG])
    inp.set_shape([2])
    bad_v2_case(svc, "binary BYTES shape [2] with 1 element", 400, [inp])
    inp = bytes_input([JPEG], binary=False)
    inp.set_shape([2])
    bad_v2_case(svc, "JSON BYTES shape [2] with 1 element", 400, [inp])
    inp = bytes_input([JPEG, PNG])
    inp.set_shape([1])
    bad_v2_case(svc, "binary BYTES shape [1] with 2 elements", 400, [inp])


def b_v2_not_an_image(svc):
    inp = tc.InferInput("image", [1], "BYTES")
    inp.set_data_from_numpy(np.array([base64.b64encode(NOT_AN_IMAGE)], dtype=np.object_), binary_data=False)
    bad_v2_case(svc, "JSON base64 that is not an image", 400, [inp])
    inp = tc.InferInput("image", [1], "BYTES")
    inp.set_data_from_numpy(np.array([b"@@@ not base64 @@@"], dtype=np.object_), binary_data=False)
    bad_v2_case(svc, "JSON data that is not base64", 400, [inp])
    inp = tc.InferInput("image", [1], "BYTES")
    inp.set_data_from_numpy(np.array([NOT_AN_IMAGE], dtype=np.object_), binary_data=True)
    bad_v2_case(svc, "binary bytes that are not an image", 400, [inp])


def b_v2_input_names(svc):
    inp = tc.InferInput("pixels", [1], "BYTES")
    inp.set_data_from_numpy(np.array([JPEG.bytes], dtype=np.object_))
    bad_v2_case(svc, "unknown input `pixels`", 400, [inp])
    both = [bytes_input([PNG224]), fp32_input(svc.normalised(PNG224)[None])]
    bad_v2_case(svc, "both `image` and `input`", 400, both)


def b_v2_unknown_model(svc):
    bad_v2_case(svc, "unknown model", 404, [bytes_input([JPEG])], model="no-such-model")


def b_v2_bad_option(svc):
    msg = bad_v2_case(svc, "target=99999", 422, [bytes_input([JPEG])], parameters={"target": 99999})
    bad_v2_case(svc, "method=no-such-method", 422, [bytes_input([JPEG])], parameters={"method": "no-such-method"})
    return f"message: {msg[:80]}"


def b_v2_malformed(svc):
    url = f"{svc.url}/v2/models/{svc.name}/infer"
    check_error_response(requests.post(url, data=b'{"inputs": [', headers={"Content-Type": "application/json"}, timeout=30), 400, "truncated JSON")
    check_error_response(requests.post(url, json={"outputs": []}, timeout=30), 400, "no inputs")
    body, json_size = tc.InferenceServerClient.generate_request_body([bytes_input([JPEG])])
    check_error_response(
        requests.post(url, data=body, headers={"Inference-Header-Content-Length": str(len(body) + 10)}, timeout=30),
        400,
        "Inference-Header-Content-Length past the body's end",
    )
    check_error_response(
        requests.post(url, data=body[:-100], headers={"Inference-Header-Content-Length": str(json_size)}, timeout=30),
        400,
        "binary data shorter than binary_data_size",
    )


async def bad_v1(svc, c, what, status, body, verb="predict", model=None):
    url = f"{svc.url}/v1/models/{model or svc.name}:{verb}"
    check_error_response(requests.post(url, json=body, timeout=60), status, f"{verb}: {what}")
    if verb == "predict":
        await kserve_error(c.infer(svc.url, body, model_name=model or svc.name), status, f"kserve predict: {what}")
    else:
        await kserve_error(c.explain(svc.url, model or svc.name, body), status, f"kserve explain: {what}")


def b_v1(svc):
    url = f"{svc.url}/v1/models/{svc.name}:predict"
    check_error_response(requests.post(url, data=b'{"instances": [', headers={"Content-Type": "application/json"}, timeout=30), 400, "predict: bad JSON")
    check_error_response(requests.post(url.replace(":predict", ":explain"), data=b"nope", headers={"Content-Type": "application/json"}, timeout=30), 400, "explain: bad JSON")

    async def go():
        async with InferenceRESTClient(RESTConfig(protocol="v1", timeout=120)) as c:
            for verb in ("predict", "explain"):
                await bad_v1(svc, c, "no instances", 400, {"instances": []}, verb)
                await bad_v1(svc, c, "base64 that is not an image", 400, {"instances": [{"b64": base64.b64encode(NOT_AN_IMAGE).decode()}]}, verb)
                await bad_v1(svc, c, "instance without an image", 400, {"instances": [{"target": 1}]}, verb)
                await bad_v1(svc, c, "unknown model", 404, {"instances": [{"b64": JPEG.b64}]}, verb, model="no-such-model")
                await bad_v1(svc, c, "target=99999 in the instance", 422, {"instances": [{"b64": JPEG.b64, "target": 99999}]}, verb)
                await bad_v1(svc, c, "target=99999 in parameters", 422, {"instances": [{"b64": JPEG.b64}], "parameters": {"target": 99999}}, verb)
            # The second instance is the bad one: the whole request is refused.
            await bad_v1(svc, c, "one bad instance of two", 400, {"instances": [{"b64": JPEG.b64}, {"data": base64.b64encode(NOT_AN_IMAGE).decode()}]})

    run(go())
    check_error_response(requests.get(f"{svc.url}/v1/models/no-such-model", timeout=10), 404, "GET /v1/models/no-such-model")


def b_still_serving(svc):
    result = svc.triton.infer(svc.name, [bytes_input([JPEG])])
    outs = triton_outputs(result, OUTPUTS, dict.fromkeys(OUTPUTS, True), 1, svc, "after the bad requests")
    compare_v2(outs, [JPEG], [svc.explain(JPEG)], "after the bad requests")
    r = requests.post(f"{svc.url}/v1/models/{svc.name}:predict", json={"instances": [{"b64": PNG.b64}]}, timeout=120)
    expect(r.status_code == 200, f"v1 predict after the bad requests: {r.status_code} {r.text[:200]}")
    compare_class(r.json()["predictions"][0], svc.explain(PNG)["prediction"], "v1 predict after the bad requests")


# ---------------------------------------------------------------------------- limits server


def l_name(lim, main):
    r = requests.get(lim.url + "/v1/models", timeout=10)
    expect(r.status_code == 200 and r.json() == {"models": [lim.name]}, f"GET /v1/models with GRADCAM_MODEL_NAME={lim.name}: {r.text[:200]}")
    expect(lim.triton.is_model_ready(lim.name) is True, f"is_model_ready({lim.name!r}) on the renamed server")
    m = lim.triton.get_model_metadata(lim.name)
    expect(m.get("name") == lim.name, f"metadata name {m.get('name')!r}")
    if lim.name != lim.architecture:
        expect(lim.triton.is_model_ready(lim.architecture) is False, f"the architecture's name {lim.architecture!r} still answers after the rename")
        check_error_response(requests.get(f"{lim.url}/v1/models/{lim.architecture}", timeout=10), 404, "GET /v1/models/<architecture> after the rename")


def l_small_ok(lim):
    result = lim.triton.infer(lim.name, [bytes_input([SMALL])])
    outs = triton_outputs(result, OUTPUTS, dict.fromkeys(OUTPUTS, True), 1, lim, "small image, limits server")
    compare_v2(outs, [SMALL], [lim.explain(SMALL)], "small image, limits server")
    r = requests.post(f"{lim.url}/v1/models/{lim.name}:predict", json={"instances": [{"b64": SMALL.b64}]}, timeout=120)
    expect(r.status_code == 200, f"v1 predict of a small image: {r.status_code} {r.text[:200]}")


def l_too_large(lim, big):
    msg = triton_error(lambda: lim.triton.infer(lim.name, [bytes_input([big])]), 413, f"tritonclient binary BYTES of {len(big.bytes)} bytes")
    check_error_response(v2_raw(lim, [bytes_input([big])]), 413, "v2 binary body over the limit")
    check_error_response(v2_raw(lim, [bytes_input([big], binary=False)]), 413, "v2 JSON body over the limit")
    body = {"instances": [{"b64": big.b64}]}

    async def go():
        async with InferenceRESTClient(RESTConfig(protocol="v1", timeout=120)) as c:
            await bad_v1(lim, c, "body over the limit", 413, body, "predict")
            await bad_v1(lim, c, "body over the limit", 413, body, "explain")
        async with kserve_v2_client() as c:
            inp = InferInput("image", [1], "BYTES", data=[big.b64])
            await kserve_error(c.infer(lim.url, InferRequest(lim.name, [inp]), model_name=lim.name), 413, "kserve v2 JSON over the limit")

    run(go())
    return f"{len(big.bytes)} byte image; message: {msg[:80]}"


def l_queue_full(lim, capacity):
    """More concurrent one-image requests than the queue holds: some get 503 {"error"}."""
    n = max(6, 4 * capacity + 2)
    # BYTES, not FP32: a [1,3,224,224] FP32 tensor (602 KB) is over this server's body limit.
    v2_body, v2_json = tc.InferenceServerClient.generate_request_body([bytes_input([PNG224])], outputs=[tc.InferRequestedOutput("probabilities")])
    v1_body = json.dumps({"instances": [{"b64": PNG224.b64}]}).encode()
    results = {}
    for proto, url, body, headers in (
        ("v2", f"{lim.url}/v2/models/{lim.name}/infer", v2_body, {"Inference-Header-Content-Length": str(v2_json)}),
        ("v1", f"{lim.url}/v1/models/{lim.name}:predict", v1_body, {"Content-Type": "application/json"}),
    ):
        barrier = threading.Barrier(n)

        def send(_):
            barrier.wait(timeout=30)
            return requests.post(url, data=body, headers=headers, timeout=120)

        with ThreadPoolExecutor(n) as pool:
            answers = list(pool.map(send, range(n)))
        codes = sorted(a.status_code for a in answers)
        results[proto] = codes
        expect(set(codes) <= {200, 503}, f"{proto}: {n} concurrent requests answered {codes}")
        expect(503 in codes, f"{proto}: {n} concurrent requests, queue capacity {capacity}: none refused ({codes})")
        expect(200 in codes, f"{proto}: {n} concurrent requests: none served ({codes})")
        for a in answers:
            if a.status_code == 503:
                check_error_response(a, 503, f"{proto} queue full")
    return ", ".join(f"{p}: {c.count(200)} served, {c.count(503)} refused" for p, c in results.items())


# ---------------------------------------------------------------------------- main


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("url")
    ap.add_argument("--limits", help="URL of the server with small limits")
    ap.add_argument("--limits-model", help="its GRADCAM_MODEL_NAME")
    ap.add_argument("--limits-max-upload", type=int, default=65536, help="its --max-upload-bytes")
    ap.add_argument("--limits-queue", type=int, default=1, help="its --queue-capacity")
    ap.add_argument("-k", dest="only", help="run only the checks whose name contains this")
    args = ap.parse_args()

    svc = Service(args.url)
    print(f"protocol-test: {svc.url}, model {svc.name!r} ({svc.architecture}, {svc.num_classes} classes, weights {svc.model.get('weights')})")
    print(f"protocol-test: images {JPEG}, {PNG}, {PNG224}")
    t = Runner(args.only)

    # Open Inference Protocol v2 through tritonclient.
    t.check("v2/triton: is_server_live, is_server_ready", t_live_ready, svc)
    t.check("v2/triton: is_model_ready (name, version 1, unknown)", t_model_ready, svc)
    t.check("v2/triton: get_server_metadata", t_server_metadata, svc)
    t.check("v2: GET /v2", t_server_metadata_raw, svc)
    t.check("v2/triton: get_model_metadata (names, datatypes, shapes)", t_model_metadata, svc)
    t.check("v2/triton: get_model_metadata of an unknown model is 404", t_model_metadata_unknown, svc)
    t.check("v2/triton: infer BYTES binary, all outputs (binary_data_output) == /explain", t_infer_binary_default, svc)
    t.check("v2/triton: infer BYTES JSON base64, outputs named as JSON == /explain", t_infer_json, svc)
    t.check("v2/triton: infer BYTES JSON base64, all outputs binary == /explain", t_infer_json_in_default_out, svc)
    t.check("v2/triton: infer outputs named, saliency binary + overlay_png JSON", t_infer_mixed_outputs, svc)
    t.check("v2/triton: infer N=2 images (binary) == /explain of each", t_infer_batch, svc)
    t.check("v2/triton: infer N=2 images (JSON in and out) == /explain of each", t_infer_batch_json, svc)
    t.check("v2/triton: infer FP32 input (binary) ~ BYTES ~ /explain, overlay 224x224", t_infer_fp32, svc)
    t.check("v2/triton: infer FP32 input (JSON) ~ /explain", t_infer_fp32_json, svc)
    t.check("v2/triton: infer FP32 N=2 ~ /explain of each", t_infer_fp32_batch, svc)
    t.check("v2/triton: parameters target=1 method=hirescam == /explain?target=1&method=hirescam", t_infer_options, svc)
    t.check("v2/triton: parameters layer=layer3 == /explain?layer=layer3", t_infer_layer, svc)
    t.check("v2/triton: infer on /versions/1", t_infer_versioned, svc)
    t.check("v2/raw: binary answer framing (Inference-Header-Content-Length, model_name)", t_binary_framing_raw, svc)

    # KServe v1 and v2 through the kserve SDK's REST client.
    t.check("v1/kserve: is_model_ready, GET /v1/models, GET /v1/models/{name}", k_v1_ready, svc)
    t.check("v1/kserve: predict, 3 instance forms, parameters vs instance top_k == /explain", k_v1_predict, svc)
    t.check("v1/kserve: explain == /explain JSON", k_v1_explain, svc)
    t.check("v1/kserve: is_server_live (GET / as a program)", k_v1_live, svc)
    t.check("v2/kserve: is_server_live, is_server_ready, is_model_ready", k_v2_health, svc)
    t.check("v2/kserve: infer BYTES binary N=2 == /explain", k_v2_infer_binary, svc)
    t.check("v2/kserve: infer BYTES JSON, requested outputs, target=1 == /explain", k_v2_infer_json, svc)
    t.check("v2/kserve: infer FP32 binary in, binary outputs ~ /explain", k_v2_infer_fp32, svc)
    t.check("v2/kserve: infer FP32 JSON ~ /explain", k_v2_infer_fp32_json, svc)

    # Bad input.
    t.check("bad/v2: wrong datatype is 400 {error}", b_v2_datatype, svc)
    t.check("bad/v2: wrong FP32 shape is 400 {error}", b_v2_shape, svc)
    t.check("bad/v2: BYTES shape disagreeing with its data is 400 {error}", b_v2_bytes_shape, svc)
    t.check("bad/v2: bytes / base64 that are not an image is 400 {error}", b_v2_not_an_image, svc)
    t.check("bad/v2: unknown input name, both inputs: 400 {error}", b_v2_input_names, svc)
    t.check("bad/v2: unknown model is 404 {error}", b_v2_unknown_model, svc)
    t.check("bad/v2: bad option value is 422 {error}", b_v2_bad_option, svc)
    t.check("bad/v2: malformed JSON and binary framing is 400 {error}", b_v2_malformed, svc)
    t.check("bad/v1: bad JSON, no instances, not an image, no image 400; unknown model 404; bad option 422", b_v1, svc)
    t.check("bad: the server still answers good requests", b_still_serving, svc)

    if args.limits:
        lim = Service(args.limits, name=args.limits_model)
        print(f"protocol-test: limits server {lim.url}, model {lim.name!r}, max upload {args.limits_max_upload} bytes, queue {args.limits_queue}")
        big = noise_png(4 * args.limits_max_upload + 256 * 1024)
        t.check("limits: GRADCAM_MODEL_NAME names the model in both protocols", l_name, lim, svc)
        t.check("limits: a small image is served", l_small_ok, lim)
        t.check("limits/v1+v2: body over the limit is 413 {error} (tritonclient, kserve, raw)", l_too_large, lim, big)
        t.check("limits/v1+v2: queue full is 503 {error}", l_queue_full, lim, args.limits_queue)
        t.check("limits: the server still answers after", l_small_ok, lim)
    else:
        print("skip limits: no --limits server (413, 503, model-name checks)")

    print(f"protocol-test: {t.passed} passed, {len(t.failed)} failed" + (f", {t.skipped} skipped" if t.skipped else ""))
    if t.failed:
        print("failed:\n  " + "\n  ".join(t.failed))
    return 1 if t.failed else 0


if __name__ == "__main__":
    sys.exit(main())
