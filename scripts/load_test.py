#!/usr/bin/env python3
"""Bounded overload + soak test of `gradcam-serve serve` (python3 stdlib only).

Starts the server (demo weights, loopback, port 0) with a small queue, then drives it with
more concurrent clients than the queue holds, mixing 224x224 and bigger PNGs and the
committed JPEG with varied options, for --duration seconds after a warm-up of
--warmup explanations (200s). Meanwhile a separate thread polls /health every 0.5 s.

Checks (exit status 1 when one fails, 2 when the server would not start):
  - every /explain ends in 200 (a valid answer) or 503 with Retry-After: no connection
    reset or other transport error, no other status;
  - every /health poll answers 200 within --health-limit-ms (default 100 ms);
  - VmRSS after the run within --rss-tolerance (default 10 %) of VmRSS after warm-up;
  - the server is still alive after the run, and exits 0 on SIGTERM.
Prints the figures; --json FILE also writes them as JSON.

    python3 scripts/load_test.py --bin target/release/gradcam-serve --duration 120
"""
import argparse
import http.client
import json
import os
import random
import signal
import struct
import subprocess
import sys
import threading
import time
import urllib.parse
import zlib
from collections import Counter

from serving import NotServing, wait_until_serving

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------- images, made here
def png(width, height, seed):
    """An RGB PNG: smooth gradients plus a band of noise (so it neither compresses to
    nothing nor is pure noise)."""
    rng = random.Random(seed)
    noise = bytes(rng.getrandbits(8) for _ in range(width * 3))
    rows = []
    for y in range(height):
        row = bytearray(width * 3)
        g = (y * 255) // max(1, height - 1)
        row[0::3] = bytes((x * 255) // max(1, width - 1) for x in range(width))
        row[1::3] = bytes([g]) * width
        row[2::3] = noise[(y % 3)::3][:width]
        rows.append(b"\x00" + bytes(row))
    raw = b"".join(rows)

    def chunk(kind, data):
        c = kind + data
        return struct.pack(">I", len(data)) + c + struct.pack(">I", zlib.crc32(c) & 0xFFFFFFFF)

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw, 6))
        + chunk(b"IEND", b"")
    )


def multipart(image, filename, fields=()):
    boundary = "loadtest%016x" % random.getrandbits(64)
    out = []
    for name, value in fields:
        out.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        )
    ctype = "image/jpeg" if filename.endswith(".jpg") else "image/png"
    out.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{filename}"\r\n'
        f"Content-Type: {ctype}\r\n\r\n".encode()
    )
    out.append(image)
    out.append(f"\r\n--{boundary}--\r\n".encode())
    return f"multipart/form-data; boundary={boundary}", b"".join(out)


def request_mix():
    """(name, query, headers, content_type, body), built once; clients pick at random."""
    small = png(224, 224, 1)
    medium = png(800, 600, 2)
    big = png(1920, 1080, 3)
    with open(os.path.join(ROOT, "docs", "chelsea.jpg"), "rb") as f:
        jpeg = f.read()
    mix = []

    def add(name, image, filename, query="", fields=(), accept="application/json"):
        ctype, body = multipart(image, filename, fields)
        mix.append((name, query, {"Accept": accept}, ctype, body))

    add("png224", small, "a.png")
    add("png224-crop-top3", small, "a.png", "?resize=crop&top_k=3")
    add("png224-fields", small, "a.png", fields=(("target", "281"), ("alpha", "0.3")))
    add("png800x600", medium, "b.png")
    add("png800x600-png", medium, "b.png", accept="image/png")
    add("png1920x1080", big, "c.png", "?overlay=false")
    add("png1920x1080-crop", big, "c.png", "?resize=crop")
    add("jpeg451x300", jpeg, "chelsea.jpg", "?top_k=10")
    add("jpeg451x300-png", jpeg, "chelsea.jpg", accept="image/png")
    return mix


# ---------------------------------------------------------------- helpers
def vm_rss_kib(pid, key="VmRSS"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {key} for pid {pid}")


def percentile(values, p):
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(p / 100 * len(s) + 0.5)) - 1))]


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.status = Counter()
        self.by_kind = Counter()
        self.failures = []  # (what, detail), first ones kept
        self.failure_count = 0
        self.latency = {200: [], 503: []}
        self.completed = 0

    def fail(self, what, detail):
        with self.lock:
            self.failure_count += 1
            if len(self.failures) < 20:
                self.failures.append((what, detail))


# ---------------------------------------------------------------- the server
def start_server(args):
    cmd = [
        args.bin, "serve", "--bind", "127.0.0.1:0", "--demo-weights",
        "--weights", "/nonexistent/weights.safetensors",
        "--queue-capacity", str(args.queue_capacity), "--workers", str(args.workers),
    ] + args.server_arg
    env = dict(os.environ, GRADCAM_LOG=os.environ.get("GRADCAM_LOG", "warn"))
    log = open(args.server_log, "wb")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, env=env)
    try:
        url = urllib.parse.urlsplit(wait_until_serving(proc))
    except NotServing as e:
        proc.kill()
        sys.exit(f"load-test: {e} (log in {args.server_log})")
    return proc, url.hostname, url.port, " ".join(cmd)


# ---------------------------------------------------------------- traffic
def client(host, port, mix, stats, stop, seed, pause_after_503):
    rng = random.Random(seed)
    while not stop.is_set():
        name, query, headers, ctype, body = rng.choice(mix)
        stats_key = name
        t0 = time.monotonic()
        conn = http.client.HTTPConnection(host, port, timeout=120)
        try:
            conn.request("POST", "/explain" + query, body=body,
                         headers=dict(headers, **{"Content-Type": ctype}))
            r = conn.getresponse()
            data = r.read()
        except Exception as e:  # resets, refused, broken pipe, timeouts: all failures
            stats.fail("transport", f"{name}: {type(e).__name__}: {e}")
            with stats.lock:
                stats.status["transport-error"] += 1
                stats.completed += 1
            conn.close()
            continue
        conn.close()
        elapsed = (time.monotonic() - t0) * 1e3
        ok = True
        if r.status == 200:
            if headers["Accept"] == "image/png":
                ok = data.startswith(b"\x89PNG") and r.getheader("X-Prediction-Class") is not None
            else:
                try:
                    j = json.loads(data)
                    ok = (
                        "prediction" in j and "saliency" in j
                        and len(j["saliency"]["data"]) == j["saliency"]["height"]
                    )
                except ValueError:
                    ok = False
            if not ok:
                stats.fail("bad-200", f"{name}: {data[:200]!r}")
        elif r.status == 503:
            if not r.getheader("Retry-After"):
                ok = False
                stats.fail("503-no-retry-after", f"{name}: {data[:200]!r}")
            if r.getheader("Content-Type") != "application/problem+json":
                ok = False
                stats.fail("503-not-problem", f"{name}: {r.getheader('Content-Type')}")
        else:
            ok = False
            stats.fail(f"status-{r.status}", f"{name}: {data[:300]!r}")
        with stats.lock:
            stats.status[r.status] += 1
            stats.by_kind[(stats_key, r.status)] += 1
            stats.completed += 1
            if r.status in stats.latency:
                stats.latency[r.status].append(elapsed)
        if r.status == 503 and pause_after_503 > 0:
            stop.wait(pause_after_503)


def health_poller(host, port, stop, interval, out, stats):
    while not stop.is_set():
        t0 = time.monotonic()
        try:
            c = http.client.HTTPConnection(host, port, timeout=10)
            c.request("GET", "/health")
            r = c.getresponse()
            body = r.read()
            c.close()
            ms = (time.monotonic() - t0) * 1e3
            out.append(ms)
            if r.status != 200 or b'"status"' not in body:
                stats.fail("health", f"status {r.status}: {body[:200]!r}")
        except Exception as e:
            out.append((time.monotonic() - t0) * 1e3)
            stats.fail("health", f"{type(e).__name__}: {e}")
        stop.wait(max(0.0, interval - (time.monotonic() - t0)))


def run_phase(host, port, mix, stats, clients, seed, pause, until_completed=None, seconds=None):
    stop = threading.Event()
    threads = [
        threading.Thread(target=client, args=(host, port, mix, stats, stop, seed + i, pause), daemon=True)
        for i in range(clients)
    ]
    start = time.monotonic()
    for t in threads:
        t.start()
    while True:
        time.sleep(0.05)
        if until_completed is not None and stats.status[200] >= until_completed:
            break
        if seconds is not None and time.monotonic() - start >= seconds:
            break
        if until_completed is not None and time.monotonic() - start > 600:
            break
    stop.set()
    for t in threads:
        t.join(timeout=180)
    return time.monotonic() - start


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bin", default=os.path.join(ROOT, "target/release/gradcam-serve"))
    p.add_argument("--duration", type=float, default=120, help="seconds of load after warm-up")
    p.add_argument("--clients", type=int, default=12)
    p.add_argument("--queue-capacity", type=int, default=4)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--warmup", type=int, default=50,
                   help="explanations (200s) before the RSS baseline")
    p.add_argument("--pause-after-503", type=float, default=0.05,
                   help="seconds a client waits after a 503 (a real client would honour Retry-After)")
    p.add_argument("--health-interval", type=float, default=0.5)
    p.add_argument("--health-limit-ms", type=float, default=100)
    p.add_argument("--rss-tolerance", type=float, default=0.10)
    p.add_argument("--server-arg", action="append", default=[], help="extra flag for `serve` (repeatable)")
    p.add_argument("--server-log", default="/tmp/gradcam-load-test-server.log")
    p.add_argument("--json", help="also write the figures here")
    p.add_argument("--seed", type=int, default=4)
    args = p.parse_args()
    random.seed(args.seed)

    print("load-test: building the request mix ...", flush=True)
    mix = request_mix()
    for name, query, headers, _, body in mix:
        print(f"  {name:22s} {len(body):>9,d} bytes  {query or '-'}  Accept: {headers['Accept']}")
    proc, host, port, cmd = start_server(args)
    pid = proc.pid
    print(f"load-test: server pid {pid} at http://{host}:{port}: {cmd}", flush=True)
    rss_ready = vm_rss_kib(pid)

    stats = Stats()
    health_ms = []
    health_stop = threading.Event()
    poller = threading.Thread(
        target=health_poller, args=(host, port, health_stop, args.health_interval, health_ms, stats), daemon=True
    )
    poller.start()

    warm_s = run_phase(host, port, mix, stats, args.clients, args.seed * 1000, args.pause_after_503,
                       until_completed=args.warmup)
    time.sleep(1.0)
    rss_warm = vm_rss_kib(pid)
    warm_counts = dict(stats.status)
    print(f"load-test: warm-up: {stats.completed} requests ({stats.status[200]} explained) in {warm_s:.1f} s "
          f"{dict(warm_counts)}; VmRSS {rss_warm / 1024:.1f} MiB", flush=True)

    peak = [rss_warm]
    series = []  # (seconds into the load, VmRSS MiB, explanations so far), every 10 s
    sampling = threading.Event()
    load_start = time.monotonic()

    def sample_rss():
        last = -10.0
        while not sampling.is_set():
            try:
                rss = vm_rss_kib(pid)
            except (OSError, RuntimeError):
                return
            peak[0] = max(peak[0], rss)
            t = time.monotonic() - load_start
            if t - last >= 10.0:
                series.append((round(t), round(rss / 1024, 1), stats.status[200]))
                last = t
            sampling.wait(1.0)

    sampler = threading.Thread(target=sample_rss, daemon=True)
    sampler.start()
    before = stats.completed
    load_s = run_phase(host, port, mix, stats, args.clients, args.seed * 2000, args.pause_after_503,
                       seconds=args.duration)
    sampling.set()
    health_stop.set()
    poller.join(timeout=15)
    time.sleep(2.0)
    alive = proc.poll() is None
    rss_after = vm_rss_kib(pid) if alive else None

    proc.send_signal(signal.SIGTERM)
    try:
        exit_code = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        exit_code = "killed after 60 s"

    total = stats.completed
    ok200 = stats.latency[200]
    r503 = stats.latency[503]
    health_over = [m for m in health_ms if m > args.health_limit_ms]
    rss_change = (rss_after - rss_warm) / rss_warm if rss_after else None
    figures = {
        "command": cmd,
        "clients": args.clients,
        "queue_capacity": args.queue_capacity,
        "workers": args.workers,
        "warmup_requests": before,
        "load_seconds": round(load_s, 1),
        "requests": total,
        "requests_during_load": total - before,
        "status_counts": {str(k): v for k, v in sorted(stats.status.items(), key=lambda kv: str(kv[0]))},
        "by_request": {f"{k[0]} {k[1]}": v for k, v in sorted(stats.by_kind.items())},
        "throughput_200_per_s": round(stats.status[200] / (warm_s + load_s), 2),
        "latency_200_ms": {"p50": round(percentile(ok200, 50), 1), "p99": round(percentile(ok200, 99), 1),
                           "max": round(max(ok200, default=float("nan")), 1)},
        "latency_503_ms": {"p50": round(percentile(r503, 50), 1), "p99": round(percentile(r503, 99), 1),
                           "max": round(max(r503, default=float("nan")), 1)},
        "health_polls": len(health_ms),
        "health_ms": {"p50": round(percentile(health_ms, 50), 1), "p99": round(percentile(health_ms, 99), 1),
                      "max": round(max(health_ms, default=float("nan")), 1)},
        "health_over_limit": len(health_over),
        "rss_ready_mib": round(rss_ready / 1024, 1),
        "rss_after_warmup_mib": round(rss_warm / 1024, 1),
        "rss_peak_sampled_mib": round(peak[0] / 1024, 1),
        "rss_after_run_mib": round(rss_after / 1024, 1) if rss_after else None,
        "rss_change_pct": round(100 * rss_change, 2) if rss_change is not None else None,
        "rss_series_mib": series,
        "server_alive_after_run": alive,
        "server_exit_on_sigterm": exit_code,
        "failures": stats.failure_count,
        "first_failures": stats.failures,
    }

    problems = []
    if stats.failure_count:
        problems.append(f"{stats.failure_count} failed requests/polls")
    if stats.status[200] == 0:
        problems.append("no request succeeded")
    if stats.status[503] == 0:
        problems.append("no request was refused: the load did not exceed the queue")
    if health_over:
        problems.append(f"{len(health_over)} /health polls over {args.health_limit_ms:.0f} ms")
    if not health_ms:
        problems.append("no /health poll ran")
    if not alive:
        problems.append("the server died during the run")
    elif abs(rss_change) > args.rss_tolerance:
        problems.append(f"VmRSS moved {100 * rss_change:+.1f} % (limit {100 * args.rss_tolerance:.0f} %)")
    if exit_code != 0:
        problems.append(f"server exit on SIGTERM: {exit_code}")
    figures["result"] = "FAIL: " + "; ".join(problems) if problems else "PASS"

    print()
    print(f"load-test: {args.clients} clients, queue capacity {args.queue_capacity}, {args.workers} worker(s); "
          f"{load_s:.0f} s of load after a {warm_s:.0f} s warm-up")
    print(f"  requests           {total} ({before} warm-up + {total - before} under load)")
    print("  statuses           " + ", ".join(f"{k}: {v}" for k, v in figures["status_counts"].items()))
    print(f"  200 latency ms     p50 {figures['latency_200_ms']['p50']}, p99 {figures['latency_200_ms']['p99']}, "
          f"max {figures['latency_200_ms']['max']}  ({figures['throughput_200_per_s']} explanations/s)")
    print(f"  503 latency ms     p50 {figures['latency_503_ms']['p50']}, p99 {figures['latency_503_ms']['p99']}, "
          f"max {figures['latency_503_ms']['max']}")
    print(f"  /health            {len(health_ms)} polls, p50 {figures['health_ms']['p50']} ms, "
          f"p99 {figures['health_ms']['p99']} ms, max {figures['health_ms']['max']} ms "
          f"({len(health_over)} over {args.health_limit_ms:.0f} ms)")
    print(f"  VmRSS MiB          ready {figures['rss_ready_mib']}, after warm-up {figures['rss_after_warmup_mib']}, "
          f"peak {figures['rss_peak_sampled_mib']}, after run {figures['rss_after_run_mib']} "
          f"({figures['rss_change_pct']:+.2f} %)" if rss_change is not None else "  VmRSS: server gone")
    print("  VmRSS every 10 s   " + ", ".join(f"{t}s {m}" for t, m, _ in series))
    print(f"  SIGTERM            exit {exit_code}")
    for what, detail in stats.failures:
        print(f"  FAILURE {what}: {detail}")
    print(f"load-test: {figures['result']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
