#!/usr/bin/env python3
"""The image test: docker/Dockerfile built by podman as shipped (build args aside) and run
for real, then docker/compose.yaml brought up by podman-compose. It shows:

  (build)   the image builds; cold and cached build times; its size and what takes it;
            it runs as a non-root user, keeps its HEALTHCHECK, exposes 8080;
  (run)     with demo weights it gets ready (/ready), and its JSON for two images (a JPEG
            photo and a PNG) equals what the same commit's release binary answers outside
            the container, timing_ms aside; the PNG overlay is byte-identical too;
            `podman healthcheck run` says healthy; the process runs as uid 10001; without
            weights (and no demo flag) it refuses to start;
  (term)    SIGTERM (`podman stop`, the image's STOPSIGNAL) while an explanation is running
            (seen in /metrics before the signal): that request is answered, and the
            container exits 0 on its own, well before podman's kill;
  (k8s)     the image started as deploy/k8s/deployment.yaml starts it: its user, read-only
            root, no capabilities, its memory limit, configmap.yaml's config.toml mounted
            where GRADCAM_CONFIG points, the weights folder read-only; the probes' paths
            answer and it explains; its peak memory is reported against the limit;
  (compose) docker/compose.yaml with podman-compose: the gateway (nginx) and two replicas
            (demo weights), both replicas healthy by their compose health check (/ready);
            explanations through the gateway equal the binary's; one replica stopped
            (SIGTERM, its stop_grace_period) while requests stream in: every request during
            and after the stop is answered 200, by the other replica.

Run by scripts/image-test.sh, which makes the base images and sets up podman (its own
storage, runc, ulimits). Waits are on conditions (/ready, a health check, a metric), each
bounded; traffic goes only to 127.0.0.1 and to containers on this machine. Every container
and the compose stack it starts are removed at exit. Exit status 0 when every check passed.
"""

import argparse
import concurrent.futures
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

import yaml  # the deploy tools' venv (scripts/setup-deploy-tools.sh) has PyYAML

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import gateway_test as gt  # noqa: E402  (PNG makers, multipart requests)
from serving import NotServing, wait_until_serving  # noqa: E402

BIN = os.path.join(ROOT, "target", "release", "gradcam-serve")
IMAGE = "localhost/gradcam-serve:latest"
BUILDER = "localhost/gradcam-serve-builder:latest"
PREFIX = "gradcam-image-test"
PROJECT = PREFIX  # the compose project: containers gradcam-image-test_gradcam_1, ...

failures = []
figures = {}


def check(ok, what):
    print(("  ok   " if ok else "  FAIL ") + what, flush=True)
    if not ok:
        failures.append(what)
    return ok


def podman(*args, timeout=120, check_rc=True):
    r = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    if check_rc and r.returncode != 0:
        raise SystemExit(f"podman {' '.join(args)}: exit {r.returncode}: {r.stderr.strip()[-800:]}")
    return r


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what, condition, timeout, interval=0.2):
    """Polls condition() until it returns something true; SystemExit after timeout s."""
    deadline = time.time() + timeout
    while True:
        try:
            value = condition()
            if value:
                return value
        except OSError:
            pass
        if time.time() > deadline:
            raise SystemExit(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def ready(port):
    return gt.request(port, "GET", "/ready", timeout=5)[0] == 200


def metric(port, name):
    _, _, text = gt.request(port, "GET", "/metrics", timeout=10)
    m = re.search(rf"^{name} (\d+)$", text.decode(), re.M)
    return int(m.group(1)) if m else None


def explain_200s(text):
    m = re.search(r'^gradcam_requests_total\{endpoint="/explain",status="200"\} (\d+)$',
                  text, re.M)
    return int(m.group(1)) if m else 0


def mib(n):
    return f"{n / 2**20:.0f} MiB"


# ---------------------------------------------------------------------------- build

def torch_build_args():
    """The PyPI variant the Dockerfile documents: torch from PyPI plus the two CUDA runtime
    wheels scripts/setup-libtorch.sh installs (the same versions)."""
    setup = open(os.path.join(ROOT, "scripts", "setup-libtorch.sh")).read()
    extra = " ".join(re.findall(r"\bnvidia-[\w-]+==[\d.]+", setup))
    return ["--build-arg", "TORCH_INDEX_URL=https://pypi.org/simple",
            "--build-arg", f"TORCH_EXTRA_WHEELS={extra}"]


def build(logdir, what, extra):
    log = os.path.join(logdir, f"build-{what}.log")
    cmd = ["podman", "build", "--pull=never", "--format", "docker", "-f", "docker/Dockerfile",
           *torch_build_args(), *extra, "."]
    start = time.time()
    with open(log, "w") as f:
        r = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, timeout=3600)
    took = time.time() - start
    text = open(log).read()
    steps = len(re.findall(r"STEP \d+/\d+: ", text))
    cached = len(re.findall(r"^--> Using cache", text, re.M))
    froms = len(re.findall(r"STEP \d+/\d+: FROM ", text))  # never "Using cache"
    steps -= froms
    if r.returncode != 0:
        print(text[-6000:])
        raise SystemExit(f"podman build ({what}) failed: exit {r.returncode}; log {log}")
    return took, steps, cached


def check_build(logdir):
    print("(build) docker/Dockerfile with podman (torch from PyPI)", flush=True)
    old = podman("image", "inspect", "--format", "{{.Id}}", IMAGE, check_rc=False).stdout.strip()
    # The builder stage gets a tag of its own so that pruning dangling images between runs
    # keeps its layers: they are the cache of the next run.
    t1, s1, c1 = build(logdir, "builder", ["--target", "builder", "-t", BUILDER])
    t2, s2, c2 = build(logdir, "image", ["-t", IMAGE])
    first = t1 + t2
    kind = "cold" if c1 == 0 else f"{c1 + c2} of {s1 + s2} steps from the cache"
    t3, s3, c3 = build(logdir, "again", ["-t", IMAGE])
    figures["build"] = (f"first build {first:.0f} s ({kind}: builder stage {t1:.0f} s, runtime "
                        f"stage {t2:.0f} s); again, nothing changed: {t3:.1f} s ({c3} of {s3} "
                        f"steps from the cache)")
    check(True, figures["build"])
    check(c3 == s3, f"the second build is served from the cache ({c3} of {s3} steps)")
    # Old images of earlier runs, no longer tagged: gone, so the storage does not grow.
    if old and old != podman("image", "inspect", "--format", "{{.Id}}", IMAGE).stdout.strip():
        podman("rmi", old, check_rc=False)
    podman("image", "prune", "-f", timeout=600, check_rc=False)

    info = json.loads(podman("image", "inspect", IMAGE).stdout)[0]
    size = info["Size"]
    config = info.get("Config", {})
    figures["size"] = f"{mib(size)} ({size / 1e9:.2f} GB)"
    check(size < 1e9, f"image size {figures['size']} is under 1 GB")
    user = config.get("User", "")
    check(user not in ("", "root", "0") and not user.startswith(("0:", "root:")),
          f"the image's USER is not root ({user!r})")
    hc = (info.get("Healthcheck") or config.get("Healthcheck") or {}).get("Test", [])
    check("/health" in " ".join(hc), f"the image keeps its HEALTHCHECK ({hc})")
    check("8080/tcp" in (config.get("ExposedPorts") or {}), "the image exposes 8080")
    breakdown(size)


def breakdown(size):
    """What takes the space: the layers, and the biggest files of the staged libtorch."""
    hist = podman("history", "--format", "{{.Size}}\t{{.CreatedBy}}", IMAGE).stdout
    rows = []
    for line in hist.splitlines():
        human, _, created = line.partition("\t")
        if human.strip() in ("0B", "0 B"):
            continue
        created = re.sub(r"\s+", " ", created.replace("/bin/sh -c #(nop) ", "")
                         .replace("/bin/sh -c ", "RUN ")).strip()
        rows.append(f"{human.strip():>8}  {created[:100]}")
    files = podman("run", "--rm", "--entrypoint", "sh", IMAGE, "-c",
                   "find /opt /usr/local/bin -type f -size +1M -exec du -k {} + | sort -rn",
                   timeout=120).stdout
    big = []
    for line in files.splitlines():
        kb, path = line.split(None, 1)
        big.append(f"{int(kb) / 1024:8.0f} MiB  {path}")
    figures["layers"] = rows
    figures["files"] = big
    print("  --   layers (podman history, newest first):")
    for r in rows:
        print("         " + r)
    print("  --   files over 1 MiB under /opt and /usr/local/bin:")
    for b in big:
        print("         " + b)


# ---------------------------------------------------------------------------- reference

class Reference:
    """The release binary outside any container, same settings as the container."""

    def __init__(self, tmp, settings):
        self.log = open(os.path.join(tmp, "reference.log"), "wb")
        self.proc = subprocess.Popen(
            [BIN, "serve", "--bind", "127.0.0.1:0", "--config",
             os.path.join(ROOT, "config.toml"), "--weights", "/nonexistent/resnet50.safetensors",
             "--demo-weights"], stdout=subprocess.PIPE, stderr=self.log,
            env={**os.environ, **settings, "GRADCAM_LOG": "warn"},
            preexec_fn=gt.die_with_parent(signal.SIGKILL))
        try:
            url = wait_until_serving(self.proc, "the reference binary")
        except NotServing as e:
            raise SystemExit(str(e))
        # Keep reading stdout so the server can never block on a full pipe.
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()
        self.port = urllib.parse.urlsplit(url).port

    def stop(self):
        self.proc.terminate()
        self.proc.wait(30)


# ---------------------------------------------------------------------------- containers

def run_container(name, port=None, env=None, extra=(), args=()):
    cmd = ["run", "-d", "--name", name]
    if port:
        cmd += ["-p", f"127.0.0.1:{port}:8080"]
    for k, v in (env or {}).items():
        cmd += ["-e", f"{k}={v}"]
    return podman(*cmd, *extra, IMAGE, *args).stdout.strip()


def state(name):
    return json.loads(podman("inspect", name).stdout)[0]["State"]


def remove(name):
    podman("rm", "-f", "-t", "0", name, check_rc=False, timeout=60)


def check_run(images, reference, settings):
    print("(run) the image with demo weights", flush=True)
    name, port = f"{PREFIX}-run", free_port()
    run_container(name, port, {**settings, "GRADCAM_DEMO_WEIGHTS": "true"})
    start = time.time()
    wait_for("the container's /ready", lambda: ready(port), 180)
    figures["ready"] = f"{time.time() - start:.1f} s from `podman run` to /ready"
    check(True, f"/ready answers 200 ({figures['ready']})")
    for label, image in images:
        got = gt.explain(port, image)
        want = gt.explain(reference.port, image)
        check(got[0] == 200 and want[0] == 200
              and gt.without_timing(got[2]) == gt.without_timing(want[2]),
              f"{label}: the container's JSON equals the binary's, timing_ms aside "
              f"({len(got[2])} bytes)")
        got = gt.explain(port, image, headers={"Accept": "image/png"})
        want = gt.explain(reference.port, image, headers={"Accept": "image/png"})
        check(got[0] == want[0] == 200 and got[2] == want[2],
              f"{label}: the PNG overlay is byte-identical ({len(got[2])} bytes)")

    uid = podman("exec", name, "id", "-u").stdout.strip()
    pid = state(name)["Pid"]
    uids = re.search(r"^Uid:\s+(.*)$", open(f"/proc/{pid}/status").read(), re.M).group(1).split()
    check(uid != "0" and set(uids) == {uid},
          f"the service runs as a non-root user (uid {uid} inside; real/effective/saved/fs "
          f"uids of the process on the host: {' '.join(uids)})")
    hc = podman("healthcheck", "run", name, check_rc=False)
    status = (state(name).get("Health") or state(name).get("Healthcheck") or {}).get("Status")
    check(hc.returncode == 0 and status == "healthy",
          f"`podman healthcheck run` (the image's HEALTHCHECK, /health): exit {hc.returncode}, "
          f"status {status}")
    remove(name)

    # No weights, no demo flag: the start is refused (the image's default).
    name = f"{PREFIX}-noweights"
    run_container(name)
    st = wait_for("the container without weights to exit",
                  lambda: (s := state(name))["Status"] == "exited" and s, 120)
    logs = podman("logs", name).stderr + podman("logs", name).stdout
    check(st["ExitCode"] != 0 and "weights" in logs.lower(),
          f"without weights it refuses to start (exit {st['ExitCode']}: "
          f"{logs.strip().splitlines()[-1][:120] if logs.strip() else 'no output'})")
    remove(name)


def check_term(image):
    print("(term) SIGTERM while an explanation is running", flush=True)
    name, port = f"{PREFIX}-term", free_port()
    # A large model input makes the explanation last seconds; one worker, one thread.
    run_container(name, port, {"GRADCAM_DEMO_WEIGHTS": "true", "GRADCAM_INPUT_SIZE": "1024",
                               "GRADCAM_WORKERS": "1", "GRADCAM_THREADS": "1"})
    wait_for("the container's /ready", lambda: ready(port), 240)
    result = {}

    def send():
        result["answer"] = gt.explain(port, image)
        result["end"] = time.time()

    client = threading.Thread(target=send)
    client.start()
    running = wait_for("gradcam_jobs_running > 0",
                       lambda: metric(port, "gradcam_jobs_running"), 120, interval=0.02)
    t_signal = time.time()
    stop = subprocess.Popen(["podman", "stop", "--time", "60", name],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    client.join(120)
    stop.wait(120)
    t_exit = time.time()
    st = state(name)
    status, headers, body = result.get("answer", (None, {}, b""))
    answered = status == 200 and "prediction" in json.loads(body or b"{}")
    in_flight = result.get("end", 0) > t_signal
    figures["term"] = (f"{running} job running at the signal; answered "
                       f"{result.get('end', t_signal) - t_signal:.1f} s after it; "
                       f"container gone {t_exit - t_signal:.1f} s after it, exit {st['ExitCode']}")
    check(answered and in_flight,
          f"the request in flight at SIGTERM is answered 200 after the signal "
          f"({figures['term']})")
    logs = podman("logs", name).stderr
    check(st["ExitCode"] == 0 and t_exit - t_signal < 55 and "finishing in-flight" in logs,
          "the container exits 0 by itself (not killed at podman's 60 s), having logged "
          "'finishing in-flight requests'")
    remove(name)


def check_k8s(tmp, image):
    print("(k8s) the image run as deploy/k8s/deployment.yaml runs it", flush=True)
    k8s = os.path.join(ROOT, "deploy", "k8s")
    deployment = yaml.safe_load(open(os.path.join(k8s, "deployment.yaml")))
    configmap = yaml.safe_load(open(os.path.join(k8s, "configmap.yaml")))
    pod = deployment["spec"]["template"]["spec"]
    ctr = pod["containers"][0]
    env = {e["name"]: e["value"] for e in ctr.get("env", []) if "value" in e}
    # The only difference: no weights volume to fill here, so demo weights.
    env["GRADCAM_DEMO_WEIGHTS"] = "true"
    conf_dir = os.path.join(tmp, "configmap")
    models = os.path.join(tmp, "models")
    os.makedirs(conf_dir)
    os.makedirs(models)
    for key, text in configmap["data"].items():
        open(os.path.join(conf_dir, key), "w").write(text)
    os.chmod(conf_dir, 0o755)
    os.chmod(models, 0o755)
    mounts = {m["name"]: m for m in ctr["volumeMounts"]}
    psc, csc = pod["securityContext"], ctr["securityContext"]
    limits = ctr["resources"]["limits"]
    memory = limits["memory"]
    mem_bytes = int(memory[:-2]) * {"Mi": 2**20, "Gi": 2**30}[memory[-2:]]
    extra = ["--user", f"{psc['runAsUser']}:{psc['runAsGroup']}",
             "-v", f"{conf_dir}:{mounts['config']['mountPath']}:ro",
             "-v", f"{models}:{mounts['models']['mountPath']}:ro",
             "--memory", str(mem_bytes)]
    if csc.get("readOnlyRootFilesystem"):
        extra.append("--read-only")
    if "ALL" in csc.get("capabilities", {}).get("drop", []):
        extra += ["--cap-drop", "ALL"]
    if csc.get("allowPrivilegeEscalation") is False:
        extra += ["--security-opt", "no-new-privileges"]
    if "cpu" in limits:
        extra += ["--cpus", str(limits["cpu"])]
    name, port = f"{PREFIX}-k8s", free_port()
    run_container(name, port, env, extra, ctr.get("args", []))
    probes = {k: ctr[k]["httpGet"]["path"] for k in ("startupProbe", "readinessProbe",
                                                      "livenessProbe") if k in ctr}
    wait_for("the readiness probe's path", lambda: gt.request(
        port, "GET", probes["readinessProbe"], timeout=5)[0] == 200, 240)
    answers = {k: gt.request(port, "GET", p, timeout=5)[0] for k, p in probes.items()}
    check(all(s == 200 for s in answers.values()),
          f"the probes' paths answer 200 ({', '.join(f'{k} {probes[k]}: {s}' for k, s in answers.items())})")
    status, _, body = gt.explain(port, image)
    check(status == 200 and "prediction" in json.loads(body),
          f"it explains with configmap.yaml's config.toml, read-only root, uid "
          f"{psc['runAsUser']}, no capabilities ({status})")
    # The settings came from the ConfigMap's file: its queue capacity is in /metrics.
    want = re.search(r"^queue_capacity = (\d+)$", configmap["data"]["config.toml"], re.M)
    got = metric(port, "gradcam_queue_capacity")
    check(want is not None and got == int(want.group(1)),
          f"configmap.yaml's config.toml is the one read (queue capacity {got})")
    peak = podman("exec", name, "cat", "/sys/fs/cgroup/memory/memory.max_usage_in_bytes",
                  check_rc=False).stdout.strip()
    if not peak.isdigit():
        peak = podman("exec", name, "cat", "/sys/fs/cgroup/memory.peak", check_rc=False).stdout.strip()
    if peak.isdigit():
        figures["k8s"] = f"peak memory {mib(int(peak))} of the {memory} limit"
        check(int(peak) < mem_bytes * 0.75, f"{figures['k8s']}, under 75% of it")
    else:
        figures["k8s"] = "peak memory: not readable from the container's cgroup"
        print("  --   " + figures["k8s"])
    remove(name)


# ---------------------------------------------------------------------------- compose

def compose(env, *args, timeout=300):
    cmd = ["podman-compose", "-p", PROJECT, "-f", os.path.join(ROOT, "docker", "compose.yaml"),
           *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def replica_metrics(name):
    r = podman("exec", name, "curl", "-s", "--max-time", "5", "http://127.0.0.1:8080/metrics",
               check_rc=False)
    return r.stdout


def check_compose(tmp, images, reference):
    print("(compose) docker/compose.yaml: the nginx gateway and two replicas", flush=True)
    spec = yaml.safe_load(open(os.path.join(ROOT, "docker", "compose.yaml")))
    grace = spec["services"]["gradcam"].get("stop_grace_period", "10s")
    grace_s = int(re.fullmatch(r"(\d+)s?", str(grace)).group(1))
    models = os.path.join(tmp, "compose-models")
    os.makedirs(models)
    gw = free_port()
    env = {**os.environ, "GRADCAM_DEMO_WEIGHTS": "true", "GRADCAM_MODELS_DIR": models,
           "GATEWAY_PORT": str(gw), "GRADCAM_THREADS": "1"}
    try:
        start = time.time()
        r = compose(env, "up", "-d", "--no-build")
        if r.returncode != 0:
            print(r.stdout[-3000:], r.stderr[-3000:])
            raise SystemExit("podman-compose up failed")
        replicas = [f"{PROJECT}_gradcam_{i}" for i in (1, 2)]
        gateway = f"{PROJECT}_gateway_1"
        for name in replicas:  # their compose health check: /ready
            wait_for(f"{name} healthy", lambda n=name: podman(
                "healthcheck", "run", n, check_rc=False).returncode == 0, 240, interval=0.5)
        wait_for("the gateway", lambda: gt.request(gw, "GET", "/gateway/health",
                                                   timeout=5)[0] == 200, 60)
        figures["compose_up"] = f"{time.time() - start:.0f} s from `up` to both replicas ready"
        check(True, f"both replicas healthy by their compose health check (/ready), the gateway "
              f"answers ({figures['compose_up']})")
        hc = podman("healthcheck", "run", gateway, check_rc=False)
        check(hc.returncode == 0, f"the gateway's compose health check passes (exit {hc.returncode})")

        label, image = images[0]
        want = gt.without_timing(gt.explain(reference.port, image)[2])
        before = [explain_200s(replica_metrics(n)) for n in replicas]
        answers = [gt.explain(gw, image) for _ in range(6)]
        after = [explain_200s(replica_metrics(n)) for n in replicas]
        served = [a - b for a, b in zip(after, before)]
        check(all(a[0] == 200 and gt.without_timing(a[2]) == want for a in answers),
              f"{label} through the gateway, 6 times: every JSON equals the binary's "
              f"(timing_ms aside)")
        check(sum(served) == 6 and min(served) >= 1,
              f"both replicas served ({served[0]} and {served[1]})")

        # Stop replica 2 while requests stream in; then more requests.
        results, lock, stop = [], threading.Lock(), threading.Event()
        small = images[1][1]

        def stream():
            while not stop.is_set():
                t = time.time()
                try:
                    status = gt.explain(gw, small)[0]
                except OSError as e:
                    status = f"{type(e).__name__}: {e}"
                with lock:
                    results.append((t, time.time(), status))

        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            streams = [pool.submit(stream) for _ in range(2)]
            wait_for("requests streaming", lambda: len(results) >= 4, 60)
            t_stop = time.time()
            stopped = subprocess.run(["podman", "stop", "--time", str(grace_s), replicas[1]],
                                     capture_output=True, text=True, timeout=grace_s + 30)
            t_gone = time.time()
            wait_for("12 more requests after the stop",
                     lambda: sum(1 for r in results if r[0] > t_gone) >= 12, 120)
            stop.set()
            for s in streams:
                s.result(60)
        st = state(replicas[1])
        during = [r for r in results if r[1] >= t_stop and r[0] <= t_gone]
        following = [r for r in results if r[0] > t_gone]
        failed = [r for r in results if r[2] != 200]
        figures["compose_stop"] = (
            f"replica 2 stopped in {t_gone - t_stop:.1f} s (exit {st['ExitCode']}); "
            f"{len(results)} requests streamed: {len(during)} overlapping the stop, "
            f"{len(following)} after it; failed: {len(failed)}")
        check(stopped.returncode == 0 and st["ExitCode"] == 0,
              f"replica 2 stops on SIGTERM and exits 0 ({t_gone - t_stop:.1f} s)")
        check(len(following) >= 12 and all(r[2] == 200 for r in following),
              f"every request after the stop is answered 200 ({len(following)})")
        check(all(r[2] == 200 for r in during),
              f"and every request overlapping the stop too ({len(during)})")
        for r in failed[:5]:
            print(f"       failed: started {r[0] - t_stop:+.2f} s from the stop: {r[2]}")
        # The gateway's access log (its container's output): requests nginx sent to the
        # stopped replica first and then resent to the other one.
        log = podman("logs", "--since", str(int(t_stop) - 1), gateway).stdout
        resent = len(re.findall(r'"POST /explain[^"]*" 200 .*upstream=\[[^\]]*,', log))
        figures["compose_stop"] += f"; resent by nginx to the other replica: {resent}"
        left = explain_200s(replica_metrics(replicas[0]))
        check(left - after[0] >= len(following),
              f"replica 1 served the requests that followed ({left - after[0]})")
    finally:
        r = compose(env, "down", timeout=300)
        if r.returncode != 0:
            print(r.stdout[-2000:], r.stderr[-2000:])
        podman("network", "rm", "-f", f"{PROJECT}_default", check_rc=False)


# ---------------------------------------------------------------------------- main

def cleanup():
    names = podman("ps", "-a", "--format", "{{.Names}}", check_rc=False).stdout.split()
    for n in names:
        if n.startswith(PREFIX):
            remove(n)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--standins-made", type=int, default=0)
    parser.add_argument("--standin-seconds", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--only", default="build,run,term,k8s,compose",
                        help="the parts to run, comma-separated (without build: the image "
                        "already built)")
    args = parser.parse_args()
    only = set(args.only.split(","))
    if not os.access(BIN, os.X_OK):
        raise SystemExit(f"image test: the release binary is missing at {BIN}")

    started = time.time()
    tmp = tempfile.mkdtemp(prefix="gradcam-image-test.")
    os.chmod(tmp, 0o755)

    def on_signal(signum, _frame):
        raise SystemExit(f"image test: stopped by signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    reference = None
    finished = False
    try:
        cleanup()  # leftovers of an interrupted run
        if "build" in only:
            check_build(tmp)
        elif podman("image", "exists", IMAGE, check_rc=False).returncode != 0:
            raise SystemExit(f"image test: no {IMAGE} (run with the build)")
        # Same settings for the binary and the container: two libtorch threads, one worker.
        settings = {"GRADCAM_THREADS": "2", "GRADCAM_WORKERS": "1"}
        reference = Reference(tmp, settings)
        photo = open(os.path.join(ROOT, "docs", "chelsea.jpg"), "rb").read()
        images = [("docs/chelsea.jpg (JPEG, photo)", photo),
                  ("1024x768 noise PNG", gt.noise_png(1024, 768, seed=6))]
        if "run" in only:
            check_run(images, reference, settings)
        if "term" in only:
            check_term(images[1][1])
        if "k8s" in only:
            check_k8s(tmp, photo)
        if "compose" in only:
            check_compose(tmp, images, reference)
        finished = True
    finally:
        if reference:
            reference.stop()
        cleanup()
        if failures or args.keep or not finished:
            print(f"logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    made = (f"{args.standins_made} made in {args.standin_seconds} s" if args.standins_made
            else "all cached")
    print(f"\nimage test summary ({time.time() - started:.0f} s; base image stand-ins: {made}):")
    for key in ("build", "size", "ready", "term", "k8s", "compose_up", "compose_stop"):
        if key in figures:
            print(f"  {key:13}{figures[key]}")
    if failures:
        print(f"FAILED: {len(failures)} check(s):")
        for f in failures:
            print(f"  - {f}")
        return 1
    print("all image checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
