#!/usr/bin/env python3
"""The gateway test: docker/nginx.conf, rendered for loopback, run by real nginx in front of
two real gradcam-serve replicas (demo weights), then shown to:

  (b) pass uploads and answers through intact: the same JSON (all but timing_ms) and the
      same PNG bytes as a replica answers directly; X-Request-Id passed through, or made
      up by the gateway when the client sends none; the gateway's upload limit not below
      the service's (an upload just over 20 MiB gets the service's own 413);
  (a) spread requests over both replicas (their /metrics counters);
  (d) retry an overloaded replica's 503 on the other replica (replica B runs with
      --queue-capacity 1): no 503 reaches the client while B's metrics count 503s;
  (c) lose no request when a replica is killed (SIGKILL) mid-run: failures in the
      switch-over window (kill until nginx marks the replica down) and after it;
  (e) with API keys on two more replicas behind a second nginx: large unauthenticated
      uploads get the service's 401 through the gateway (not a 502), and do not get the
      replicas marked down (authenticated requests right after are answered).

Python 3 standard library only. Run by scripts/gateway-test.sh (which installs nginx and
builds the binary when missing); traffic stays on 127.0.0.1; every process it starts is
stopped at exit. Exit status 0 when every check passed.
"""

import argparse
import concurrent.futures
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
import zlib

from serving import NotServing, wait_until_serving

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "gradcam-serve")
CONF = os.path.join(ROOT, "docker", "nginx.conf")
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
MIB = 1024 * 1024
SERVICE_UPLOAD_LIMIT = 20 * MIB  # config.toml server.max_upload_bytes (the default)

failures = []  # what went wrong, for the summary and the exit status
figures = {}  # what the summary prints


def check(ok, what):
    print(("  ok   " if ok else "  FAIL ") + what, flush=True)
    if not ok:
        failures.append(what)
    return ok


# ---------------------------------------------------------------------------- rendering

def render(conf, listen_port, replica_ports, tmp):
    """docker/nginx.conf for loopback: only the listen port, the upstream servers and the
    log/cache/pid paths change. Each rewrite must find its target exactly as documented at
    the top of nginx.conf, so an edit there cannot silently leave the test on another
    config."""
    def sub(pattern, repl, text, expected=1):
        new, n = re.subn(pattern, repl, text, flags=re.M)
        bad = n == 0 if expected == 0 else n != expected  # expected 0: at least one
        if bad:
            raise SystemExit(f"render: {pattern!r} matched {n} times in {CONF}")
        return new

    out = sub(r"^(\s*)listen 8080;$", rf"\g<1>listen 127.0.0.1:{listen_port};", conf)

    def servers(m):
        indent, params = m.group(1), m.group(2) or ""
        return "\n".join(f"{indent}server 127.0.0.1:{p}{params};" for p in replica_ports)

    out, n = re.subn(r"^(\s*)server gradcam:8080((?: [^;\n]*)?);$", servers, out, flags=re.M)
    if n != 1:
        raise SystemExit(f"render: the upstream line `server gradcam:8080 ...;` matched {n} times")
    out = sub(r"^pid /var/run/nginx\.pid;$", f"pid {tmp}/nginx.pid;", out)
    out = sub(r"/var/log/nginx/", f"{tmp}/log/", out, expected=0)
    out = sub(r"/var/cache/nginx/", f"{tmp}/cache/", out, expected=0)
    code = "\n".join(l for l in out.splitlines() if not l.lstrip().startswith("#"))
    for left in ("/var/", "gradcam:8080", "listen 8080"):
        if left in code:
            raise SystemExit(f"render: {left!r} is still in the rendered config")
    return out


# ---------------------------------------------------------------------------- images

def png(width, height, pixel):
    """An RGB PNG, pixel(x, y) -> bytes of 3 per row built by the caller's function."""
    raw = b"".join(b"\x00" + pixel(y) for y in range(height))

    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def gradient_png(w, h):
    return png(w, h, lambda y: bytes(v for x in range(w)
                                     for v in (x * 255 // w, y * 255 // h, (x + y) % 256)))


def noise_png(w, h, seed):
    rng = random.Random(seed)
    return png(w, h, lambda y: rng.randbytes(3 * w))


# ---------------------------------------------------------------------------- HTTP

def request(port, method, path, body=None, headers=None, timeout=60):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        data = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data
    finally:
        conn.close()


def multipart(image, boundary=None):
    boundary = boundary or uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; "
            f"filename=\"image.png\"\r\nContent-Type: image/png\r\n\r\n").encode() + image \
        + f"\r\n--{boundary}--\r\n".encode()
    return boundary, body


def framing(image):
    """Bytes of multipart framing around an image (boundaries are 32 hex digits)."""
    return len(multipart(image)[1]) - len(image)


def explain(port, image, query="", headers=None):
    boundary, body = multipart(image)
    h = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    h.update(headers or {})
    return request(port, "POST", "/explain" + query, body, h)


def explain_counts(port):
    """gradcam_requests_total{endpoint="/explain",status=...} of one replica."""
    _, _, text = request(port, "GET", "/metrics", timeout=10)
    counts = {}
    for m in re.finditer(r'^gradcam_requests_total\{endpoint="/explain",status="(\d+)"\} (\d+)$',
                         text.decode(), re.M):
        counts[m.group(1)] = int(m.group(2))
    return counts


def delta(after, before, status):
    return after.get(status, 0) - before.get(status, 0)


def without_timing(body):
    answer = json.loads(body)
    answer.pop("timing_ms", None)
    return answer


# ---------------------------------------------------------------------------- processes

class Processes:
    """Everything started here, stopped at exit whatever happens."""

    def __init__(self):
        self.procs = []

    def add(self, proc):
        self.procs.append(proc)
        return proc

    def stop_all(self):
        for p in reversed(self.procs):
            if p.poll() is None:
                try:
                    p.terminate()
                except ProcessLookupError:
                    pass
        deadline = time.time() + 5
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def die_with_parent(sig):
    """For Popen's preexec_fn: the child gets `sig` when this script dies, even by SIGKILL,
    so no replica or nginx outlives the test."""
    def set_pdeathsig():
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, int(sig))  # PR_SET_PDEATHSIG
    return set_pdeathsig


def start_replica(procs, tmp, name, extra):
    log = open(os.path.join(tmp, f"replica-{name}.log"), "wb")
    proc = procs.add(subprocess.Popen(
        [BIN, "serve", "--bind", "127.0.0.1:0", "--demo-weights",
         "--weights", "/nonexistent/resnet50.safetensors", "--workers", "1", "--threads", "1",
         *extra],
        stdout=subprocess.PIPE, stderr=log, env={**os.environ, "GRADCAM_LOG": "warn"},
        preexec_fn=die_with_parent(signal.SIGKILL)))
    try:
        url = wait_until_serving(proc, f"replica {name}")
    except NotServing as e:
        raise SystemExit(f"{e} (see {log.name})")
    # Keep reading stdout so the replica can never block on a full pipe.
    threading.Thread(target=proc.stdout.read, daemon=True).start()
    return proc, urllib.parse.urlsplit(url).port


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_nginx(procs, tmp, replica_ports):
    with open(CONF) as f:
        conf = f.read()
    for d in ("log", "cache"):
        os.makedirs(os.path.join(tmp, d), exist_ok=True)
    for attempt in range(3):
        port = free_port()
        path = os.path.join(tmp, "nginx.conf")
        with open(path, "w") as f:
            f.write(render(conf, port, replica_ports, tmp))
        base = [NGINX, "-p", tmp, "-c", path, "-e", os.path.join(tmp, "log", "error.log")]
        subprocess.run(base + ["-t", "-q"], check=True)
        # SIGTERM: nginx's master stops its workers too.
        proc = procs.add(subprocess.Popen(base + ["-g", "daemon off;"], start_new_session=True,
                                          preexec_fn=die_with_parent(signal.SIGTERM)))
        deadline = time.time() + 10
        while time.time() < deadline and proc.poll() is None:
            try:
                if request(port, "GET", "/gateway/health", timeout=2)[0] == 200:
                    return proc, port
            except OSError:
                pass
            time.sleep(0.05)
        if proc.poll() is None:
            proc.terminate()
            proc.wait()
    raise SystemExit(f"nginx did not start; see {tmp}/log/error.log")


def error_log_time(line):
    """The Unix time (whole seconds) of an nginx error log line, which is in local time."""
    return int(time.mktime(time.strptime(line[:19], "%Y/%m/%d %H:%M:%S")))


def access_log(tmp):
    """Parsed lines of the gateway's access log (the log_format `gateway`)."""
    entries = []
    pat = re.compile(r'"(?P<req>[^"]*)" (?P<status>\d+) .*rid=(?P<rid>\S*) '
                     r'upstream=\[(?P<up>[^\]]*)\] upstream_status=\[(?P<ups>[^\]]*)\] '
                     r'rt=(?P<rt>[\d.]+) .*t=(?P<t>[\d.]+)')
    with open(os.path.join(tmp, "log", "access.log")) as f:
        for line in f:
            m = pat.search(line)
            if m:
                entries.append({
                    "request": m["req"], "status": int(m["status"]), "rid": m["rid"],
                    "upstreams": [u.strip() for u in m["up"].split(",") if u.strip()],
                    "upstream_status": [s.strip() for s in m["ups"].split(",") if s.strip()],
                    "t": float(m["t"]),  # when it ended
                    "start": float(m["t"]) - float(m["rt"]),
                })
    return entries


# ---------------------------------------------------------------------------- checks

def check_intact(gw, a, b, images):
    print("(b) uploads and answers pass through intact", flush=True)
    for name, image in images:
        direct_a = explain(a, image)
        direct_b = explain(b, image)
        check(direct_a[0] == 200 and direct_b[0] == 200, f"{name}: direct answers are 200")
        reference = without_timing(direct_a[2])
        check(without_timing(direct_b[2]) == reference, f"{name}: replicas A and B agree")
        # Twice, so that round-robin sends it to each replica once.
        for i in range(2):
            status, headers, body = explain(gw, image)
            check(status == 200 and headers.get("content-type") == "application/json"
                  and without_timing(body) == reference,
                  f"{name}: gateway JSON #{i + 1} equals the direct JSON "
                  f"(all fields but timing_ms; {len(body)} bytes)")
        direct_png = explain(a, image, headers={"Accept": "image/png"})
        via_png = explain(gw, image, headers={"Accept": "image/png"})
        check(direct_png[0] == via_png[0] == 200 and direct_png[2] == via_png[2]
              and via_png[1].get("content-type") == "image/png",
              f"{name}: gateway PNG overlay is byte-identical ({len(via_png[2])} bytes)")

    small = images[0][1]
    rid = "gateway-test-" + uuid.uuid4().hex[:12]
    status, headers, _ = explain(gw, small, headers={"X-Request-Id": rid})
    check(status == 200 and headers.get("x-request-id") == rid,
          "X-Request-Id sent by the client reaches the replica and comes back unchanged")
    status, headers, _ = explain(gw, small)
    made_up = headers.get("x-request-id", "")
    check(status == 200 and re.fullmatch(r"[0-9a-f]{32}", made_up) is not None,
          f"without one, the replica gets and echoes the gateway's $request_id ({made_up})")

    # Upload limits: the gateway's equals the service's. A body of exactly the limit passes
    # both (zeros, so the service reads it all and answers 400 "invalid-image"); one byte
    # more is refused by the gateway itself, as problem+json.
    status, headers, body = explain(gw, b"\0" * (SERVICE_UPLOAD_LIMIT - framing(b"")))
    problem = json.loads(body) if headers.get("content-type") == "application/problem+json" else {}
    check(status == 400 and problem.get("type", "").endswith(":invalid-image"),
          f"a body of exactly {SERVICE_UPLOAD_LIMIT} bytes passes the gateway to the service "
          f"({status} {problem.get('type', body[:80])})")
    status, headers, body = explain(gw, b"\0" * (SERVICE_UPLOAD_LIMIT + 1 - framing(b"")))
    problem = json.loads(body) if headers.get("content-type") == "application/problem+json" else {}
    check(status == 413 and problem.get("type", "").endswith(":payload-too-large")
          and re.fullmatch(r"[0-9a-f]{32}", headers.get("x-request-id", "")) is not None,
          f"a body of {SERVICE_UPLOAD_LIMIT + 1} bytes gets the gateway's problem+json 413 "
          f"with an X-Request-Id ({status} {problem.get('detail', body[:80])!r})")


def check_spread(gw, a, b, image, n):
    print(f"(a) {n} requests, one after another, spread over both replicas", flush=True)
    before_a, before_b = explain_counts(a), explain_counts(b)
    statuses = [explain(gw, image)[0] for _ in range(n)]
    to_a = delta(explain_counts(a), before_a, "200")
    to_b = delta(explain_counts(b), before_b, "200")
    figures["spread"] = f"{n} requests: replica A served {to_a}, replica B served {to_b}"
    check(statuses.count(200) == n, f"all {n} answered 200 ({statuses.count(200)})")
    check(to_a + to_b == n and min(to_a, to_b) >= n // 4,
          f"both replicas served: A {to_a}, B {to_b}")


def check_overload(gw, a, b, image, tmp, burst, rounds):
    print(f"(d) bursts of {burst} concurrent requests; replica B admits 1 at a time",
          flush=True)
    before_a, before_b = explain_counts(a), explain_counts(b)
    log_mark = time.time()
    statuses = []
    with concurrent.futures.ThreadPoolExecutor(burst) as pool:
        for _ in range(rounds):
            statuses += [f.result()[0] for f in
                         [pool.submit(explain, gw, image) for _ in range(burst)]]
            if delta(explain_counts(b), before_b, "503") > 0 and len(statuses) >= 2 * burst:
                break
    after_a, after_b = explain_counts(a), explain_counts(b)
    b503 = delta(after_b, before_b, "503")
    gw503 = statuses.count(503)
    retried = [e for e in access_log(tmp) if e["t"] >= log_mark - 1
               and e["request"].startswith("POST /explain")
               and e["upstream_status"][:-1].count("503") > 0]
    retried_ok = [e for e in retried if e["status"] == 200]
    figures["overload"] = (
        f"{len(statuses)} concurrent requests: replica B refused {b503} with 503 "
        f"(A answered {delta(after_a, before_a, '200')}, B {delta(after_b, before_b, '200')}); "
        f"gateway: {len(retried_ok)} answers retried after a 503, "
        f"{statuses.count(200)}x 200, {gw503}x 503 to clients")
    check(b503 > 0, f"replica B answered 503 {b503} times (it was overloaded)")
    check(statuses.count(200) == len(statuses),
          f"every request answered 200 at the gateway ({statuses.count(200)}/{len(statuses)}, "
          f"{gw503} 503s)")
    check(len(retried_ok) == b503,
          f"each of B's 503s was retried on A and answered 200 there "
          f"(access log: {len(retried_ok)} with upstream_status '503, 200')")


def check_kill(gw, a, b, b_proc, b_port, image, tmp, after_kill_s, concurrency):
    print(f"(c) {concurrency} streams of requests; replica B SIGKILLed mid-run", flush=True)
    stop = threading.Event()
    results = []  # (start, end, status or error)
    lock = threading.Lock()

    def stream():
        while not stop.is_set():
            start = time.time()
            try:
                status = explain(gw, image)[0]
            except OSError as e:
                status = f"{type(e).__name__}: {e}"
            with lock:
                results.append((start, time.time(), status))

    before_b = explain_counts(b)
    threads = [threading.Thread(target=stream) for _ in range(concurrency)]
    for t in threads:
        t.start()
    # B may still be resting after (d) (fail_timeout); kill it once it takes traffic again,
    # so the kill lands mid-run with requests on it.
    deadline = time.time() + 20
    while time.time() < deadline and delta(explain_counts(b), before_b, "200") < 3:
        time.sleep(0.05)
    served_before = delta(explain_counts(b), before_b, "200")
    time.sleep(random.Random(7).uniform(0.05, 0.2))  # land inside an explanation
    t_kill = time.time()
    b_proc.send_signal(signal.SIGKILL)
    b_proc.wait()
    time.sleep(after_kill_s)
    stop.set()
    for t in threads:
        t.join(90)

    dead = f"127.0.0.1:{b_port}"
    tries_on_dead = []  # end times of gateway entries that tried the dead replica
    cut_off = 0  # of those, how many were on B when it was killed
    for e in access_log(tmp):
        if e["t"] >= t_kill and e["request"].startswith("POST /explain"):
            tries = e["upstreams"].count(dead)
            tries_on_dead += [e["t"]] * tries
            if tries and e["start"] < t_kill and e["upstreams"][0] == dead:
                cut_off += 1
    tries_on_dead.sort()
    # nginx marks it down at its max_fails-th failure within fail_timeout, counting the 503s
    # of (b) if they are recent enough, so the count of tries says nothing by itself. Its
    # error log says when ("temporarily disabled", to the second), and a replica marked
    # down is not tried again for fail_timeout (5 s, longer than after_kill_s): the last
    # try on the dead replica is the mark-down.
    disabled = [line for line in open(os.path.join(tmp, "log", "error.log"))
                if "temporarily disabled" in line and dead in line
                and error_log_time(line) >= int(t_kill)]
    t_down = tries_on_dead[-1] if disabled and tries_on_dead else None
    in_flight = [r for r in results if r[0] < t_kill < r[1]]
    failed = [r for r in results if r[2] != 200]
    window = [r for r in results if r[1] >= t_kill and (t_down is None or r[0] < t_down)]
    failed_window = [r for r in window if r[2] != 200]
    failed_after = [r for r in failed if t_down is not None and r[0] >= t_down]
    after = [r for r in results if t_down is not None and r[0] >= t_down]
    down_ms = f"{(t_down - t_kill) * 1e3:.0f} ms" if t_down else "never"
    figures["kill"] = (
        f"{len(results)} requests ({served_before} on B before the kill, {len(in_flight)} in "
        f"flight at the kill); nginx marked B down {down_ms} after the kill; switch-over "
        f"window: {len(window)} requests, {len(failed_window)} failed; after it: "
        f"{len(after)} requests, {len(failed_after)} failed; attempts on the dead replica "
        f"resent to A: {len(tries_on_dead)} ({cut_off} cut off mid-explanation by the kill, "
        f"{len(tries_on_dead) - cut_off} refused connections); failures overall: {len(failed)}")
    check(served_before >= 3, f"B was serving before the kill ({served_before} answered)")
    check(t_down is not None, f"nginx marked the dead replica down ({down_ms} after the kill)")
    check(len(after) > 0 and not failed_after,
          f"no request lost after the mark-down ({len(failed_after)} of {len(after)} failed)")
    check(not failed_window,
          f"no request lost in the switch-over window either ({len(failed_window)} of "
          f"{len(window)} failed; in flight at the kill: {len(in_flight)})")
    for r in failed[:5]:
        print(f"       failed: started {r[0] - t_kill:+.3f} s from the kill: {r[2]}")


# ---------------------------------------------------------------------------- main

def check_auth(procs, tmp, image, uploads=4, size=19 * MIB):
    print(f"(e) API keys: {uploads} unauthenticated {size // MIB} MiB uploads, then "
          "authenticated requests", flush=True)
    keyed = os.path.join(tmp, "auth")
    os.makedirs(keyed)
    os.chmod(keyed, 0o755)
    _, c = start_replica(procs, keyed, "C", ["--api-keys", "k3y"])
    _, d = start_replica(procs, keyed, "D", ["--api-keys", "k3y"])
    _, gw = start_nginx(procs, keyed, [c, d])
    big = bytes(random.Random(5).getrandbits(8) for _ in range(4096)) * (size // 4096)
    refused = []
    for _ in range(uploads):
        status, headers, body = explain(gw, big)
        kind = headers.get("content-type", "")
        refused.append(status)
        if status != 401 or kind != "application/problem+json":
            print(f"       got {status} {kind}: {body[:200]!r}")
    check(refused == [401] * uploads,
          f"every unauthenticated upload got the service's 401 problem+json ({refused})")
    answered = [explain(gw, image, headers={"Authorization": "Bearer k3y"})[0]
                for _ in range(4)]
    check(answered == [200] * 4,
          f"authenticated requests right after are answered: no replica marked down ({answered})")
    figures["auth"] = (f"{uploads} unauthenticated {size // MIB} MiB uploads: {refused}; "
                       f"then authenticated: {answered}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    for path, what in ((BIN, "the release binary (cargo build --release)"), (NGINX, "nginx")):
        if not os.access(path, os.X_OK):
            raise SystemExit(f"gateway test: {what} is missing at {path}")

    started = time.time()
    tmp = tempfile.mkdtemp(prefix="gradcam-gateway-test.")
    os.chmod(tmp, 0o755)  # nginx workers (nobody, when started as root) write under cache/
    procs = Processes()

    def on_signal(signum, _frame):
        raise SystemExit(f"gateway test: stopped by signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    finished = False
    try:
        a_proc, a = start_replica(procs, tmp, "A", [])
        b_proc, b = start_replica(procs, tmp, "B", ["--queue-capacity", "1"])
        _, gw = start_nginx(procs, tmp, [a, b])
        print(f"replica A 127.0.0.1:{a}, replica B 127.0.0.1:{b} (--queue-capacity 1), "
              f"nginx 127.0.0.1:{gw} with docker/nginx.conf; logs in {tmp}", flush=True)

        images = [("64x48 gradient PNG", gradient_png(64, 48)),
                  ("1024x768 noise PNG", noise_png(1024, 768, seed=6))]
        check_intact(gw, a, b, images)
        small = images[0][1]
        check_spread(gw, a, b, small, n=12)
        check_overload(gw, a, b, small, tmp, burst=6, rounds=3)
        check_kill(gw, a, b, b_proc, b, small, tmp, after_kill_s=4.0, concurrency=2)
        check(a_proc.poll() is None, "replica A still running at the end")
        check_auth(procs, tmp, small)
        finished = True
    finally:
        procs.stop_all()
        if failures or args.keep or not finished:
            print(f"logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    version = subprocess.run([NGINX, "-v"], capture_output=True, text=True).stderr.strip()
    print(f"\ngateway test summary ({time.time() - started:.0f} s, {version.split(': ')[-1]}):")
    for key in ("spread", "overload", "kill", "auth"):
        if key in figures:
            print(f"  {key:9}{figures[key]}")
    if failures:
        print(f"FAILED: {len(failures)} check(s):")
        for f in failures:
            print(f"  - {f}")
        return 1
    print("all gateway checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
