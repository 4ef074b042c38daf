"""The steps of `make bench` (bench/run.py lists them): each one measures through the
runners (bench/harness.py) and returns its figures as data, which bench/results.json keeps
and the report (bench/report.py) reads. How many runs each takes is set here; BENCH_QUICK=1
shortens every step."""
import os
import statistics
import subprocess
import sys
import time

from harness import (BENCH, PAUSE_S, QUICK, ROOT, SCRATCH, Loop, Server, alternate,
                     answer_bytes, cpu_flags, engine_loop, log, machine, machine_cpu,
                     model_thread_sleeps, own_cpu_s, process_cpu_s, run_json,
                     shipped_settings, started, task_cpu, torch_loop)

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
# CAM methods (step 9): rounds of the one-pass methods; AblationCAM and ScoreCAM are
# thousands of passes each (pytorch-grad-cam: about 3 minutes a run here), so one run.
METHOD_RUNS = 4 if QUICK else 20
METHOD_SLOW_RUNS = 1
# Faithfulness scores (step 10, issue 23): rounds of the cheap columns (prediction, Grad-CAM,
# the scores that rerun the network once or not at all, method=auto); ROAD's columns (road,
# road_morf, road_lerf, arcc: 8 imputations each) and method=auto ranked by road (ROAD for
# every distinct candidate map), each seconds a run (BENCHMARKS.md's scores table), run in
# fewer rounds.
SCORE_RUNS = 4 if QUICK else 10
SCORE_SLOW_RUNS = 2 if QUICK else 5
SCORE_AUTO_ROAD_RUNS = 1 if QUICK else 3
# Exported models (step 11): the architectures of the any-model issue's speed goals, and
# rounds of alternating HTTP and pytorch-grad-cam measurements.
EXPORTED_ARCHS = ["efficientnet_b0", "convnext_tiny", "vit_b_16"]
EXPORTED_ROUNDS = 2 if QUICK else 3
EXPORTED_RUNS = 5 if QUICK else 10
EXPORTED_ENGINE_RUNS = 10 if QUICK else 30


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


def cam_methods(weights, image, threads):
    """Every method at layer4, top-1 class, batch 1: ours in one process (interleaved with
    our prediction), then pytorch-grad-cam's in another, same weights, image and threads."""
    common = ["--weights", weights, "--image", image, "--threads", str(threads),
              "--runs", str(METHOD_RUNS), "--slow-runs", str(METHOD_SLOW_RUNS)]
    ours = run_json([BENCH, "methods", *common])
    theirs = run_json([sys.executable, os.path.join(ROOT, "bench", "baseline.py"), "--methods",
                       *common])
    return {"ours": ours, "pytorch_grad_cam": theirs}


def faithfulness_scores(weights, image, threads):
    """Grad-CAM at layer4 with each faithfulness score alone, and method=auto, top-1 class,
    batch 1: ours in one process (gradcam-bench scores: interleaved rounds with a plain
    Grad-CAM explanation and our prediction), then pytorch-grad-cam's ROADCombined and
    CamMultImageConfidenceChange on its Grad-CAM map in another (baseline.py --scores),
    same weights, image and threads, the same run counts."""
    common = ["--weights", weights, "--image", image, "--threads", str(threads),
              "--runs", str(SCORE_RUNS), "--slow-runs", str(SCORE_SLOW_RUNS)]
    ours = run_json([BENCH, "scores", *common,
                     "--auto-road-runs", str(SCORE_AUTO_ROAD_RUNS)])
    theirs = run_json([sys.executable, os.path.join(ROOT, "bench", "baseline.py"), "--scores",
                       *common])
    return {"ours": ours, "pytorch_grad_cam": theirs}


def exported_models(weights, image, threads):
    """Step 11. Per architecture: the file exported with seeded weights (bench/exported.py,
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



# Concurrency 1 over HTTP against the explanation in process, back to back and with the
# server idle between requests (each request, on both sides, after a pause).
IDLE_PAUSES_MS = [0, 200]
IDLE_ROUNDS = 2 if QUICK else 4
IDLE_HTTP_DURATION = 2.0 if QUICK else 5.0
IDLE_IN_PROCESS_RUNS = 8 if QUICK else 20
IDLE_CPU_S = 3.0 if QUICK else 10.0


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


def run_all():
    """Every step in order (bench/run.py lists them): the figures bench/results.json keeps."""
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
    log(f"scores: Grad-CAM with each faithfulness score and method=auto, ours and "
        f"pytorch-grad-cam's ROADCombined ({SCORE_RUNS} rounds, {SCORE_SLOW_RUNS} runs of "
        f"ROAD, {SCORE_AUTO_ROAD_RUNS} of auto_score=road: ~2 min)")
    results["scores"] = faithfulness_scores(weights, img224, threads)
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

    return results
