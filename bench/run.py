"""`make bench`: runs every benchmark, prints the targets, writes BENCHMARKS.md and the plots.

Run by scripts/bench.sh with the reference venv's python (torch, pytorch-grad-cam,
matplotlib), after the release build. Steps:
  1. assets   seeded random ResNet-50 weights (safetensors) + a 224x224 and a 1920x1080 JPEG
  2. engine   in process: prediction vs explanation, batch-norm folding on/off, batches
  3. baseline pytorch-grad-cam GradCAM, PyTorch eager forward-only and ONNX Runtime (the
              same weights exported here), same input and thread count (bench/baseline.py)
  4. http     server with the shipped defaults: cold start, concurrency 1..16 with both
              images, resident memory after each level
  5. tried    dynamic batching (max_batch 1 vs 4) and workers x threads, at concurrency 8
  6. paired   the targets that compare two programs, measured in alternating short bursts
              (ours, then theirs, then ours...) so that both sides see the same machine:
              our explanation vs PyTorch's eager forward, and the server over HTTP at
              concurrency 8 vs the engine in process, our explanation vs ONNX Runtime's
              forward and its layer4 Grad-CAM
  7. phone    phone photos (issue 14, goal 3): a 4032x3024 JPEG in process, stage by stage
              (wall and CPU), and over HTTP against the 224x224 image; `--phone-only` runs
              just this step and merges it into bench/results.json and BENCHMARKS.md
  8. idle     HTTP at concurrency 1 vs the explanation in process, back to back and with
              200 ms pauses, CPU per request and the idle server's CPU use
  9. methods  every CAM method at layer4: ours (gradcam-bench methods, against our own
              prediction in the same rounds) and pytorch-grad-cam's (baseline.py --methods)
 10. exported models exported by gradcam_export (efficientnet_b0, convnext_tiny, vit_b_16;
              bench/exported.py): Grad-CAM over HTTP at concurrency 1 against
              pytorch-grad-cam in process on the same model and threads, measured in
              alternation; the explanation in process against the file's own prediction
              (gradcam-bench exported); the ResNet-50 of step 1 exported, against the native
              path
Scratch files go to target/bench/; results to bench/results.json, plots to bench/*.png,
the report to BENCHMARKS.md. BENCH_QUICK=1 shortens every step (for trying the script out);
`--report-only` re-renders BENCHMARKS.md and the plots from bench/results.json; `--only
idle|ort|baseline|methods|exported` runs one part alone and prints its figures (BENCH_THREADS:
threads).
"""
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

ENGINE_RUNS = 10 if QUICK else 50
BASELINE_RUNS = 6 if QUICK else 40
HTTP_DURATION = 3.0 if QUICK else 10.0
HTTP_WARMUP = 1.0 if QUICK else 2.0
CONCURRENCY = [1, 2, 4, 8, 16]
COLD_STARTS = 1 if QUICK else 3
# Paired rounds (step 6): a shared 2-core machine drifts by +-15 % within minutes, more than
# some targets' margins, so each side of those ratios is measured in short alternating
# bursts rather than minutes apart.
PAIRED_LATENCY_SESSIONS = 3
PAIRED_LATENCY_ROUNDS = 3 if QUICK else 6
PAIRED_LATENCY_RUNS = 8
PAIRED_HTTP_ROUNDS = 2 if QUICK else 4
PAIRED_HTTP_DURATION = 2.0 if QUICK else 6.0
PAIRED_HTTP_WARMUP = 1.0 if QUICK else 1.5
PAUSE_S = 0.05
# CAM methods (step 9): rounds of the one-pass methods; AblationCAM and ScoreCAM are
# thousands of passes each (pytorch-grad-cam: about 3 minutes a run here), so one run.
METHOD_RUNS = 4 if QUICK else 20
METHOD_SLOW_RUNS = 1
# Exported models (step 10): the architectures of the any-model issue's speed goals, and
# rounds of alternating HTTP and pytorch-grad-cam measurements.
EXPORTED_ARCHS = ["efficientnet_b0", "convnext_tiny", "vit_b_16"]
EXPORTED_ROUNDS = 2 if QUICK else 3
EXPORTED_RUNS = 5 if QUICK else 10
EXPORTED_ENGINE_RUNS = 10 if QUICK else 30
# Ratios within this of 1.0 are reported as "no measurable difference".
NOISE = 0.03
# Share of the CPU used by other processes during the run above which the report warns.
NOISE_WARN = 0.05

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


def paired_latency(weights, image, threads, runtime="torch"):
    """Our explanation (batch 1) against PyTorch's eager forward-only, same weights and input,
    in alternating bursts. A process's speed is partly luck: one PyTorch process runs the
    forward in about 55 ms and the next, the same code, in 75 (its plain weights land where
    they land). So there are several sessions, each with a fresh process on both sides; the
    verdict is the median session, and the report also shows the session most favourable to
    PyTorch."""
    sessions = []
    for s in range(PAIRED_LATENCY_SESSIONS):
        ours, theirs = engine_loop(weights, image), torch_loop(weights, image, threads, runtime)
        try:
            ours.run(1, 5)
            theirs.run(1, 5)
            o_ms, t_ms = [], []
            # Each burst starts with one unrecorded run on both sides: the figures are of a
            # warm, steady state, as in steps 2 and 3, not of waking up after the other side.
            for r in range(PAIRED_LATENCY_ROUNDS):
                o, t = alternate(r, lambda: ours.run(1, PAIRED_LATENCY_RUNS + 1)[1:],
                                 lambda: theirs.run(1, PAIRED_LATENCY_RUNS + 1)[1:])
                o_ms += o
                t_ms += t
        finally:
            ours.close()
            theirs.close()
        o50, t50 = statistics.median(o_ms), statistics.median(t_ms)
        # "torch_p50_ms" is the other side's p50, whichever runtime it is.
        sessions.append({"ours_p50_ms": o50, "torch_p50_ms": t50, "ratio": o50 / t50})
        log(f"  session {s + 1}: ours {o50:.1f} ms, {runtime} {t50:.1f} ms -> {o50 / t50:.2f}")
    mid = sorted(sessions, key=lambda x: x["ratio"])[len(sessions) // 2]
    return {"sessions": sessions, "rounds": PAIRED_LATENCY_ROUNDS,
            "runs_per_round": PAIRED_LATENCY_RUNS, "median_session": mid,
            "ratio": mid["ratio"], "worst_ratio": max(x["ratio"] for x in sessions)}


# ---------------------------------------------------------------------------------------
# Trunk speed (issue 14, goals 1 and 4): our layer4 explanation, fp32 and bf16, against ONNX
# Runtime's plain forward on the same weights and threads, in alternating bursts.

TRUNK_ROUNDS = 3 if QUICK else 8
TRUNK_RUNS = 8


def cpu_flags():
    """The instruction sets that decide oneDNN's kernels, as /proc/cpuinfo lists them."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((l.split(":", 1)[1].split() for l in f if l.startswith("flags")), [])
    except OSError:
        return []
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile")
    return [f for f in wanted if f in flags]


def trunk_vs_ort(weights, image, threads):
    """Latency p50 of ONNX Runtime's forward and of our explanation at layer4 (batch 1),
    fp32 and, where the CPU has AVX-512 BF16 or AMX, bf16; one process each, rounds
    alternating between them in a rotating order."""
    flags = cpu_flags()
    ort_cmd = [sys.executable, os.path.join(ROOT, "bench", "ort_loop.py"), "--weights", weights,
               "--threads", str(threads), "--onnx", os.path.join(SCRATCH, "resnet50-bench.onnx")]
    sides = {}
    try:
        sides["onnxruntime"] = Loop(ort_cmd)
    except SystemExit as e:
        return {"skipped": f"ONNX Runtime did not start ({e}): is onnxruntime installed?",
                "cpu_flags": flags}
    eng = [BENCH, "engine-loop", "--weights", weights, "--image", image,
           "--threads", str(threads)]
    sides["ours fp32"] = Loop(eng)
    bf16 = "avx512_bf16" in flags or "amx_bf16" in flags
    if bf16:
        sides["ours bf16"] = Loop(eng + ["--precision", "bf16"])
    ms = {k: [] for k in sides}
    try:
        for loop in sides.values():
            loop.run(1, 5)
        names = list(sides)
        for r in range(TRUNK_ROUNDS):
            for k in names[r % len(names):] + names[:r % len(names)]:
                # One unrecorded run: a warm, steady state, not waking up after the others.
                ms[k] += sides[k].run(1, TRUNK_RUNS + 1)[1:]
                time.sleep(PAUSE_S)
    finally:
        for loop in sides.values():
            loop.close()
    p50 = {k: statistics.median(v) for k, v in ms.items()}
    out = {"p50_ms": p50, "rounds": TRUNK_ROUNDS, "runs_per_round": TRUNK_RUNS,
           "cpu_flags": flags, "threads": threads,
           "ratio_fp32": p50["ours fp32"] / p50["onnxruntime"]}
    if bf16:
        out["ratio_bf16"] = p50["ours bf16"] / p50["onnxruntime"]
    else:
        out["bf16_skipped"] = "this CPU has neither AVX-512 BF16 nor AMX"
    return out


# Measured by hand for issue 14 (goals 1 and 4), kept in the report as written.
HAND_MEASURED_TRUNK = [
    '- **Fusing ReLU and the residual add into the convolutions** (oneDNN post-ops: libtorch\'s `mkldnn::_convolution_pointwise` for conv + ReLU and its in-place `_convolution_pointwise_.binary` for a block\'s last conv + shortcut add + ReLU, through a C++ shim, `csrc/fused_conv.cpp`; activations as strided channels-last tensors instead of oneDNN tensors). 2026-11-29, this machine shared with three other builds (load average 9-12 on 2 cores), layer4 explanation p50 against ONNX Runtime 1.32\'s plain forward, one thread each, alternating bursts of 10 (`/tmp` script driving `gradcam-bench engine-loop`): unfused oneDNN tensors 270 ms (1.35x ONNX Runtime), fused 221 ms (1.10x): 0.82 of the time. The Python prototype: 1.43x -> 1.23x; writing into the shortcut in place or not: 261 vs 264 ms. At 2 threads the load made the figures meaningless (ONNX Runtime 18 -> 310 ms; ours 5.6x and 2.3x that): the "Trunk speed" section above measures it in `make bench`. Maps stay within 1e-4 of pytorch-grad-cam\'s. Kept.',
    '- **What is left against ONNX Runtime**: each `_convolution_pointwise` call has a fixed cost of 85-107 us on that loaded machine, and 58.6-66.6 us on a quiet one (`bench/call_cost.py`, 2026-11-29, two runs: a 1x1 convolution of 8 channels on 7x7, against 1.2 us for a ReLU): ideep builds the primitive descriptor and looks the primitive up on every call, 53 calls per ResNet-50 forward, 3.1-3.5 ms: the whole gap to ONNX Runtime (3.0 ms in the table above). It cannot be built once from here: the PyPI libtorch exports no oneDNN (`dnnl_*`) symbol for the shim, and its other entry point, `mkldnn_prepacked::conv2d_run`, calls the same `ideep::convolution_forward::compute` on every call (read in PyTorch\'s `ConvPrepack.cpp`).',
    '- **bf16 trunk** (`precision = "bf16"`, AVX-512 BF16 here): 119 ms against ONNX Runtime fp32\'s 200 ms, one thread each (0.59x; our fp32 1.10x), same session as above; 2 threads under that load 1.66x (fp32 2.30x). On the parity images it kept every top-1 and top-5 set (46 cases), map within 1.7e-2 of its maximum (0.9e-2 at layer4). Opt-in.',
    '- **Not measured**: `ONEDNN_DEFAULT_FPMATH_MODE=BF16` (bf16 inside fp32 convolutions: not fp32, and `precision = "bf16"` covers it), thread pinning (`OMP_PROC_BIND`, `GOMP_CPU_AFFINITY`): on a machine this loaded the figures would say nothing. ONNX Runtime as the trunk\'s runtime (the `ort` crate): not tried, since it would cost ONNX Runtime\'s own forward plus the map (goal 1 at 1.0 at best) with a second runtime, thread pool and copy of the weights.',
]


def trunk_section(results, w):
    """The report's "Trunk speed" section (goals 1 and 4 of issue 14)."""
    t = results.get("trunk_vs_ort")
    if t is None:
        return
    w("## Trunk speed against ONNX Runtime\n")
    w(f"CPU instruction sets: {', '.join(t['cpu_flags']) or 'unknown'}. Batch 1, 224x224, "
      f"{t.get('threads', '?')} threads on every side, one process each, measured in "
      "alternating bursts.\n")
    if "skipped" in t:
        w(f"Not measured: {t['skipped']}\n")
        return
    p = t["p50_ms"]
    w("| Program | p50 ms | / ONNX Runtime |")
    w("|---|---|---|")
    for k, v in p.items():
        w(f"| {k} | {v:.1f} | {v / p['onnxruntime']:.2f} |")
    w("")
    w(f"- {verdict(t['ratio_fp32'] <= 1.0)} our layer4 explanation, fp32 / ONNX Runtime's "
      f"plain forward: {t['ratio_fp32']:.2f} (target <= 1.00)")
    if "ratio_bf16" in t:
        w(f"- bf16 (`precision = \"bf16\"`) / ONNX Runtime fp32: {t['ratio_bf16']:.2f} "
          "(reported, no target)\n")
    else:
        w(f"- bf16 not measured: {t['bf16_skipped']}\n")


# ---------------------------------------------------------------------------------------
# CAM methods (issue 11)

# Methods whose cost is a pass per channel (or batch of channels) of the layer.
SLOW_METHODS = ("ablationcam", "scorecam")
# Methods that go back to the input, not to layer4: no one-pass goal at layer4 for them.
WHOLE_NETWORK_METHODS = ("fullgrad", "guided-backprop", "guided-gradcam")
# Methods that cost more than their passes by design: SESS explains 122 windows, DFF
# factorizes the activations (NMF): reported, no one-pass goal.
MORE_THAN_ONE_PASS = ("sess", "dff")


def cam_methods(weights, image, threads):
    """Every method at layer4, top-1 class, batch 1: ours in one process (interleaved with
    our prediction), then pytorch-grad-cam's in another, same weights, image and threads."""
    common = ["--weights", weights, "--image", image, "--threads", str(threads),
              "--runs", str(METHOD_RUNS), "--slow-runs", str(METHOD_SLOW_RUNS)]
    ours = run_json([BENCH, "methods", *common])
    theirs = run_json([sys.executable, os.path.join(ROOT, "bench", "baseline.py"), "--methods",
                       *common])
    return {"ours": ours, "pytorch_grad_cam": theirs}


def method_rows(m):
    """(method, ours p50, ours / our prediction, theirs p50, theirs / ours) per method."""
    ours, theirs = m["ours"], m["pytorch_grad_cam"]
    predict = ours["prediction_ms"]["p50"]
    rows = []
    for name, o in ours["methods"].items():
        t = theirs["methods"][name]["p50"]
        rows.append((name, o["p50"], o["p50"] / predict, t, t / o["p50"]))
    return rows


def method_targets(results):
    m = results.get("methods")
    if m is None:
        return []
    rows = method_rows(m)
    one_pass = [r for r in rows
                if r[0] not in SLOW_METHODS + WHOLE_NETWORK_METHODS + MORE_THAN_ONE_PASS]
    worst = max(one_pass, key=lambda r: r[2])
    predict = m["ours"]["prediction_ms"]["p50"]
    out = [(f"Slowest one-pass CAM method at layer4 ({worst[0]}) / our prediction (p50)",
            f"{worst[1]:.1f} / {predict:.1f} ms", worst[2], "<= 1.10", worst[2] <= 1.10)]
    by_name = {r[0]: r for r in rows}
    # Issue 11: AblationCAM at least 20 times faster, ScoreCAM faster at all.
    for name, wanted, met in (("ablationcam", ">= 20", lambda x: x >= 20),
                              ("scorecam", "> 1", lambda x: x > 1)):
        r = by_name[name]
        out.append((f"pytorch-grad-cam's {name} / ours at layer4 (p50)",
                    f"{r[3] / 1e3:.1f} / {r[1] / 1e3:.2f} s", r[4], wanted, met(r[4])))
    return out


def methods_section(results, w):
    m = results.get("methods")
    if m is None:
        return
    ours, theirs = m["ours"], m["pytorch_grad_cam"]
    w("## CAM methods at layer4\n")
    w(f"Top-1 class, batch 1, 224x224, {ours['threads']} threads each side, same weights "
      f"and image. Ours: `gradcam-bench methods` ({ours['runs']} rounds of our prediction "
      "and every one-pass method in rotated order, then "
      f"{ours['slow_runs']} run of AblationCAM and of ScoreCAM), the shipped settings, "
      "the method's map at the layer's resolution as the API returns it. pytorch-grad-cam "
      f"{theirs['grad_cam']}: `bench/baseline.py --methods`, `cam(input_tensor=x, "
      "targets=None)` with each class's defaults (its map scaled to the input), the same "
      "rounds in another process right after ours.\n")
    w("| Method | ours p50 ms | / our prediction | pytorch-grad-cam p50 ms | "
      "pytorch-grad-cam / ours |")
    w("|---|---|---|---|---|")
    for name, o, r, t, speed in method_rows(m):
        w(f"| {name} | {o:.1f} | {r:.2f} | {t:.1f} | {speed:.1f} |")
    w(f"| (our prediction) | {ours['prediction_ms']['p50']:.1f} | 1.00 | | |")
    w("")
    w("AblationCAM here reruns only what follows the layer (at layer4 the pooling and the "
      "classifier) for each ablated channel; pytorch-grad-cam reruns the whole network for "
      "every batch of 32 channels. ScoreCAM is a whole forward per channel (2048 at layer4) "
      "on both sides: ours batches them through the fast path.\n")


def exported_models(weights, image, threads):
    """Step 10. Per architecture: the file exported with seeded weights (bench/exported.py,
    which also times pytorch-grad-cam's GradCAM on the same model), then EXPORTED_ROUNDS
    rounds of our server at concurrency 1 and pytorch-grad-cam, alternating, and the
    explanation in process against the file's prediction. Then the step-1 ResNet-50
    exported through the CLI, in process against the native path on the same weights."""
    out = os.path.join(SCRATCH, "exported")
    py = [sys.executable, os.path.join(ROOT, "bench", "exported.py"), "--out", out,
          "--image", image, "--threads", str(threads), "--runs", str(EXPORTED_RUNS)]
    models = {}
    for arch in EXPORTED_ARCHS:
        rounds = []
        theirs = run_json([*py, "--arch", arch])
        server = Server(theirs["file"], ["--threads", str(threads)], f"exported-{arch}")
        try:
            for i in range(EXPORTED_ROUNDS):
                if i:
                    theirs = run_json([*py, "--arch", arch])
                ours = run_json([BENCH, "http", "--url", server.url, "--image", image,
                                 "--concurrency", "1", "--duration", str(HTTP_DURATION),
                                 "--warmup", str(HTTP_WARMUP)])["levels"][0]
                rounds.append({"http_p50_ms": ours["latency_ms"]["p50"],
                               "pytorch_grad_cam_p50_ms": theirs["pytorch_grad_cam_ms"]["p50"],
                               "torch_forward_p50_ms": theirs["torch_forward_ms"]["p50"]})
        finally:
            server.stop()
        engine = run_json([BENCH, "exported", "--weights", theirs["file"], "--image", image,
                           "--runs", str(EXPORTED_ENGINE_RUNS), "--threads", str(threads)])
        speedups = [r["pytorch_grad_cam_p50_ms"] / r["http_p50_ms"] for r in rounds]
        models[arch] = {"layer": engine["layer"], "rounds": rounds, "engine": engine,
                        "speedup": statistics.median(speedups)}
        log(f"  {arch}: pytorch-grad-cam / ours over HTTP {models[arch]['speedup']:.2f}, "
            f"explanation / prediction in process {engine['ratio']:.2f}")
    exported = os.path.join(out, "resnet50.pt")
    subprocess.run([sys.executable, "-m", "gradcam_export", "torchvision", "resnet50",
                    "--weights", weights, "-o", exported], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pair = {}
    for _ in range(EXPORTED_ROUNDS):
        for name, path in (("native", weights), ("exported", exported)):
            r = run_json([BENCH, "exported", "--weights", path, "--image", image,
                          "--runs", str(EXPORTED_ENGINE_RUNS), "--threads", str(threads)])
            pair.setdefault(name, []).append(r)
    median = lambda runs, key: statistics.median(r[key]["p50"] for r in runs)  # noqa: E731
    resnet50 = {side: {"explanation_p50_ms": median(runs, "explanation_ms"),
                       "prediction_p50_ms": median(runs, "prediction_ms")}
                for side, runs in pair.items()}
    resnet50["ratio"] = (resnet50["exported"]["explanation_p50_ms"]
                         / resnet50["native"]["explanation_p50_ms"])
    log(f"  resnet50: exported / native explanation in process {resnet50['ratio']:.2f}")
    return {"models": models, "resnet50": resnet50, "threads": threads}


def exported_targets(results):
    e = results.get("exported")
    if e is None:
        return []
    out = []
    for arch, m in e["models"].items():
        r = m["rounds"][len(m["rounds"]) // 2]
        out.append((f"{arch} (exported): pytorch-grad-cam in process / our Grad-CAM over HTTP "
                    "(p50, alternating rounds)",
                    f"{r['pytorch_grad_cam_p50_ms']:.1f} / {r['http_p50_ms']:.1f} ms",
                    m["speedup"], ">= 3", m["speedup"] >= 3))
        g = m["engine"]
        out.append((f"{arch} (exported): explanation / its prediction, in process (p50)",
                    f"{g['explanation_ms']['p50']:.1f} / {g['prediction_ms']['p50']:.1f} ms",
                    g["ratio"], "<= 1.15", g["ratio"] <= 1.15))
    return out


def exported_section(results, w):
    e = results.get("exported")
    if e is None:
        return
    w("## Exported models (any classifier)\n")
    w("Models made by torchvision's constructors with seeded weights (`torch.manual_seed(0)`), "
      "exported by `gradcam_export` at pytorch-grad-cam's recommended layer "
      "(bench/exported.py), 224x224, batch 1, "
      f"{e['threads']} threads each side. Over HTTP: `gradcam-bench http` at concurrency 1 "
      "against `gradcam-serve serve --weights FILE` (decode, queue, the passes, the overlay "
      "PNG, JSON); pytorch-grad-cam: `GradCAM(model, target_layers=[...])` on the same model "
      "in process, `cam(input_tensor=x, targets=None)`, alternating with ours "
      f"({len(next(iter(e['models'].values()))['rounds'])} rounds each, the median round "
      "shown). In process: `gradcam-bench exported`, the explanation (forward and backward "
      "to the tap, the map) against the same file's plain prediction, alternating.\n")
    w("| Model | layer | ours over HTTP p50 ms | pytorch-grad-cam p50 ms | speed-up | "
      "PyTorch forward p50 ms | pytorch-grad-cam / PyTorch forward | our prediction p50 ms | "
      "our explanation p50 ms | explanation / prediction |")
    w("|---|---|---|---|---|---|---|---|---|---|")
    for arch, m in e["models"].items():
        r = m["rounds"][len(m["rounds"]) // 2]
        g = m["engine"]
        bound = r["pytorch_grad_cam_p50_ms"] / r["torch_forward_p50_ms"]
        w(f"| {arch} | `{m['layer']}` | {r['http_p50_ms']:.1f} | "
          f"{r['pytorch_grad_cam_p50_ms']:.1f} | {m['speedup']:.2f} | "
          f"{r['torch_forward_p50_ms']:.1f} | {bound:.2f} | {g['prediction_ms']['p50']:.1f} | "
          f"{g['explanation_ms']['p50']:.1f} | {g['ratio']:.2f} |")
    w("")
    w("An explanation needs at least one forward pass of the network, so the speed-up over "
      "pytorch-grad-cam cannot pass pytorch-grad-cam's own cost in forwards (its forward "
      "records the whole graph, its backward computes every parameter's gradient): the "
      "column 'pytorch-grad-cam / PyTorch forward' is that bound, before our decoding, "
      "overlay and HTTP.")
    rn = e["resnet50"]
    w("")
    w("The same ResNet-50 weights (step 1's) served natively and exported "
      "(`python -m gradcam_export torchvision resnet50 --weights ...`), in process, "
      "alternating: Grad-CAM at layer4 "
      f"{rn['native']['explanation_p50_ms']:.1f} ms native, "
      f"{rn['exported']['explanation_p50_ms']:.1f} ms exported ({rn['ratio']:.2f}); "
      f"predictions {rn['native']['prediction_p50_ms']:.1f} and "
      f"{rn['exported']['prediction_p50_ms']:.1f} ms. The native path folds batch norm, "
      "keeps oneDNN weights and fuses the convolutions' ReLU and add (src/model/resnet/); "
      "the exported file runs TorchScript's eager operators.\n")


def paired_http(weights, image224, images):
    """HTTP throughput at concurrency 8 (shipped defaults) against the engine in process,
    alternating a burst of each, per image."""
    loop = engine_loop(weights, image224)
    server = Server(weights, [], "paired")
    out = {}
    try:
        loop.run(4, 2)
        for label, path in images.items():
            rounds = []
            for r in range(PAIRED_HTTP_ROUNDS):
                def http():
                    lv = run_json([BENCH, "http", "--url", server.url, "--image", path,
                                   "--concurrency", "8", "--duration", str(PAIRED_HTTP_DURATION),
                                   "--warmup", str(PAIRED_HTTP_WARMUP)])["levels"][0]
                    return lv["throughput_rps"]
                in_process, over_http = alternate(r, lambda: loop.images_per_s(10), http)
                rounds.append({"in_process": in_process, "http": over_http,
                               "ratio": over_http / in_process})
                log(f"  {label} round {r + 1}: HTTP {over_http:.2f} req/s, in process "
                    f"{in_process:.2f} images/s -> {over_http / in_process:.2f}")
            out[label] = {"rounds": rounds, "duration_s": PAIRED_HTTP_DURATION,
                          "ratio": statistics.median(x["ratio"] for x in rounds),
                          "in_process": statistics.median(x["in_process"] for x in rounds),
                          "http": statistics.median(x["http"] for x in rounds)}
    finally:
        server.stop()
        loop.close()
    return out

# ---------------------------------------------------------------------------------------
# Phone photos (issue 14, goal 3)

PHONE_RUNS = 5 if QUICK else 15
PHONE_ROUNDS = 2 if QUICK else 4
PHONE_DURATION = 2.0 if QUICK else 5.0


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


def phone(weights, img224, img1080, photo, paired_http_1080=None):
    """Goal 3 of issue 14. In process (gradcam-bench phone): where a 4032x3024 JPEG's time
    and CPU go with the shipped settings and as before them, the overlay encoders, and the
    scaled decode's fidelity on the parity images. Over HTTP, one server with the shipped
    defaults: the phone photo and the 224x224 JPEG at concurrency 1 in alternating bursts
    (p50 ratio), the server's CPU split by thread while the photo is served, the answer's
    size; and 1920x1080 at concurrency 8 against the engine in process (step 6's figure when
    this runs inside the whole benchmark)."""
    parity = os.environ.get("GRADCAM_PARITY_DIR", os.path.join(ROOT, "target", "parity"))
    cmd = [BENCH, "phone", "--weights", weights, "--image", photo, "--runs", str(PHONE_RUNS)]
    if os.path.isdir(parity):
        cmd += ["--parity-dir", parity]
    out = {"in_process": run_json(cmd)}
    server = Server(weights, [], "phone")
    try:
        size, described = answer_bytes(server.url, photo)
        out["answer_bytes"], out["overlay_image"] = size, described
        rounds = []
        for r in range(PHONE_ROUNDS):
            def level(image):
                return run_json([BENCH, "http", "--url", server.url, "--image", image,
                                 "--concurrency", "1", "--duration", str(PHONE_DURATION),
                                 "--warmup", "1"])["levels"][0]

            def photo_level():
                before = task_cpu(server.proc.pid)
                lv = level(photo)
                after = task_cpu(server.proc.pid)
                lv["cpu_total_s"] = after[0] - before[0]
                lv["cpu_network_s"] = after[1] - before[1]
                return lv
            small, big = alternate(r, lambda: level(img224), photo_level)
            network = big["cpu_network_s"]
            outside = big["cpu_total_s"] - network
            rounds.append({"p50_224": small["latency_ms"]["p50"],
                           "p50_phone": big["latency_ms"]["p50"],
                           "ratio": big["latency_ms"]["p50"] / small["latency_ms"]["p50"],
                           "outside_over_network_cpu": outside / network if network else None,
                           "phone_stages_p50": big.get("stages_ms"),
                           "phone_level": big})
            log(f"  phone round {r + 1}: 4032x3024 p50 {big['latency_ms']['p50']:.1f} ms, "
                f"224x224 {small['latency_ms']['p50']:.1f} ms -> "
                f"{rounds[-1]['ratio']:.2f}; server CPU outside/network "
                f"{rounds[-1]['outside_over_network_cpu']:.2f}")
        out["rounds"] = rounds
        out["ratio"] = statistics.median(x["ratio"] for x in rounds)
        out["outside_over_network_cpu"] = statistics.median(
            x["outside_over_network_cpu"] for x in rounds)
    finally:
        server.stop()
    if paired_http_1080 is None:
        paired_http_1080 = paired_http(weights, img224, {"1920x1080": img1080})["1920x1080"]
    out["http_1080_c8"] = paired_http_1080
    return out


def phone_only():
    """`bench/run.py --phone-only`: step 7 alone, merged into the last full run's
    bench/results.json (which keeps its own figures) and BENCHMARKS.md."""
    os.makedirs(SCRATCH, exist_ok=True)
    log("assets")
    assets = run_json([BENCH, "assets", "--out", SCRATCH])
    img224, img1080 = (i["path"] for i in assets["images"])
    log("phone photos")
    result = phone(assets["weights"], img224, img1080, assets["phone"]["path"])
    result["machine"] = machine()
    result["photo"] = assets["phone"]
    path = os.path.join(ROOT, "bench", "results.json")
    with open(path) as f:
        results = json.load(f)
    results["phone"] = result
    with open(path, "w") as f:
        json.dump(results, f, indent=1)
    write_outputs(results)



# Concurrency 1 over HTTP against the explanation in process, back to back and with the
# server idle between requests (each request, on both sides, after a pause).
IDLE_PAUSES_MS = [0, 200]
IDLE_ROUNDS = 2 if QUICK else 4
IDLE_HTTP_DURATION = 2.0 if QUICK else 5.0
IDLE_IN_PROCESS_RUNS = 8 if QUICK else 20
IDLE_CPU_S = 3.0 if QUICK else 10.0


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


def idle_http(weights, image224):
    """HTTP at concurrency 1 (shipped defaults, 224x224 JPEG, end to end at the client)
    against our explanation in process (the engine on a prepared input, batch 1), in
    alternating bursts, back to back and with a pause before every request on both sides.
    Also the CPU each side spends per request (libgomp's threads spin a while after each
    parallel region before they sleep) and the server's CPU use when it is left idle."""
    loop = engine_loop(weights, image224)
    server = Server(weights, [], "idle")
    out = {"pauses": {}}
    try:
        loop.run(1, 5)
        for pause in IDLE_PAUSES_MS:
            rounds = []
            for r in range(IDLE_ROUNDS):
                def in_process():
                    cpu0 = process_cpu_s(loop.proc.pid)
                    if pause:
                        ms = []
                        for _ in range(IDLE_IN_PROCESS_RUNS):
                            time.sleep(pause / 1e3)
                            ms += loop.run(1, 1)
                    else:
                        ms = loop.run(1, IDLE_IN_PROCESS_RUNS)
                    cpu = process_cpu_s(loop.proc.pid) - cpu0
                    return {"p50_ms": statistics.median(ms), "runs": len(ms),
                            "cpu_ms_per_run": cpu * 1e3 / len(ms)}

                def http():
                    cpu0 = process_cpu_s(server.proc.pid)
                    sleeps0 = model_thread_sleeps(server.proc.pid)
                    h = run_json([BENCH, "http", "--url", server.url, "--image", image224,
                                  "--concurrency", "1", "--duration", str(IDLE_HTTP_DURATION),
                                  "--warmup", "0", "--pause-ms", str(pause)])
                    cpu = process_cpu_s(server.proc.pid) - cpu0
                    sleeps = model_thread_sleeps(server.proc.pid) - sleeps0
                    lv = h["levels"][0]
                    # The load generator sends one unrecorded request first.
                    sent = lv["requests"] + 1
                    st = lv["stages_ms"]
                    return {"p50_ms": lv["latency_ms"]["p50"], "requests": lv["requests"],
                            "errors": lv["errors"], "cpu_ms_per_request": cpu * 1e3 / sent,
                            "model_thread_sleeps_per_request": sleeps / sent,
                            "forward_p50_ms": st["forward"]["p50"],
                            "queue_p50_ms": st["queue"]["p50"],
                            "server_total_p50_ms": st["total"]["p50"]}

                ip, hp = alternate(r, in_process, http)
                rounds.append({"in_process": ip, "http": hp,
                               "ratio": hp["p50_ms"] / ip["p50_ms"]})
                log(f"  pause {pause} ms round {r + 1}: HTTP p50 {hp['p50_ms']:.1f} ms "
                    f"(forward {hp['forward_p50_ms']:.1f}, queue {hp['queue_p50_ms']:.2f}), in "
                    f"process {ip['p50_ms']:.1f} ms -> {hp['p50_ms'] / ip['p50_ms']:.2f}")
            out["pauses"][str(pause)] = {
                "rounds": rounds, "ratio": statistics.median(x["ratio"] for x in rounds),
                "http_p50_ms": statistics.median(x["http"]["p50_ms"] for x in rounds),
                "in_process_p50_ms": statistics.median(x["in_process"]["p50_ms"] for x in rounds)}
        # Left alone: what the server burns with nobody asking (spinning threads would show).
        time.sleep(1.0)
        cpu0 = process_cpu_s(server.proc.pid)
        time.sleep(IDLE_CPU_S)
        out["idle_cpu_share"] = (process_cpu_s(server.proc.pid) - cpu0) / IDLE_CPU_S
        out["idle_cpu_s"] = IDLE_CPU_S
        out["server_threads"] = len(os.listdir(f"/proc/{server.proc.pid}/task"))
    finally:
        server.stop()
        loop.close()
    return out


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


def http_level(server, image, concurrency):
    """One load level; adds the mean batch size the workers formed meanwhile."""
    before = server.counters()
    r = run_json([BENCH, "http", "--url", server.url, "--image", image,
                  "--concurrency", str(concurrency), "--duration", str(HTTP_DURATION),
                  "--warmup", str(HTTP_WARMUP)])
    after = server.counters()
    level = r["levels"][0]
    try:
        batches = after["gradcam_batches_total"] - before["gradcam_batches_total"]
        images = after["gradcam_batched_images_total"] - before["gradcam_batched_images_total"]
        level["mean_batch"] = images / batches if batches else None
    except KeyError:
        level["mean_batch"] = None
    return level


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


def write_outputs(results):
    plots(results)
    text, verdicts = report(results)
    with open(os.path.join(ROOT, "BENCHMARKS.md"), "w") as f:
        f.write(text)
    if results["foreign_cpu_share"] > NOISE_WARN:
        print(f"\nWARNING: other processes used {results['foreign_cpu_share'] * 100:.0f}% of the "
              "machine's CPU during the run; the figures are disturbed. Re-run on a quiet "
              "machine.", file=sys.stderr)
    print("\nTargets:")
    for line in verdicts:
        print("  " + line)
    print(f"\nWrote BENCHMARKS.md, bench/latency.png, bench/throughput.png, bench/results.json "
          f"({results['elapsed_s'] / 60:.1f} min of measuring)")


def main():
    if sys.argv[1:] == ["--phone-only"]:
        phone_only()
        return
    if sys.argv[1:] == ["--report-only"]:
        # Re-render the report and plots from the last run's figures, measuring nothing.
        with open(os.path.join(ROOT, "bench", "results.json")) as f:
            write_outputs(json.load(f))
        return
    if sys.argv[1:2] == ["--only"] and len(sys.argv) == 3:
        # One part alone, while working on it: prints its figures, rewrites no report.
        os.makedirs(SCRATCH, exist_ok=True)
        assets = run_json([BENCH, "assets", "--out", SCRATCH])
        weights, img224 = assets["weights"], assets["images"][0]["path"]
        threads = int(os.environ.get("BENCH_THREADS", len(os.sched_getaffinity(0))))
        parts = {
            "idle": lambda: idle_http(weights, img224),
            "ort": lambda: {k: paired_latency(weights, img224, threads, runtime=k)
                            for k in ("onnxruntime", "onnxruntime-cam")},
            "methods": lambda: cam_methods(weights, img224, threads),
            "exported": lambda: exported_models(weights, img224, threads),
            "baseline": lambda: run_json([sys.executable,
                                          os.path.join(ROOT, "bench", "baseline.py"),
                                          "--weights", weights, "--image", img224,
                                          "--threads", str(threads),
                                          "--runs", str(BASELINE_RUNS)]),
        }
        if sys.argv[2] not in parts:
            raise SystemExit(f"--only takes one of {', '.join(parts)}")
        print(json.dumps({"machine": machine(), sys.argv[2]: parts[sys.argv[2]]()}, indent=1))
        return
    os.makedirs(SCRATCH, exist_ok=True)
    results = {"machine": machine(), "quick": QUICK, "settings": shipped_settings()}
    busy0, total0 = machine_cpu()
    own0 = own_cpu_s()

    log("assets: weights and images")
    assets = run_json([BENCH, "assets", "--out", SCRATCH])
    weights = assets["weights"]
    img224, img1080 = (i["path"] for i in assets["images"])
    results["assets"] = assets
    images = {"224x224": img224, "1920x1080": img1080}

    log(f"engine: {ENGINE_RUNS} runs per measurement")
    engine = run_json([BENCH, "engine", "--weights", weights, "--image", img224,
                       "--large-image", img1080, "--runs", str(ENGINE_RUNS)])
    results["engine"] = engine
    threads = engine["threads"]

    log(f"baseline: pytorch-grad-cam and PyTorch forward-only, {threads} threads")
    results["baseline"] = run_json([sys.executable, os.path.join(ROOT, "bench", "baseline.py"),
                                    "--weights", weights, "--image", img224,
                                    "--threads", str(threads), "--runs", str(BASELINE_RUNS)])

    log("cold start")
    cold = []
    for i in range(COLD_STARTS):
        s = Server(weights, [], f"cold-{i}")
        cold.append({"listening_s": s.listening_s, "ready_s": s.cold_start_s,
                     **s.memory()})
        s.stop()

    log("http: shipped defaults, concurrency " + ",".join(map(str, CONCURRENCY)))
    server = Server(weights, [], "sweep")
    cold.append({"listening_s": server.listening_s, "ready_s": server.cold_start_s,
                 **server.memory()})
    results["cold_start"] = cold
    sweep = {}
    memory_trace = [{"after": "ready", "requests": 0, **server.memory()}]
    served = 0
    try:
        for label, path in images.items():
            sweep[label] = []
            for c in CONCURRENCY:
                lv = http_level(server, path, c)
                sweep[label].append(lv)
                served += lv["requests"]
                memory_trace.append({"after": f"{label} c={c}", "requests": served,
                                     **server.memory()})
                log(f"  {label} c={c}: {lv['throughput_rps']:.2f} req/s, "
                    f"p50 {lv['latency_ms']['p50']:.0f} ms, p99 {lv['latency_ms']['p99']:.0f} ms, "
                    f"{lv['errors']} errors")
        results["server_memory"] = server.memory()
    finally:
        server.stop()
    results["http"] = sweep
    results["memory_trace"] = memory_trace

    tried = []
    # max_batch 4 and 1 back to back, so that a drift in the machine's load shows less.
    variants = [
        (f"workers {w}, threads {t}, max_batch {b}",
         ["--workers", str(w), "--threads", str(t), "--max-batch", str(b)])
        for w, t, b in [(1, 2, 4), (1, 2, 1), (1, 1, 4), (2, 1, 4), (2, 2, 4)]
    ]
    for i, (label, args) in enumerate(variants):
        log(f"tried: {label}, concurrency 8")
        s = Server(weights, args, f"tried-{i}")
        try:
            entry = {"label": label, "args": args, "cold_start_s": s.cold_start_s}
            for img_label, path in images.items():
                entry[img_label] = http_level(s, path, 8)
            entry["memory"] = s.memory()
        finally:
            s.stop()
        tried.append(entry)
    results["tried"] = tried

    log(f"paired: our explanation vs PyTorch's forward, {PAIRED_LATENCY_ROUNDS} rounds")
    paired = {"latency": paired_latency(weights, img224, threads)}
    log(f"  median session {paired['latency']['ratio']:.2f}")
    log(f"paired: HTTP at concurrency 8 vs in process, {PAIRED_HTTP_ROUNDS} rounds per image")
    paired["http"] = paired_http(weights, img224, images)
    log(f"paired: our explanation vs ONNX Runtime's forward, {PAIRED_LATENCY_ROUNDS} rounds")
    paired["ort"] = paired_latency(weights, img224, threads, runtime="onnxruntime")
    log(f"  median session {paired['ort']['ratio']:.2f}")
    log("paired: our explanation vs ONNX Runtime's layer4 Grad-CAM (forward + map)")
    paired["ort_cam"] = paired_latency(weights, img224, threads, runtime="onnxruntime-cam")
    log(f"  median session {paired['ort_cam']['ratio']:.2f}")
    results["paired"] = paired
    log("phone photos: 4032x3024 JPEG in process and over HTTP")
    results["phone"] = phone(weights, img224, img1080, assets["phone"]["path"],
                             paired["http"]["1920x1080"])
    results["phone"]["machine"] = results["machine"]
    results["phone"]["photo"] = assets["phone"]
    log(f"idle: HTTP at concurrency 1 vs in process, pauses {IDLE_PAUSES_MS} ms, "
        f"{IDLE_ROUNDS} rounds")
    results["idle_http"] = idle_http(weights, img224)
    log(f"trunk speed: our explanation fp32/bf16 vs ONNX Runtime, {TRUNK_ROUNDS} rounds")
    results["trunk_vs_ort"] = trunk_vs_ort(weights, img224, threads)
    log(f"methods: every CAM method at layer4, ours and pytorch-grad-cam's ({METHOD_RUNS} "
        f"rounds, {METHOD_SLOW_RUNS} run of AblationCAM and ScoreCAM: ~10 min)")
    results["methods"] = cam_methods(weights, img224, threads)
    log(f"exported models: {', '.join(EXPORTED_ARCHS)} over HTTP vs pytorch-grad-cam, "
        "in process vs their prediction; resnet50 exported vs native")
    results["exported"] = exported_models(weights, img224, threads)
    results["elapsed_s"] = time.perf_counter() - started
    # How much of the machine other processes used meanwhile: the noise in every figure.
    busy1, total1 = machine_cpu()
    tick = os.sysconf("SC_CLK_TCK")
    nproc = results["machine"]["nproc"]
    machine_busy_s = (busy1 - busy0) / tick
    wall_s = (total1 - total0) / tick / nproc
    foreign_s = max(0.0, machine_busy_s - (own_cpu_s() - own0))
    results["foreign_cpu_share"] = foreign_s / (wall_s * nproc) if wall_s > 0 else 0.0
    results["machine"]["load_after"] = os.getloadavg()

    with open(os.path.join(ROOT, "bench", "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    write_outputs(results)


# ---------------------------------------------------------------------------------------
# Figures and the report


def engine_config(results, fold, onednn):
    return next(c for c in results["engine"]["configs"]
                if c["fold_batch_norm"] == fold and c["onednn_weights"] == onednn)


def engine_default(results):
    return engine_config(results, True, True)


def in_process_throughput(results):
    """The engine's best images/s, in process: batch 1 or batch 4 (the server's max_batch)."""
    c = engine_default(results)
    return max(c["batch1_images_per_s"], c["batch4_images_per_s"])


def plots(results):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"224x224": "tab:blue", "1920x1080": "tab:orange"}
    m = results["machine"]
    caption = f"{m['nproc']} cores, {m['cpu']}; `make bench`, {m['date']}"

    def finish(fig, ax, ylabel, what, name):
        """The axes, caption and file both plots share: clients on a log2 axis."""
        ax.set_xscale("log", base=2)
        ax.set_xticks(CONCURRENCY, [str(c) for c in CONCURRENCY])
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(ylabel)
        ax.set_title(f"POST /explain {what} vs concurrency")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.text(0.01, 0.01, caption, fontsize=7, color="grey")
        fig.tight_layout(rect=(0, 0.03, 1, 1))
        fig.savefig(os.path.join(ROOT, "bench", name), dpi=110)
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, levels in results["http"].items():
        cs = [lv["concurrency"] for lv in levels]
        ax.plot(cs, [lv["latency_ms"]["p50"] for lv in levels], "o-", color=colours[label],
                label=f"{label} p50")
        ax.plot(cs, [lv["latency_ms"]["p99"] for lv in levels], "s--", color=colours[label],
                label=f"{label} p99")
    finish(fig, ax, "latency per explanation (ms)", "latency", "latency.png")

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, levels in results["http"].items():
        cs = [lv["concurrency"] for lv in levels]
        ax.plot(cs, [lv["throughput_rps"] for lv in levels], "o-", color=colours[label],
                label=f"HTTP, {label} JPEG")
    ax.axhline(in_process_throughput(results), color="grey", linestyle=":",
               label="engine in process (best of batch 1, 4)")
    ax.axhline(results["baseline"]["gradcam_per_s"], color="tab:red", linestyle=":",
               label="pytorch-grad-cam in process")
    ax.set_ylim(bottom=0)
    finish(fig, ax, "explanations per second", "throughput", "throughput.png")


def verdict(ok):
    return "**PASS**" if ok else "**MISS**"


def change(new, old, higher_is_better=True):
    r = new / old
    gain = r - 1 if higher_is_better else 1 - r
    if abs(r - 1) <= NOISE:
        return f"no measurable difference ({(r - 1) * 100:+.1f}%, within noise)"
    return (f"helps ({(r - 1) * 100:+.1f}%)" if gain > 0 else f"hurts ({(r - 1) * 100:+.1f}%)")


def level_at(levels, c):
    return next(lv for lv in levels if lv["concurrency"] == c)


def report(results):
    m = results["machine"]
    eng = results["engine"]
    on = engine_default(results)
    off = engine_config(results, False, False)
    plain = engine_config(results, True, False)
    base = results["baseline"]
    ours_per_s = on["batch1_images_per_s"]
    inproc = in_process_throughput(results)

    targets = []
    r1 = on["explain_ms"]["p50"] / on["predict_ms"]["p50"]
    targets.append(("Explanation / prediction latency, in process (p50)",
                    f"{on['explain_ms']['p50']:.1f} / {on['predict_ms']['p50']:.1f} ms",
                    r1, "<= 1.10", r1 <= 1.10))
    # Earlier layers: the gradient runs back through the blocks after the layer.
    layers = {l["layer"]: l for l in eng.get("layers", [])}
    for name, want in (("layer4", 1.10), ("layer3", 1.35)):
        if name in layers:
            l = layers[name]
            targets.append((f"Explanation at {name} / prediction latency, in process (p50)",
                            f"{l['explain_ms']['p50']:.1f} / {l['predict_ms']['p50']:.1f} ms",
                            l["ratio_p50"], f"<= {want:.2f}", l["ratio_p50"] <= want))
    r2 = ours_per_s / base["gradcam_per_s"]
    targets.append(("Our explanations/s / pytorch-grad-cam's",
                    f"{ours_per_s:.2f} / {base['gradcam_per_s']:.2f} per s",
                    r2, ">= 2.5", r2 >= 2.5))
    # The ratios between two programs come from the paired rounds (step 6).
    paired = results["paired"]
    lat = paired["latency"]
    r3 = lat["ratio"]
    mid = lat["median_session"]
    targets.append(("Our explanation latency / PyTorch eager forward-only (p50, paired)",
                    f"{mid['ours_p50_ms']:.1f} / {mid['torch_p50_ms']:.1f} ms",
                    r3, "<= 0.9", r3 <= 0.9))
    for label, h in paired["http"].items():
        r = h["ratio"]
        targets.append((f"HTTP throughput at concurrency 8 ({label} JPEG) / engine in process "
                        "(paired)", f"{h['http']:.2f} / {h['in_process']:.2f} per s", r,
                        ">= 0.9", r >= 0.9))
    phone_targets, phone_lines = phone_report(results)
    targets += phone_targets
    targets += peer_and_idle_targets(results)
    targets += method_targets(results)
    targets += exported_targets(results)
    verdicts = [f"{'PASS' if ok else 'MISS'}  {name}: {fig} -> {ratio:.2f} (target {want})"
                for name, fig, ratio, want, ok in targets]

    cold = results["cold_start"]
    cold_ready = statistics.median(c["ready_s"] for c in cold)
    cold_listen = statistics.median(c["listening_s"] for c in cold)
    mem = results["server_memory"]
    trace = results["memory_trace"]

    L = []
    w = L.append
    w("# Benchmarks\n")
    w("Written by `make bench` (scripts/bench.sh, bench/run.py, bench/src/main.rs, "
      "bench/baseline.py); every figure below comes from its last run. Do not edit by hand: "
      "run `make bench` again.\n")
    if results["quick"]:
        w("> **BENCH_QUICK=1 run: short measurements, figures are rough.**\n")
    w("## Machine\n")
    w(f"- {m['nproc']} cores (nproc), {m['cpu']}, {m['memory_gib']} GiB memory, Linux {m['kernel']}")
    if "cpu_features" in m:
        f = m["cpu_features"]
        w(f"- CPU family {f['family']} model {f['model']}; instruction sets: "
          + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in f["isa"].items()))
    w(f"- libtorch / torch {base['torch']}, torchvision {base['torchvision']}, "
      f"grad-cam {base['grad_cam']}, {m['rustc']}")
    w(f"- commit {m['commit']}, {m['date']}, load average before the run "
      f"{m['load_before'][0]:.2f}")
    w(f"- command: `make bench` ({results['elapsed_s'] / 60:.1f} min of measuring)")
    share = results["foreign_cpu_share"]
    w(f"- other processes used {share * 100:.1f}% of the machine's CPU time during the run"
      + (" -- **the machine was not quiet: these figures are disturbed; re-run `make bench` "
         "on a quiet machine**" if share > NOISE_WARN else " (quiet enough)"))
    w(f"- model: ResNet-50 with seeded random weights (the same safetensors file for the Rust "
      f"engine, the server and Python), input 224x224, batch 1 unless said; "
      f"{eng['threads']} libtorch intra-op threads on both sides\n")

    w("## Targets\n")
    w("| Target | Measured | Ratio | Wanted | |")
    w("|---|---|---|---|---|")
    for name, fig, ratio, want, ok in targets:
        w(f"| {name} | {fig} | {ratio:.2f} | {want} | {verdict(ok)} |")
    w("")
    w("\"Our explanations/s\" is 1000 / median `Explainer::gradcam_batch` latency (forward + Grad-CAM, "
      "batch 1); pytorch-grad-cam's is 1000 / median latency of `GradCAM(model, target_layers="
      "[model.layer4[-1]])(x)` (forward, full autograd backward, its map scaling). \"Engine in "
      "process\" throughput is the better of batch 1 and batch 4 (the default `max_batch`), "
      f"{inproc:.2f} images/s in step 1.\n")
    w("\"Paired\" rows compare two programs measured in alternating short bursts on the same "
      "machine (section 5), because this shared machine's speed drifts by more than those "
      f"targets' margins within minutes: the explanation-vs-PyTorch latency as the median of "
      f"{len(lat['sessions'])} sessions (fresh processes on both sides, {lat['rounds']} rounds "
      f"of {lat['runs_per_round']} runs a side each); the HTTP rows as the "
      f"median of {len(next(iter(paired['http'].values()))['rounds'])} rounds' ratios, each "
      "round an HTTP burst at concurrency 8 and an in-process burst back to back (medians of "
      "both shown).\n")
    # What the HTTP ratio can reach at all: the in-process figure is the network alone, but
    # each request also decodes its upload and draws, encodes and base64s the overlay, on the
    # same cores the network's threads use.
    cores = m["nproc"]
    for p in eng["pipeline"]:
        extra = p["decode_ms"]["p50"] + p["render_ms"]["p50"] + p["json_ms"]["p50"]
        network_cpu = cores * 1000 / inproc  # core-ms per image when the network has the cores
        w(f"- {p['width']}x{p['height']}: each request also costs {extra:.1f} ms of CPU outside "
          f"the network (decode + resize {p['decode_ms']['p50']:.1f}, overlay + PNG "
          f"{p['render_ms']['p50']:.1f}, base64 + JSON {p['json_ms']['p50']:.1f}; in process, "
          f"p50), against about {network_cpu:.0f} core-ms of network per image on {cores} "
          f"cores: HTTP can reach at most about {network_cpu / (network_cpu + extra):.2f} of the "
          "in-process figure on this machine, whatever the server does.")
    w("")

    w("## 1. Engine, in process\n")
    w(f"Same 224x224 JPEG, decoded once; {eng['runs']} runs of each after {eng['warmup']} "
      "warm-up runs, prediction and explanation interleaved.\n")
    w("| Weights | Prediction p50 / p90 (ms) | Explanation p50 / p90 (ms) | "
      "Ratio p50 | forward / Grad-CAM part of it, p50 (ms) | Batch 4 (ms, images/s) |")
    w("|---|---|---|---|---|---|")
    for c, name in ((on, "batch norm folded, oneDNN layout (default)"),
                    (plain, "batch norm folded, plain tensors"), (off, "batch norm not folded")):
        w(f"| {name} | {c['predict_ms']['p50']:.1f} / {c['predict_ms']['p90']:.1f} | "
          f"{c['explain_ms']['p50']:.1f} / {c['explain_ms']['p90']:.1f} | {c['ratio_p50']:.3f} | "
          f"{c['explain_forward_ms']['p50']:.1f} / {c['explain_backward_ms']['p50']:.2f} | "
          f"{c['batch4_ms']['p50']:.0f}, {c['batch4_images_per_s']:.2f} |")
    w("")
    if eng.get("layers"):
        w("Explanation at each stage's last block (shipped settings), against prediction, "
          "interleaved; the map is 56x56 at layer1 down to 7x7 at layer4:\n")
        w("| Layer | Prediction p50 (ms) | Explanation p50 / p90 (ms) | its forward p50 | "
          "its backward + map p50 | Ratio p50 |")
        w("|---|---|---|---|---|---|")
        split = lambda l, k: f"{l[k]['p50']:.1f}" if k in l else "-"  # noqa: E731
        for l in eng["layers"]:
            w(f"| {l['layer']} | {l['predict_ms']['p50']:.1f} | {l['explain_ms']['p50']:.1f} / "
              f"{l['explain_ms']['p90']:.1f} | {split(l, 'forward_ms')} | "
              f"{split(l, 'backward_ms')} | {l['ratio_p50']:.3f} |")
        w("")
        w("Before layer4 the explanation's forward runs the network unfolded up to the layer "
          "(torchvision's operations, pytorch-grad-cam's values to the bit: the fast path's "
          "rounding flips ReLU masks that the gradient goes back through), and the blocks "
          "after it on plain tensors; each plain-tensor convolution reorders its activations "
          "into oneDNN's layout and back. A hand-written backward for those blocks, on "
          "weights reordered once, was tried (2026-11-29) and measured the same "
          "(layer3 1.85 against 1.84).\n")
    w("Whole pipeline in process (shipped defaults, overlay on), p50 ms per stage:\n")
    w("| Image | decode + resize | network (forward + Grad-CAM) | overlay + PNG | "
      "base64 + JSON | total |")
    w("|---|---|---|---|---|---|")
    for p in eng["pipeline"]:
        w(f"| {p['width']}x{p['height']} | {p['decode_ms']['p50']:.1f} | "
          f"{p['network_ms']['p50']:.1f} | {p['render_ms']['p50']:.1f} | "
          f"{p['json_ms']['p50']:.1f} | {p['total_ms']['p50']:.1f} |")
    w("")

    w("## 2. Python baseline (same weights, input and thread count)\n")
    w("| | p50 (ms) | p90 (ms) | per second |")
    w("|---|---|---|---|")
    w(f"| pytorch-grad-cam `GradCAM` | {base['gradcam_ms']['p50']:.1f} | "
      f"{base['gradcam_ms']['p90']:.1f} | {base['gradcam_per_s']:.2f} |")
    w(f"| PyTorch eager forward-only (`torch.no_grad`) | {base['forward_ms']['p50']:.1f} | "
      f"{base['forward_ms']['p90']:.1f} | {base['forward_per_s']:.2f} |")
    w(f"| ours: `Explainer::gradcam_batch` (explanation) | {on['explain_ms']['p50']:.1f} | "
      f"{on['explain_ms']['p90']:.1f} | {ours_per_s:.2f} |")
    w(f"| ours: `Engine::predict` (forward-only) | {on['predict_ms']['p50']:.1f} | "
      f"{on['predict_ms']['p90']:.1f} | {1e3 / on['predict_ms']['p50']:.2f} |")
    if "ort_forward_ms" in base:
        w(f"| ONNX Runtime {base['onnxruntime']} forward-only | "
          f"{base['ort_forward_ms']['p50']:.1f} | {base['ort_forward_ms']['p90']:.1f} | "
          f"{1e3 / base['ort_forward_ms']['p50']:.2f} |")
        w(f"| ONNX Runtime layer4 Grad-CAM (forward with layer4 as an output + map) | "
          f"{base['ort_cam_ms']['p50']:.1f} | {base['ort_cam_ms']['p90']:.1f} | "
          f"{1e3 / base['ort_cam_ms']['p50']:.2f} |")
    w("")
    if "ort_forward_ms" in base:
        w("ONNX Runtime: the same weights exported in the bench with `torch.onnx.export` "
          "(TorchScript exporter, opset 17), CPU provider, all graph optimisations, "
          f"`intra_op_num_threads={base['threads']}`, `inter_op_num_threads=1`; its logits "
          f"differ from PyTorch's by at most {base['ort_max_abs_diff']:.1e}. Its layer4 "
          "Grad-CAM is `ReLU(fc.weight[c] . A) / 49` from layer4's activation A (exact for a "
          "ResNet: the score's gradient with respect to A is `fc.weight[c] / 49` everywhere); "
          f"it differs from autograd's raw layer4 map by at most "
          f"{base['ort_cam_max_abs_diff']:.1e}.\n")
    w(f"{base['runs']} runs of each after {base['warmup']} warm-up runs, interleaved, "
      f"`torch.set_num_threads({base['threads']})`. Per second = 1000 / p50, on both sides.\n")

    w("## 3. HTTP, end to end\n")
    st = results["settings"]
    threads_text = ("libtorch's default threads" if not st["threads"]
                    else f"{st['threads']} libtorch threads")
    w("A second process (`gradcam-bench http`) keeps N keep-alive connections busy over "
      f"loopback, each sending the next request when its answer is in; {HTTP_WARMUP:.0f} s "
      f"unrecorded, then {HTTP_DURATION:.0f} s measured per level. The server runs the shipped "
      f"config.toml ({st['workers']} worker(s), {threads_text}, `max_batch` {st['max_batch']}, "
      f"`batch_wait_ms` {st['batch_wait_ms']}, `queue_capacity` {st['queue_capacity']}, "
      "overlay PNG embedded in the JSON). Throughput counts answers completed in the measured window; "
      "latency is from the first request byte sent to the last answer byte read. Stage "
      "columns are the means of the server's own `timing_ms` (forward and Grad-CAM are per "
      "batch); mean batch is from the server's /metrics counters.\n")
    w("![latency vs concurrency](bench/latency.png)\n")
    w("![throughput vs concurrency](bench/throughput.png)\n")
    for label, levels in results["http"].items():
        w(f"### {label} JPEG ({os.path.getsize(images_of(results)[label]) // 1024} KiB)\n")
        w("| Clients | req/s | p50 ms | p99 ms | errors | mean batch | decode | queue | forward "
          "| Grad-CAM | render | server total |")
        w("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for lv in levels:
            s = lv["stages_ms"]
            w(f"| {lv['concurrency']} | {lv['throughput_rps']:.2f} | "
              f"{lv['latency_ms']['p50']:.0f} | {lv['latency_ms']['p99']:.0f} | {lv['errors']} | "
              f"{fmt_batch(lv)} | "
              + " | ".join(f"{s[k]['mean']:.1f}" for k in
                           ("decode", "queue", "forward", "backward", "render", "total"))
              + " |")
        w("")
    w("With a handful of requests per level at high concurrency, p99 is close to the "
      "slowest request.\n")

    w("## 4. Cold start and memory\n")
    w(f"- process start to `/ready` answering 200 (weights file loaded, batch norm folded, "
      f"one warm-up pass): median **{cold_ready * 1e3:.0f} ms** over {len(cold)} starts "
      f"({', '.join('%.0f' % (c['ready_s'] * 1e3) for c in cold)} ms); the listening line "
      f"comes after {cold_listen * 1e3:.0f} ms (median)")
    w(f"- peak resident memory of the server (VmHWM) after the whole sweep above "
      f"({trace[-1]['requests']} measured requests, both images, up to 16 clients): "
      f"**{mem['VmHWM']:.0f} MiB**; resident at the end {mem['VmRSS']:.0f} MiB")
    w(f"- resident memory along the sweep (MiB): "
      + ", ".join(f"{t['after']}: {t['VmRSS']:.0f}" for t in trace))
    w("")

    w("## 5. Paired rounds\n")
    w("The two-program targets, each side measured in short bursts alternating with the other "
      "(ours first in even rounds, second in odd ones), after the sweeps above.\n")
    w(f"- **Explanation vs PyTorch eager forward-only**, batch 1, {len(lat['sessions'])} "
      f"sessions of {lat['rounds']} rounds of {lat['runs_per_round']} runs a side, p50s: "
      + "; ".join(f"ours {x['ours_p50_ms']:.1f} ms / PyTorch {x['torch_p50_ms']:.1f} ms = "
                  f"{x['ratio']:.2f}" for x in lat["sessions"])
      + f". Median session **{r3:.2f}**; against the session most favourable to PyTorch "
      f"{lat['worst_ratio']:.2f}. Why sessions: measured by hand on a quiet machine, one PyTorch "
      "process ran this forward in about 55 ms and the next, the same code, in about 75 ms, "
      "each keeping its speed for its whole life (6 x 15 forwards per process), so one "
      "process is not a fair sample.")
    for label, h in paired["http"].items():
        w(f"- **HTTP at concurrency 8, {label}** ({h['duration_s']:.0f} s measured per "
          "burst) / engine in process (better of batch 1 and 4, 10 runs each per burst): "
          + "; ".join(f"{x['http']:.2f} / {x['in_process']:.2f} = {x['ratio']:.2f}"
                      for x in h["rounds"])
          + f"; median ratio **{h['ratio']:.2f}**.")
    w("")

    report_peers_and_idle(results, w)
    trunk_section(results, w)
    methods_section(results, w)
    exported_section(results, w)
    w("## What we tried\n")
    w("Each row was measured in this run; a change within "
      f"{NOISE * 100:.0f}% is reported as no difference.\n")
    if results["foreign_cpu_share"] > NOISE_WARN:
        w(f"> **Other processes took {results['foreign_cpu_share'] * 100:.0f}% of the CPU during "
          "this run: the comparisons below are not reliable.**\n")
    w(f"- **Grad-CAM without the full backward** (trunk without autograd, gradient only from "
      f"layer4's output through the head, no parameter gradients): explanation "
      f"{on['explain_ms']['p50']:.1f} ms against pytorch-grad-cam's "
      f"{base['gradcam_ms']['p50']:.1f} ms (p50) on the same weights; the Grad-CAM part of ours "
      f"is {on['explain_backward_ms']['p50']:.2f} ms: "
      f"{base['gradcam_ms']['p50'] / on['explain_ms']['p50']:.2f}x faster. Kept.")
    w(f"- **Batch-norm folding** at load: explanation p50 {off['explain_ms']['p50']:.1f} ms "
      f"unfolded, {on['explain_ms']['p50']:.1f} ms folded: "
      f"{change(on['explain_ms']['p50'], off['explain_ms']['p50'], higher_is_better=False)}; "
      f"prediction {off['predict_ms']['p50']:.1f} -> {plain['predict_ms']['p50']:.1f} ms "
      "(both with plain tensors).")
    w(f"- **Folded weights reordered once into oneDNN's layout** (`onednn_weights`, "
      "`mkldnn_reorder_conv2d_weight` at load, the trunk's convolutions run with their ReLU "
      f"and shortcut add fused in, see below): explanation p50 {plain['explain_ms']['p50']:.1f} ms with plain tensors, "
      f"{on['explain_ms']['p50']:.1f} ms reordered: "
      f"{change(on['explain_ms']['p50'], plain['explain_ms']['p50'], higher_is_better=False)}; "
      f"batch 4 {plain['batch4_ms']['p50']:.0f} -> {on['batch4_ms']['p50']:.0f} ms "
      f"({change(on['batch4_ms']['p50'], plain['batch4_ms']['p50'], higher_is_better=False)}). "
      "Eager libtorch reorders plain weights into that layout on every call. Kept.")
    tried = {t["label"]: t for t in results["tried"]}
    b4 = tried["workers 1, threads 2, max_batch 4"]
    b1 = tried["workers 1, threads 2, max_batch 1"]
    w(f"- **Dynamic batching** in process: batch 4 gives {on['batch4_images_per_s']:.2f} "
      f"images/s against {on['batch1_images_per_s']:.2f} at batch 1: "
      f"{change(on['batch4_images_per_s'], on['batch1_images_per_s'])}.")
    for img in images_of(results):
        t4, t1 = b4[img]["throughput_rps"], b1[img]["throughput_rps"]
        w(f"  - HTTP, {img}, 8 clients, 1 worker: `--max-batch 4` {t4:.2f} req/s "
          f"(p50 {b4[img]['latency_ms']['p50']:.0f} ms, mean batch {fmt_batch(b4[img])}) vs "
          f"`--max-batch 1` {t1:.2f} req/s "
          f"(p50 {b1[img]['latency_ms']['p50']:.0f} ms): max_batch 4 {change(t4, t1)}.")
    w("- **Workers x libtorch threads** (HTTP, 8 clients, `max_batch` 4):\n")
    w("| Setting | 224x224 req/s | p50 ms | 1920x1080 req/s | p50 ms | peak RSS MiB |")
    w("|---|---|---|---|---|---|")
    matrix = sorted((t for t in results["tried"] if t["label"].endswith("max_batch 4")),
                    key=lambda t: t["label"])
    for t in matrix:
        a, b = t["224x224"], t["1920x1080"]
        w(f"| {t['label'].rsplit(',', 1)[0]} | {a['throughput_rps']:.2f} | "
          f"{a['latency_ms']['p50']:.0f} | {b['throughput_rps']:.2f} | "
          f"{b['latency_ms']['p50']:.0f} | {t['memory']['VmHWM']:.0f} |")
    w("")
    base_cfg = tried["workers 1, threads 2, max_batch 4"]
    for img in images_of(results):
        best = max(matrix, key=lambda t: t[img]["throughput_rps"])
        name = best["label"].rsplit(",", 1)[0]
        ratio = best[img]["throughput_rps"] / base_cfg[img]["throughput_rps"]
        if ratio - 1 <= NOISE:
            w(f"  - {img}: no setting measurably beats 1 worker x 2 threads "
              f"({base_cfg[img]['throughput_rps']:.2f} req/s).")
        else:
            w(f"  - {img}: fastest measured is {name}, "
              f"{change(best[img]['throughput_rps'], base_cfg[img]['throughput_rps'])} "
              "against 1 worker x 2 threads.")
    w("\n  Every worker holds its own copy of the weights (peak RSS column).")
    w("")
    w("Measured by hand, outside this benchmark (2026-11-28, same machine; the figures of "
      "this run above already include what was kept):\n")
    w("- **Overlay drawing** at 1920x1080: 41 ms -> 12 ms, same bytes (map rows interpolated "
      "once, no full-size float buffers, the blend from tables; `src/render.rs`). Kept.")
    w("- **base64 + JSON off the async threads**, into a buffer sized once: HTTP at 8 clients "
      "with the 1920x1080 JPEG went from 11.2 to 12.4-13.2 req/s together with the overlay "
      "change. Kept.")
    w("- **PNG filter** (fast deflate) on the 1920x1080 overlay, best of 5: Sub 10.0 ms / "
      "4.69 MB (shipped), Up 8.3 ms / 4.70 MB, Paeth 9.1 ms / 4.75 MB, adaptive 10.6 ms / "
      "4.50 MB, no filter 12.0 ms / 6.22 MB, uncompressed 4.9 ms / 6.22 MB, zlib level 1 "
      "52.8 ms / 3.85 MB. On a real photo (docs/chelsea.jpg) Sub is 226 KB and Up 250 KB: "
      "no change worth its bytes.")
    w("- **HTTP threads at nice 5** beside the model workers (so a preempted thread does not "
      "hold up libtorch's parallel kernels): 12.0-16.0 req/s (224x224) and 10.5-13.0 "
      "(1920x1080) against 14.5-15.5 and 11.5-12.0 without, two runs each: within the noise "
      "of a shared machine. Not kept.")
    w("- **Channels-last memory format** (weights and input in NHWC strides, so oneDNN picks "
      "its channels-last kernels), engine in process, best of 30 runs: batch 4 230 -> 187-189 "
      "ms, but batch 1 50 -> 58-60 ms. Shipped for batches of two or more (a second copy of "
      "the weights, ~100 MB) until the oneDNN reorder above replaced it: in one process, "
      "interleaved, 40 runs each, batch 4 took 197 ms channels-last against 183 ms reordered, "
      "batch 1 59-62 ms plain against 54-55 ms reordered, with one copy of the weights. "
      "Removed.")
    w("- **In-place ReLU and residual add** in the trunk, as torchvision does: best-of-40 "
      "prediction 52.5-60.6 -> 50.6-51.3 ms, two runs each. Kept.")
    w("- **OpenMP wait policy** of libtorch's threads, HTTP at 8 clients: "
      "`OMP_WAIT_POLICY=active` (threads spin between kernels) 10.5 req/s (224x224) and "
      "8.5-8.9 (1920x1080); `passive` 15.5-19.5 and 12.9-14.1; unset (libgomp's default) "
      "17.5-18.5 and 13.5-14.0. The default is as good as passive; do not set `active`.")
    w("- **oneDNN tensors with `to_mkldnn` weights only** (input and weights converted, the "
      "weights not reordered for the convolution): best-of-10 prediction 58.6 ms against "
      "about 50 ms plain, batch 4 206 against 187-189 ms channels-last: every call still "
      "reorders the weights. Not kept; the reorder at load above is what helps.")
    w("- **Base64 straight into the JSON buffer** (`Explanation::to_json_with_overlay`, SIMD "
      "base64 from `base64-simd`): at 1920x1080 base64 2.3 ms + JSON string escaping 2.8-3.7 "
      "ms -> 0.4 ms, the same bytes (a unit test compares them with serde's). Kept.")
    w("- **Overlay's last pass by runs of one heat level** (one table per run instead of per "
      "pixel), 1920x1080, p50 of 100: 9.3-9.6 ms per pixel against 10.2-11.2 ms by runs (the "
      "runs are short). Not kept.")
    for line in HAND_MEASURED_TRUNK:
        w(line)
    w("")
    w("Not measured (so no claim either way): flush-denormal settings, other resize "
      "libraries (JPEG decoders: see \"Phone photos\").\n")
    L.extend(phone_lines)
    w("## Reproduce\n")
    w("```\nmake bench\n```\n")
    w("It builds the release binaries (`cargo build --release --locked`), installs the "
      "reference venv once (`scripts/setup-pyref.sh`), runs `bench/run.py` and rewrites this "
      "file, `bench/latency.png`, `bench/throughput.png` and `bench/results.json` (every raw "
      "figure). `BENCH_QUICK=1 make bench` makes a short, rough run.\n")
    return "\n".join(L), verdicts


def phone_report(results):
    """Goal 3's targets and its section: ([(name, figure, ratio, want, ok)], [lines])."""
    p = results.get("phone")
    if not p:
        return [], []
    ip = p["in_process"]
    variants = {v["variant"]: v["stages"] for v in ip["variants"]}
    shipped = variants["shipped defaults"]
    targets = []
    r = p["ratio"]
    mid = sorted(p["rounds"], key=lambda x: x["ratio"])[len(p["rounds"]) // 2]
    targets.append(("4032x3024 JPEG / 224x224 JPEG, end-to-end p50 over HTTP at concurrency 1 "
                    "(paired)", f"{mid['p50_phone']:.1f} / {mid['p50_224']:.1f} ms", r,
                    "<= 1.50", r <= 1.5))
    size = p["answer_bytes"]
    targets.append(("Answer for the 4032x3024 JPEG, shipped defaults (MB)",
                    f"{size:,} bytes", size / 1e6, "<= 1.50", size <= 1.5e6))
    c = p["outside_over_network_cpu"]
    targets.append(("Server CPU outside the network / the network's, per 4032x3024 request",
                    "threads other than model-worker-* / model-worker-*", c, "<= 0.25",
                    c <= 0.25))
    h = p["http_1080_c8"]
    if h != results.get("paired", {}).get("http", {}).get("1920x1080"):
        targets.append(("HTTP throughput at concurrency 8 (1920x1080 JPEG) / engine in process "
                        "(paired, phone step)", f"{h['http']:.2f} / {h['in_process']:.2f} per s",
                        h["ratio"], ">= 0.9", h["ratio"] >= 0.9))

    m = p.get("machine", results["machine"])
    if m["load_before"][0] > m["nproc"]:
        # A timing verdict from a busy machine is no verdict: say so in the list too (the
        # answer's size does not depend on it).
        targets = [(name if name.startswith("Answer") else
                    f"{name} [busy machine: not trusted]", fig, ratio, want, ok)
                   for name, fig, ratio, want, ok in targets]
    photo = p.get("photo", {})
    L = []
    w = L.append
    w("## Phone photos (issue 14, goal 3)\n")
    w(f"Measured {m['date']}, commit {m['commit']}, {m['nproc']} cores, {m['cpu']}, load "
      f"average before {m['load_before'][0]:.2f}; `python bench/run.py --phone-only` (step 7 "
      "alone) or `make bench`. The photo: docs/chelsea.jpg upscaled to 4032x3024 with light "
      f"noise, JPEG quality 90, {photo.get('bytes', ip['photo_bytes']):,} bytes "
      "(`gradcam-bench assets`). Shipped defaults: `overlay_max_side` 960, PNG.\n")
    if m["load_before"][0] > m["nproc"]:
        w(f"> **The machine was busy (load average {m['load_before'][0]:.1f} on {m['nproc']} "
          "cores, other builds and benchmarks): wall times are inflated several times over, "
          "a CPU clock counts time lost to contention, and the ratios between two programs "
          "(the 1920x1080 one above all) are not to be trusted. Re-run "
          "`python bench/run.py --phone-only` on a quiet machine.**\n")
    w("**CPU outside the network** is defined as the CPU time a request costs beside the "
      "network's forward and backward passes: over HTTP, the server's threads other than "
      "`model-worker-*` (HTTP, multipart, decode, resize, overlay, encoding, base64, JSON) "
      "against the `model-worker-*` threads (the worker and the libgomp threads it starts, "
      "which inherit its name), read from /proc/PID/task/*/stat while only the photo is "
      "served; in process, this thread's CPU clock over decode, render and JSON against the "
      "process's CPU clock over the network call.\n")
    w(f"Over HTTP, concurrency 1, {len(p['rounds'])} alternating rounds of "
      f"{PHONE_DURATION:.0f} s per image:\n")
    w("| round | 4032x3024 p50 ms | 224x224 p50 ms | ratio | server CPU outside / network |")
    w("|---|---|---|---|---|")
    for i, x in enumerate(p["rounds"]):
        w(f"| {i + 1} | {x['p50_phone']:.1f} | {x['p50_224']:.1f} | {x['ratio']:.2f} | "
          f"{x['outside_over_network_cpu']:.2f} |")
    o = p.get("overlay_image") or {}
    w(f"\nThe answer: {size:,} bytes, overlay {o.get('width')}x{o.get('height')} "
      f"{o.get('media_type')}. HTTP at concurrency 8 with the 1920x1080 JPEG: "
      f"{h['http']:.2f} req/s against {h['in_process']:.2f} images/s in process "
      f"({h['ratio']:.2f}).\n")
    w(f"In process (`gradcam-bench phone`, {ip['threads']} libtorch threads, p50 of "
      f"{PHONE_RUNS} runs; wall ms, CPU ms in brackets):\n")
    w("| pipeline | picture | overlay | decode | network | render | JSON | outside CPU / "
      "network CPU | answer bytes |")
    w("|---|---|---|---|---|---|---|---|---|")
    for v in ip["variants"]:
        st = v["stages"]
        ov = st["overlay"]
        w(f"| {v['variant']} | {st['picture'][0]}x{st['picture'][1]} | "
          f"{f'{ov[0]}x{ov[1]}' if ov[0] else '-'} | "
          f"{st['decode_ms']['p50']:.1f} ({st['decode_cpu_ms']['p50']:.1f}) | "
          f"{st['network_ms']['p50']:.1f} ({st['network_cpu_ms']['p50']:.1f}) | "
          f"{st['render_ms']['p50']:.1f} ({st['render_cpu_ms']['p50']:.1f}) | "
          f"{st['json_ms']['p50']:.1f} ({st['json_cpu_ms']['p50']:.1f}) | "
          f"{st['outside_over_network_cpu']:.2f} | {st['answer_bytes']:,} |")
    w("\nOverlay encoders on the shipped overlay (the blend at 960x720), best-of CPU ms:\n")
    w("| encoder | CPU ms | bytes |")
    w("|---|---|---|")
    for e in ip["encoders"]:
        w(f"| {e['encoder']} | {e['cpu_ms_best']:.1f} | {e['bytes']:,} |")
    w("\nFidelity of the scaled decode: each image upscaled to 4032x3024 and encoded as a "
      "JPEG (quality 90), explained from the whole decode (as before) and from the shipped "
      "scaled decode; the map error is the largest difference relative to the map's maximum "
      "(the parity tests allow 1e-4 against pytorch-grad-cam), with the seeded random "
      "ResNet-50, whose probabilities are nearly flat (a harsh test of the top-5 order):\n")
    w("| image | picture | top-5 equal | target equal | map error | largest probability "
      "change | largest input change |")
    w("|---|---|---|---|---|---|---|")
    for f in ip["fidelity"]:
        w(f"| {f['photo']} | {f['picture'][0]}x{f['picture'][1]} | {f['top5_equal']} | "
          f"{f['same_target']} | {f['map_error_relative']:.2e} | "
          f"{f['probability_error']:.2e} | {f['input_error']:.3f} |")
    w("\nThe top-5 and the class explained stay the same; the maps move by more than the "
      "parity tests' 1e-4 (which is float rounding on identical inputs): the scaled decode "
      "is another resampling of the photo, its input differing by up to 0.035 (about 2 "
      "levels of 255). libjpeg-turbo's own scaled decode differs as much: PIL's `draft` "
      "(1/4) against PIL's whole decode of the same photo, both resized to 224 by PIL, "
      "differ by up to 0.0175 in the input (measured by hand, 2026-11-29). A map error of "
      "4.6e-3 is about one level of 255 in the overlay.\n")
    w("JPEG decoders tried by hand (2026-11-29, this photo, thread CPU ms, best of 5, the "
      "machine busy): the `image` crate's zune-jpeg, whole 50-58 (it has no scaled decode); "
      "`jpeg-decoder` 0.3.2 (shipped), whole 58-61, 1/2 29-30, 1/4 26, 1/8 26: the Huffman "
      "decoding is most of it; `mozjpeg` 0.10 (libjpeg-turbo's code, built by cc without "
      "nasm, so no SIMD), whole 96, 1/2 42, 1/4 28-30, 1/8 17-20: its entropy decoding is "
      "about 30 % faster, the rest slower without SIMD; `turbojpeg` 1.5 needs libturbojpeg "
      ">= 3.0 (Debian 12 has 2.1.5) or cmake and nasm to build its own, neither here. "
      "libjpeg-turbo with its SIMD (Pillow's, by hand on a quiet machine, 2026-11-29, "
      "process CPU ms, median of 10): whole 62.6, 1/4 20.3, 1/8 17.5. The entropy decoding "
      "of a 1.1 MB JPEG is a floor of about 17 ms of CPU whatever the scale or decoder, "
      "about a fifth of the network's CPU per request (2 threads x about 42 ms): goal 3's "
      "25 % for everything outside the network cannot be met on this hardware while the "
      "request carries a JPEG of this size. "
      "Encoders by hand on the same overlay: the `image` crate's JPEG encoder 16-18 ms "
      "against `jpeg-encoder` 4-5 ms (shipped) at quality 85.\n")
    return targets, L
def peer_and_idle_targets(results):
    """Issue 14's goals 1 and 2, from the paired rounds (absent from older results)."""
    out = []
    paired = results["paired"]
    if "ort" in paired:
        o = paired["ort"]
        mid = o["median_session"]
        out.append(("Our explanation at layer4 (batch 1, fp32, in process) / ONNX Runtime "
                    "forward (p50, paired)",
                    f"{mid['ours_p50_ms']:.1f} / {mid['torch_p50_ms']:.1f} ms",
                    o["ratio"], "<= 1.0", o["ratio"] <= 1.0))
    for pause, v in results.get("idle_http", {}).get("pauses", {}).items():
        how = "back to back" if pause == "0" else f"{pause} ms apart"
        out.append((f"HTTP at concurrency 1 (224x224, end to end) / explanation in process "
                    f"(p50, {how}, paired)",
                    f"{v['http_p50_ms']:.1f} / {v['in_process_p50_ms']:.1f} ms",
                    v["ratio"], "<= 1.10", v["ratio"] <= 1.10))
    return out


def report_peers_and_idle(results, w):
    """Section 6: ONNX Runtime as the peer (paired) and the idle server."""
    paired = results["paired"]
    idle = results.get("idle_http")
    if "ort" not in paired and not idle:
        return
    w("## 6. ONNX Runtime as the peer, and the idle server\n")
    for key, what in (("ort", "ONNX Runtime's plain forward"),
                      ("ort_cam", "ONNX Runtime's layer4 Grad-CAM (forward with layer4 as a "
                                  "second output, then the map in NumPy)")):
        if key not in paired:
            continue
        lat = paired[key]
        w(f"- **Our explanation at layer4 vs {what}**, batch 1, same weights and threads, "
          f"{len(lat['sessions'])} sessions of {lat['rounds']} rounds of "
          f"{lat['runs_per_round']} runs a side, p50s: "
          + "; ".join(f"ours {x['ours_p50_ms']:.1f} ms / ORT {x['torch_p50_ms']:.1f} ms = "
                      f"{x['ratio']:.2f}" for x in lat["sessions"])
          + f". Median session **{lat['ratio']:.2f}**.")
    if idle:
        w("- **HTTP at concurrency 1 vs the explanation in process** (`gradcam-bench http "
          "--concurrency 1 [--pause-ms 200]` against the shipped defaults, 224x224 JPEG, "
          "latency at the client from the first byte sent to the last byte read, overlay PNG "
          "in the JSON; in process: `gradcam-bench engine-loop`, the network on a prepared "
          "input, batch 1), alternating bursts; with a pause, each request on both sides "
          "comes after that long idle:\n")
        w("| Pause | Round | HTTP p50 ms | server forward p50 | server queue p50 | "
          "in process p50 ms | ratio | server CPU ms / request | in-process CPU ms / run | "
          "model threads' sleeps / request |")
        w("|---|---|---|---|---|---|---|---|---|---|")
        for pause, v in idle["pauses"].items():
            for i, r in enumerate(v["rounds"]):
                h, p = r["http"], r["in_process"]
                w(f"| {pause} ms | {i + 1} | {h['p50_ms']:.1f} | {h['forward_p50_ms']:.1f} | "
                  f"{h['queue_p50_ms']:.2f} | {p['p50_ms']:.1f} | {r['ratio']:.2f} | "
                  f"{h['cpu_ms_per_request']:.0f} | {p['cpu_ms_per_run']:.0f} | "
                  f"{h.get('model_thread_sleeps_per_request', float('nan')):.1f} |")
        w("")
        w(f"  Median ratios: "
          + ", ".join(f"{'back to back' if k == '0' else k + ' ms apart'} "
                      f"**{v['ratio']:.2f}**" for k, v in idle["pauses"].items())
          + f". Left alone for {idle['idle_cpu_s']:.0f} s afterwards the server used "
          f"**{idle['idle_cpu_share'] * 100:.1f}%** of one core ({idle['server_threads']} "
          "threads). CPU per request counts every thread of the process, libgomp's spin "
          "after the last parallel region included (a bounded spin, then sleep).\n")
    w("What made an idle server slow, measured by hand (2026-11-29, this machine kind; "
      "`/proc/<pid>/task/*/status` of the server, two builds side by side, alternating):\n")
    w("- The server loaded the model on its main thread, whose OpenMP pool (libgomp, which "
      "the PyPI libtorch uses) outlived the load. With 4 OpenMP threads in the process on "
      "2 cores, libgomp throttles its spin between parallel regions (1,000 spins instead "
      "of 300,000), so the model worker's pool thread slept and was woken **355 times per "
      "request**; PyTorch in Python and `gradcam-bench engine-loop` hold one pool and do "
      "not. The served forward took 34 ms back to back and 52 ms with 200 ms between "
      "requests, against 28 ms in process (issue 14). `Engine::load` now does its tensor "
      "work on a thread that ends with it (its pool goes with it): **1 to 6 sleeps per "
      "request**, the same as in process. On a node with many cores (the Kubernetes "
      "manifests) libgomp never throttled, so this is how the server always ran there.")
    w("- `batch_wait_ms` (2 ms) was waited after every first job, with nobody else admitted: "
      "a worker now waits only while admitted requests are still being decoded (queue p50 "
      "2.1 ms -> 0.03 ms at concurrency 1).")
    w("- The price of spinning, on a machine whose cores other processes hold: with the "
      "load average at 11 on these 2 cores (other builds), the same A/B gave the served "
      "forward (p50, back to back / 200 ms apart) **115 / 123 ms with the old stray pool "
      "against 1,349 / 1,143 ms without** it; "
      "`GOMP_SPINCOUNT` 1,000 / 10,000 / 50,000 / default: 121 / 530 / 1,372 / 1,386 ms. A "
      "waiting thread that spins burns the time slice its partner needs. PyTorch eager and "
      "our engine in process pay the same there (libgomp's default). Where the cores are "
      "shared with other busy processes, set `GOMP_SPINCOUNT=1000` (or `OMP_WAIT_POLICY="
      "passive`) in the server's environment; libgomp reads it when it loads.\n")


def fmt_batch(level):
    b = level.get("mean_batch")
    return "-" if b is None else f"{b:.2f}"


def images_of(results):
    return {"224x224": results["assets"]["images"][0]["path"],
            "1920x1080": results["assets"]["images"][1]["path"]}


if __name__ == "__main__":
    main()
