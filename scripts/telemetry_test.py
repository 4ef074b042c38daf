#!/usr/bin/env python3
"""Telemetry test (scripts/telemetry-test.sh): the traces a real server exports over OTLP,
received by an OTLP/HTTP receiver built on the official opentelemetry-proto definitions, and
/metrics read by the Prometheus project's own Python parser (prometheus_client).

  traces   the server (a real process, demo weights) with OTEL_EXPORTER_OTLP_ENDPOINT at the
           receiver: a request with a W3C traceparent continues that trace (same trace id, the
           caller's span as parent); one SERVER span per request, named "POST /explain", with
           OpenTelemetry's HTTP attributes; its children decode, queue, forward, backward,
           (scores), render, one set per image (two for a v2 request of two images), laid out
           in order inside the request; a request without traceparent starts a trace; a
           refused one (400) has its span and status code; SIGTERM flushes what is buffered.
  off      OTEL_SDK_DISABLED=true: a server with the endpoint set sends nothing (and serves).
  metrics  /metrics parses with prometheus_client's parser, every metric family the service
           has always had is there with its type, counters count what was sent; and
           `promtool check metrics` (Prometheus's linter, $PROMTOOL) finds no problem.

Usage: telemetry_test.py BIN
"""

import base64
import gzip
import http.server
import itertools
import json
import os
import secrets
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.trace.v1 import trace_pb2
from prometheus_client.parser import text_string_to_metric_families

from serving import NotServing, wait_until_serving

WAIT = 60
failures = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what, flush=True)
    if not ok:
        failures.append(what)
    return ok


class Receiver(http.server.ThreadingHTTPServer):
    """OTLP/HTTP: POST /v1/traces with an ExportTraceServiceRequest (protobuf)."""

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.spans = []  # (resource attributes, scope name, Span)
        self.requests = 0
        self.lock = threading.Lock()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 (the standard library's name)
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        ok = self.path == "/v1/traces" and self.headers.get("Content-Type") == "application/x-protobuf"
        if ok:
            export = trace_service_pb2.ExportTraceServiceRequest()
            export.ParseFromString(body)
            with self.server.lock:
                self.server.requests += 1
                for rs in export.resource_spans:
                    resource = {a.key: a.value.string_value for a in rs.resource.attributes}
                    for ss in rs.scope_spans:
                        for span in ss.spans:
                            self.server.spans.append((resource, ss.scope.name, span))
        answer = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        self.send_response(200 if ok else 404)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


def start_server(binary, env_extra, log):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(env_extra)
    env.setdefault("GRADCAM_LOG", "warn")
    proc = subprocess.Popen(
        [binary, "serve", "--bind", "127.0.0.1:0", "--demo-weights", "--weights", "/nonexistent/w.safetensors"],
        stdout=subprocess.PIPE, stderr=log, env=env, text=True)
    try:
        return proc, wait_until_serving(proc)
    except NotServing as e:
        proc.kill()
        raise SystemExit(f"telemetry-test: {e}")


def http(method, url, body=None, headers=None):
    req = urllib.request.Request(url, data=body, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=WAIT) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def image_png():
    """A 64x48 PNG of colour gradients, written by hand (no imaging library needed)."""
    import struct
    import zlib

    w, h = 64, 48
    rows = b"".join(b"\x00" + bytes(v for x in range(w) for v in (x * 4 % 256, y * 5 % 256, (x + y) % 256))
                    for y in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def multipart(image):
    boundary = secrets.token_hex(8)
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + image + f"\r\n--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def traceparent():
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, span_id, f"00-{trace_id}-{span_id}-01"


def spans_of(receiver, trace_id, count):
    """The spans of one trace, once `count` of them have arrived."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        with receiver.lock:
            found = [s for s in receiver.spans if s[2].trace_id.hex() == trace_id]
        if len(found) >= count:
            return found
        time.sleep(0.05)
    return found


def attributes(span):
    out = {}
    for a in span.attributes:
        v = a.value
        out[a.key] = v.string_value if v.HasField("string_value") else (
            v.int_value if v.HasField("int_value") else v.double_value if v.HasField("double_value") else v.bool_value)
    return out


def check_request_trace(receiver, what, trace_id, parent, route, status, images, stages):
    per_image = len(stages)
    found = spans_of(receiver, trace_id, 1 + per_image * images)
    roots = [s for s in found if s[2].kind == trace_pb2.Span.SPAN_KIND_SERVER]
    if not check(len(roots) == 1, f"{what}: one server span in the trace ({len(roots)} of {len(found)} spans)"):
        return
    resource, scope, root = roots[0]
    a = attributes(root)
    check(root.name == f"POST {route}", f"{what}: named {root.name!r}")
    check(root.parent_span_id.hex() == (parent or ""),
          f"{what}: parent {root.parent_span_id.hex()!r} is the caller's {parent!r}")
    check(a.get("http.request.method") == "POST" and a.get("http.route") == route
          and a.get("http.response.status_code") == status and a.get("url.path"),
          f"{what}: HTTP attributes {a}")
    check(resource.get("service.name") == "gradcam-serve" and scope == "gradcam-serve",
          f"{what}: service.name {resource.get('service.name')!r}, scope {scope!r}")
    children = [s[2] for s in found if s[2].parent_span_id == root.span_id]
    names = sorted(c.name for c in children)
    check(names == sorted(stages * images), f"{what}: children {names}, expected {sorted(stages * images)}")
    inside = all(root.start_time_unix_nano <= c.start_time_unix_nano <= c.end_time_unix_nano
                 <= root.end_time_unix_nano for c in children)
    check(inside, f"{what}: every child lies within the request's span")
    forward = [c for c in children if c.name == "forward"]
    check(all("gradcam.batch_size" in attributes(c) and attributes(c).get("gradcam.method") for c in forward),
          f"{what}: forward spans carry gradcam.method and gradcam.batch_size {[attributes(c) for c in forward]}")
    # queue, forward, backward follow each other for each image. Spans carry no image index,
    # and two images batched together start their forward passes within microseconds of each
    # other, so sorting each stage by start time can pair one image's queue with the other's
    # forward: ask instead whether some pairing puts every image's stages in order.
    by_name = {n: [c for c in children if c.name == n] for n in ("queue", "forward", "backward")}

    def in_order(q, f, b):
        return (q.end_time_unix_nano <= f.start_time_unix_nano + 1000
                and f.end_time_unix_nano <= b.start_time_unix_nano + 1000)

    ordered = any(all(in_order(q, f, b) for q, f, b in zip(by_name["queue"], fs, bs))
                  for fs in itertools.permutations(by_name["forward"])
                  for bs in itertools.permutations(by_name["backward"]))
    if not ordered:
        for n, spans in by_name.items():
            print(f"     {n}: {[(c.start_time_unix_nano, c.end_time_unix_nano) for c in spans]}")
    check(ordered, f"{what}: queue, forward, backward in order")


def main():
    binary = sys.argv[1]
    out = sys.argv[2] if len(sys.argv) > 2 else "."
    receiver = Receiver()
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    log = open(os.path.join(out, "server.log"), "w")
    server, url = start_server(binary, {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }, log)
    image = image_png()
    try:
        stages = ["decode", "queue", "forward", "backward", "render"]
        # /explain, continuing the caller's trace.
        trace_id, parent, header = traceparent()
        body, headers = multipart(image)
        status, answer = http("POST", url + "/explain", body, {**headers, "traceparent": header})
        check(status == 200, f"POST /explain with traceparent: {status}")
        check_request_trace(receiver, "/explain with traceparent", trace_id, parent, "/explain", 200, 1, stages)

        # With scores, a scores span too.
        trace_id, parent, header = traceparent()
        status, _ = http("POST", url + "/explain?scores=confidence_change", body, {**headers, "traceparent": header})
        check(status == 200, f"POST /explain?scores=confidence_change: {status}")
        check_request_trace(receiver, "/explain with scores", trace_id, parent, "/explain", 200, 1, stages + ["scores"])

        # v2 infer with two images: one set of stages per image.
        trace_id, parent, header = traceparent()
        b64 = base64.b64encode(image).decode()
        infer = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2], "data": [b64, b64]}],
                            "outputs": [{"name": "probabilities"}]}).encode()
        status, _ = http("POST", url + "/v2/models/resnet50/infer", infer,
                         {"Content-Type": "application/json", "traceparent": header})
        check(status == 200, f"POST /v2/models/resnet50/infer: {status}")
        no_overlay = ["decode", "queue", "forward", "backward", "render"]
        check_request_trace(receiver, "v2 infer of two images", trace_id, parent, "/v2/models/{name}/infer", 200, 2,
                            no_overlay)

        # A refused request: its span, its status, no stages.
        trace_id, parent, header = traceparent()
        status, _ = http("POST", url + "/explain", b"--x--\r\n", {"Content-Type": "multipart/form-data; boundary=x",
                                                                  "traceparent": header})
        check(status == 400, f"a malformed upload: {status}")
        check_request_trace(receiver, "a refused request", trace_id, parent, "/explain", 400, 0, [])

        # No traceparent: a trace of its own.
        with receiver.lock:
            before = len(receiver.spans)
        status, _ = http("POST", url + "/explain", body, headers)
        deadline = time.monotonic() + WAIT
        fresh = []
        while time.monotonic() < deadline and not fresh:
            with receiver.lock:
                fresh = [s for s in receiver.spans[before:] if s[2].kind == trace_pb2.Span.SPAN_KIND_SERVER]
            time.sleep(0.05)
        check(len(fresh) == 1 and not fresh[0][2].parent_span_id and len(fresh[0][2].trace_id) == 16,
              "a request without traceparent starts its own trace")

        # Metrics, through the Prometheus project's parser.
        status, text = http("GET", url + "/metrics")
        families = {f.name: f for f in text_string_to_metric_families(text.decode())}
        expected = {
            "gradcam_requests": "counter", "gradcam_stage_duration_seconds": "histogram",
            "gradcam_batch_size": "histogram", "gradcam_queue_depth": "gauge", "gradcam_jobs_waiting": "gauge",
            "gradcam_jobs_running": "gauge", "gradcam_queue_capacity": "gauge", "gradcam_ready": "gauge",
            "gradcam_batches": "counter", "gradcam_batched_images": "counter",
            "gradcam_jobs_cancelled": "counter", "gradcam_worker_panics": "counter", "gradcam_model_info": "gauge",
        }
        kinds = {name: f.type for name, f in families.items()}
        check(kinds == expected, f"/metrics families and types: {kinds}")
        explains = sum(s.value for s in families["gradcam_requests"].samples
                       if s.labels.get("endpoint") == "/explain" and s.labels.get("status") == "200"
                       and s.name.endswith("_total"))
        check(explains == 3, f"gradcam_requests_total{{endpoint=/explain,status=200}} = {explains} (3 sent)")
        images = [s.value for s in families["gradcam_batched_images"].samples if s.name.endswith("_total")]
        check(images and images[0] >= 5, f"gradcam_batched_images_total = {images} (5 images sent)")
        promtool = subprocess.run([os.environ["PROMTOOL"], "check", "metrics"], input=text,
                                  capture_output=True)
        check(promtool.returncode == 0,
              f"promtool check metrics: exit {promtool.returncode} {promtool.stdout.decode()}{promtool.stderr.decode()}")
        buckets = [s for s in families["gradcam_stage_duration_seconds"].samples
                   if s.name.endswith("_bucket") and s.labels["stage"] == "forward"]
        counts = [s.value for s in buckets]
        check(counts == sorted(counts) and buckets[-1].labels["le"] == "+Inf",
              "stage histogram buckets are cumulative, ending at +Inf")

        # SIGTERM flushes the spans still buffered.
        trace_id, parent, header = traceparent()
        status, _ = http("POST", url + "/explain", body, {**headers, "traceparent": header})
        server.terminate()
        code = server.wait(timeout=WAIT)
        check(code == 0, f"the server stops on SIGTERM (exit {code})")
        check_request_trace(receiver, "the last request before SIGTERM", trace_id, parent, "/explain", 200, 1, stages)
    finally:
        if server.poll() is None:
            server.kill()

    # OTEL_SDK_DISABLED=true turns the export off even with an endpoint.
    with receiver.lock:
        sent_before = receiver.requests
    quiet, quiet_url = start_server(binary, {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
                                             "OTEL_BSP_SCHEDULE_DELAY": "100", "OTEL_SDK_DISABLED": "true"}, log)
    try:
        body, headers = multipart(image)
        status, _ = http("POST", quiet_url + "/explain", body, headers)
        quiet.terminate()
        quiet.wait(timeout=WAIT)
        with receiver.lock:
            sent = receiver.requests - sent_before
        check(status == 200 and sent == 0, f"OTEL_SDK_DISABLED=true: nothing is exported ({sent} exports)")
    finally:
        if quiet.poll() is None:
            quiet.kill()
    receiver.shutdown()
    print(f"telemetry-test: {'FAIL' if failures else 'PASS'} ({len(failures)} failed)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
