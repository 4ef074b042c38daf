"""The runners of `make bench`: the programs it starts (the server, our bench binary, a
Python loop), how it reads their CPU and memory, and what it records of the machine.
They run what the steps (bench/steps.py) ask and return raw figures; nothing here decides
what is good."""
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRATCH = os.path.join(ROOT, "target", "bench")
SERVE = os.path.join(ROOT, "target", "release", "gradcam-serve")
BENCH = os.path.join(ROOT, "target", "release", "gradcam-bench")
QUICK = os.environ.get("BENCH_QUICK") == "1"

# A pause between two programs' turns (see `alternate`).
PAUSE_S = 0.05

started = time.perf_counter()


def log(msg):
    print(f"[bench {time.perf_counter() - started:6.1f}s] {msg}", file=sys.stderr, flush=True)


def clean_env():
    # Settings from the caller's environment must not change what is measured.
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADCAM_")}
    env["GRADCAM_LOG"] = "warn"
    return env


def run_json(cmd):
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, cwd=ROOT, env=clean_env())
    return json.loads(out.stdout)


def machine_cpu():
    """(busy, total) jiffies of the whole machine since boot."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    return sum(v) - v[3] - v[4], sum(v)


def own_cpu_s():
    """CPU seconds used by this process and every child it has waited for."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def proc_status(pid):
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                fields[key] = int(value.split()[0]) / 1024.0  # MiB
    return fields


class Server:
    """One gradcam-serve process on a free loopback port; cold start measured on the way."""

    def __init__(self, weights, args, name):
        self.name = name
        log_path = os.path.join(SCRATCH, f"server-{name}.log")
        self.log = open(log_path, "w")
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            [SERVE, "serve", "--bind", "127.0.0.1:0", "--weights", weights, *args],
            stdout=subprocess.PIPE, stderr=self.log, cwd=ROOT, env=clean_env(), text=True)
        line = self._first_line(timeout=120)
        if not line.startswith("listening on "):
            self.stop()
            raise SystemExit(f"server {name} did not start (see {log_path}): {line!r}")
        self.url = line[len("listening on "):].strip()
        self.listening_s = time.perf_counter() - t0
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(self.url + "/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except Exception:
                pass
            if time.time() > deadline or self.proc.poll() is not None:
                self.stop()
                raise SystemExit(f"server {name} never became ready (see {log_path})")
            time.sleep(0.01)
        self.cold_start_s = time.perf_counter() - t0

    def _first_line(self, timeout):
        box = []
        t = threading.Thread(target=lambda: box.append(self.proc.stdout.readline()), daemon=True)
        t.start()
        t.join(timeout)
        return box[0] if box else ""

    def memory(self):
        return proc_status(self.proc.pid)

    def counters(self):
        """The worker counters from /metrics: batches and images put through the network."""
        out = {}
        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as r:
            for line in r.read().decode().splitlines():
                for name in ("gradcam_batches_total", "gradcam_batched_images_total"):
                    if line.startswith(name + " "):
                        out[name] = float(line.split()[1])
        return out

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class Loop:
    """A benchmark child that measures on request: each stdin line "BATCH RUNS" is answered
    by one JSON line {"ms": [...]}, after a first line {"threads": N}."""

    def __init__(self, cmd):
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     cwd=ROOT, env=clean_env(), text=True)
        self.threads = self._answer()["threads"]

    def _answer(self):
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"benchmark child {self.proc.args[:2]} stopped")
        return json.loads(line)

    def run(self, batch, runs):
        """Latencies (ms) of `runs` passes over `batch` images."""
        self.proc.stdin.write(f"{batch} {runs}\n")
        self.proc.stdin.flush()
        return self._answer()["ms"]

    def images_per_s(self, runs):
        """The better of batch 1 and batch 4, from median latencies (as step 2 computes it)."""
        one = statistics.median(self.run(1, runs))
        four = statistics.median(self.run(4, runs))
        return max(1e3 / one, 4e3 / four)

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def engine_loop(weights, image):
    """Our engine, shipped settings: explanations (forward + Grad-CAM)."""
    return Loop([BENCH, "engine-loop", "--weights", weights, "--image", image])


def torch_loop(weights, image, threads, runtime="torch"):
    """PyTorch eager, forward-only under no_grad (or, with `runtime`, ONNX Runtime's forward
    of the same weights, or its layer4 Grad-CAM: see bench/baseline.py)."""
    return Loop([sys.executable, os.path.join(ROOT, "bench", "baseline.py"), "--weights",
                 weights, "--image", image, "--threads", str(threads), "--forward-loop",
                 "--runtime", runtime])


def alternate(round_index, ours, theirs):
    """Runs both sides, ours first in even rounds and second in odd ones, with a pause
    between them: after a parallel region libgomp's threads spin for a while before they
    sleep, and the other side should not pay for that."""
    first, second = (ours, theirs) if round_index % 2 == 0 else (theirs, ours)
    a = first()
    time.sleep(PAUSE_S)
    b = second()
    time.sleep(PAUSE_S)
    return (a, b) if round_index % 2 == 0 else (b, a)


def cpu_flags():
    """The instruction sets that decide oneDNN's kernels, as /proc/cpuinfo lists them."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((l.split(":", 1)[1].split() for l in f if l.startswith("flags")), [])
    except OSError:
        return []
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile")
    return [f for f in wanted if f in flags]


def task_cpu(pid):
    """CPU seconds of a process: (all of it, its threads named model-worker-*). The model
    workers' libgomp threads are created by the worker thread and inherit its name, so the
    second is the network's CPU (forward, backward, and libgomp's spinning between kernels);
    the rest (HTTP, multipart, decode, render, base64, JSON) is what runs outside it."""
    tick = os.sysconf("SC_CLK_TCK")

    def fields(path):
        with open(path) as f:
            text = f.read()
        name = text[text.index("(") + 1:text.rindex(")")]
        rest = text[text.rindex(")") + 2:].split()
        return name, (int(rest[11]) + int(rest[12])) / tick  # utime + stime

    total = fields(f"/proc/{pid}/stat")[1]
    network = 0.0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            name, cpu = fields(f"/proc/{pid}/task/{tid}/stat")
        except (FileNotFoundError, ValueError):
            continue
        if name.startswith("model-worker"):
            network += cpu
    return total, network


def answer_bytes(url, image, query=""):
    """The size of one JSON answer, and its overlay description."""
    import uuid
    boundary = uuid.uuid4().hex
    with open(image, "rb") as f:
        data = f.read()
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; "
            f"filename=\"p.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n").encode() + data + \
        f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(url + "/explain" + query, data=body, headers={
        "Content-Type": f"multipart/form-data; boundary={boundary}",
        "Accept": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        answer = r.read()
    return len(answer), json.loads(answer).get("overlay_image")


def process_cpu_s(pid):
    """CPU seconds (user + system) used so far by a running process, all its threads."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def model_thread_sleeps(pid):
    """Voluntary context switches so far of the model worker threads and their OpenMP pool
    threads (which inherit the worker's name): how often they went to sleep."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                if not f.read().startswith("model-worker"):
                    continue
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches:"):
                        total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total


def cpu_features():
    """The CPU's family/model and the instruction sets that decide which kernels run."""
    wanted = ["avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16",
              "amx_int8"]
    info = {}
    with open("/proc/cpuinfo") as f:
        for line in f:
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("cpu family", "model", "flags") and key not in info:
                info[key] = value.strip()
            if not line.strip() and info:
                break
    flags = set(info.get("flags", "").split())
    return {"family": info.get("cpu family", "?"), "model": info.get("model", "?"),
            "isa": {f: f in flags for f in wanted}}



def shipped_settings():
    """The settings the sweep's server runs with: config.toml over the built-in defaults."""
    import tomllib
    want = {"workers": 1, "max_batch": 4, "batch_wait_ms": 2, "queue_capacity": 32,
            "threads": 0, "fold_batch_norm": True}
    try:
        with open(os.path.join(ROOT, "config.toml"), "rb") as f:
            c = tomllib.load(f)
    except FileNotFoundError:
        return want
    for section in ("model", "server"):
        for k, v in c.get(section, {}).items():
            if k in want:
                want[k] = v
    return want


def machine():
    model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])

    def cmd(*args):
        try:
            return subprocess.run(args, capture_output=True, text=True, cwd=ROOT).stdout.strip()
        except OSError:
            return "?"

    commit = cmd("git", "rev-parse", "--short", "HEAD")
    if cmd("git", "status", "--porcelain", "--untracked-files=no"):
        commit += " (with uncommitted changes)"
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": model,
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "rustc": cmd("rustc", "--version"),
        "commit": commit,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "load_before": os.getloadavg(),
        "cpu_features": cpu_features(),
    }
