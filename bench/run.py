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
 10. scores   faithfulness scores (issue 23) on the layer4 Grad-CAM map: ours (gradcam-bench
              scores: Grad-CAM with each score alone and method=auto, against a plain
              Grad-CAM explanation and our prediction in the same rounds) and
              pytorch-grad-cam's ROADCombined and CamMultImageConfidenceChange
              (baseline.py --scores)
 11. exported models exported by gradcam_export (efficientnet_b0, convnext_tiny, vit_b_16;
              bench/exported.py): Grad-CAM over HTTP at concurrency 1 against
              pytorch-grad-cam in process on the same model and threads, measured in
              alternation; the explanation in process against the file's own prediction
              (gradcam-bench exported); the ResNet-50 of step 1 exported, against the native
              path
The code: bench/harness.py (the runners: processes, servers, loops, machine facts),
bench/steps.py (each step, returning data), bench/goals.py (the goals as data, judged
against the run's own spread), bench/report.py (BENCHMARKS.md and the plots from
bench/results.json, measuring nothing); hand measurements are in bench/measured-by-hand.md.
Scratch files go to target/bench/; results to bench/results.json, plots to bench/*.png,
the report to BENCHMARKS.md. BENCH_QUICK=1 shortens every step (for trying the script out);
`--report-only` re-renders BENCHMARKS.md and the plots from bench/results.json; `--only
idle|ort|baseline|methods|scores|exported` runs one part alone and prints its figures (BENCH_THREADS:
threads).
"""
import json
import os
import sys

import steps
from harness import BENCH, ROOT, SCRATCH, log, machine, run_json
from report import write_outputs


def phone_only():
    """`bench/run.py --phone-only`: step 7 alone, merged into the last full run's
    bench/results.json (which keeps its own figures) and BENCHMARKS.md."""
    os.makedirs(SCRATCH, exist_ok=True)
    log("assets")
    assets = run_json([BENCH, "assets", "--out", SCRATCH])
    img224, img1080 = (i["path"] for i in assets["images"])
    log("phone photos")
    result = steps.phone(assets["weights"], img224, img1080, assets["phone"]["path"])
    result["machine"] = machine()
    result["photo"] = assets["phone"]
    path = os.path.join(ROOT, "bench", "results.json")
    with open(path) as f:
        results = json.load(f)
    results["phone"] = result
    with open(path, "w") as f:
        json.dump(results, f, indent=1)
    write_outputs(results)


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
            "idle": lambda: steps.idle_http(weights, img224),
            "ort": lambda: {k: steps.paired_latency(weights, img224, threads, runtime=k)
                            for k in ("onnxruntime", "onnxruntime-cam")},
            "methods": lambda: steps.cam_methods(weights, img224, threads),
            "scores": lambda: steps.faithfulness_scores(weights, img224, threads),
            "exported": lambda: steps.exported_models(weights, img224, threads),
            "baseline": lambda: run_json([sys.executable,
                                          os.path.join(ROOT, "bench", "baseline.py"),
                                          "--weights", weights, "--image", img224,
                                          "--threads", str(threads),
                                          "--runs", str(steps.BASELINE_RUNS)]),
        }
        if sys.argv[2] not in parts:
            raise SystemExit(f"--only takes one of {', '.join(parts)}")
        print(json.dumps({"machine": machine(), sys.argv[2]: parts[sys.argv[2]]()}, indent=1))
        return
    results = steps.run_all()
    with open(os.path.join(ROOT, "bench", "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    write_outputs(results)


if __name__ == "__main__":
    main()
