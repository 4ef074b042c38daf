"""BENCHMARKS.md and the plots from bench/results.json: reads figures, measures nothing
(`bench/run.py --report-only` renders it again from the last run). The goals and their
verdicts come from bench/goals.py; hand measurements live in bench/measured-by-hand.md."""
import os
import statistics
import sys

import goals
from harness import ROOT
from steps import (CONCURRENCY, HTTP_DURATION, HTTP_WARMUP, PHONE_DURATION,
                   PHONE_RUNS)
# Ratios within this of 1.0 are reported as "no measurable difference".
NOISE = 0.03
# Share of the CPU used by other processes during the run above which the report warns.
NOISE_WARN = 0.05



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
    for g in goals.trunk_goals(results):
        w(f"- {verdict(g)} {g.name}: {g.value:.2f} (target {g.wanted})")
    if "ratio_bf16" in t:
        w(f"- bf16 (`precision = \"bf16\"`) / ONNX Runtime fp32: {t['ratio_bf16']:.2f} "
          "(reported, no target)\n")
    else:
        w(f"- bf16 not measured: {t['bf16_skipped']}\n")


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
    for name, o, r, t, speed in goals.method_rows(m):
        w(f"| {name} | {o:.1f} | {r:.2f} | {t:.1f} | {speed:.1f} |")
    w(f"| (our prediction) | {ours['prediction_ms']['p50']:.1f} | 1.00 | | |")
    w("")
    w("AblationCAM here reruns only what follows the layer (at layer4 the pooling and the "
      "classifier) for each ablated channel; pytorch-grad-cam reruns the whole network for "
      "every batch of 32 channels. ScoreCAM is a whole forward per channel (2048 at layer4) "
      "on both sides: ours batches them through the fast path.\n")


def scores_section(results, w):
    s = results.get("scores")
    if s is None:
        return
    ours, theirs = s["ours"], s["pytorch_grad_cam"]
    cols = ours["columns"]
    predict = ours["prediction_ms"]["p50"]
    pct = ",".join(f"{p:g}" for p in ours["percentiles"])
    w("## Faithfulness scores at layer4\n")
    w(f"Grad-CAM of the top-1 class at layer4, batch 1, 224x224, {ours['threads']} threads "
      "each side, same weights and image. Ours: `gradcam-bench scores`, each column an "
      "explanation through `engine::run_network` with a request's options (`scores=NAME`; "
      "`method=auto`, with `auto_score=road` in the last row), "
      f"{ours['rounds']} rounds in rotated order: our prediction, a plain Grad-CAM "
      "explanation, the scores that rerun the network once or not at all and method=auto in "
      f"every round; road, road_morf, road_lerf and arcc in {ours['slow_runs']} of them, "
      f"auto_score=road in {ours['auto_road_runs']}. ROAD's percentiles {pct}, its "
      "imputation noise seeded (`seed` 0). \"The score alone\" is `Scored::scores_ms` (for "
      "method=auto: ranking the candidates), \"whole\" the explanation with it. "
      f"pytorch-grad-cam {theirs['grad_cam']}: `bench/baseline.py --scores`, its metric "
      "classes called on `GradCAM(model, [model.layer4[-1]])(input_tensor=x, "
      "targets=[ClassifierOutputTarget(top1)])`'s map as its documentation shows "
      f"(`ROADCombined(percentiles=[{pct}])`, default noise), the same run counts in "
      "another process right after ours.\n")
    w("| Score | ours: the score alone p50 ms | in our predictions | ours: Grad-CAM + "
      "score p50 ms | runs | pytorch-grad-cam p50 ms | pytorch-grad-cam / ours (score "
      "alone) |")
    w("|---|---|---|---|---|---|---|")
    classes = theirs["classes"]
    for name, alone, preds, whole, n, t, speed in goals.score_rows(s):
        their = (f"{t:.1f} (`{classes[goals.THEIR_SCORES[name]]}`)" if t is not None
                 else "")
        w(f"| {name} | {alone:.1f} | {preds:.1f} | {whole:.1f} | {n} | {their} | "
          + (f"{speed:.1f} |" if speed is not None else "|"))
    for key, label in (("auto", "method=auto (auto_score=confidence_change)"),
                       ("auto_road", "method=auto (auto_score=road)")):
        c = cols[key]
        chose = f", chose {c['chosen']}" if c.get("chosen") else ""
        w(f"| {label}{chose} | {c['score_ms']['p50']:.1f} | "
          f"{c['score_ms']['p50'] / predict:.1f} | {c['whole_ms']['p50']:.1f} | "
          f"{c['whole_ms']['n']} | | |")
    g = cols["gradcam"]
    w(f"| (Grad-CAM alone) | | | {g['whole_ms']['p50']:.1f} | {g['whole_ms']['n']} | "
      f"{theirs['ms']['gradcam']['p50']:.1f} (`GradCAM` call) | |")
    w(f"| (our prediction) | | 1.0 | {predict:.1f} | {ours['prediction_ms']['n']} | | |")
    w("")
    for goal in goals.score_goals(results):
        w(f"- {verdict(goal)} {goal.name}: {goal.figure} = {goal.value:.2f} "
          f"(target {goal.wanted})")
    for what, figure, value in goals.score_reported(results):
        w(f"- {what}: {figure} = {value:.2f} (reported, no target)")
    w("")
    w("ROAD removes the pixels above (MoRF) or below (LeRF) each percentile of the map, "
      "fills them in from their neighbours (a sparse linear solve per image) and reruns the "
      "network: 8 images at 4 percentiles. pytorch-grad-cam solves them one after another "
      "with SciPy and runs the network 16 times, batch 1 (each changed image, and the "
      "original again before each); ours solves them on every core and runs the 8 images "
      "in one batch (any rest one by one), the original's logits taken from the "
      "explanation's own pass. method=auto scores each distinct map of "
      "the one-pass candidates (Grad-CAM, Grad-CAM++, HiResCAM, XGradCAM, Grad-CAM "
      "element-wise, LayerCAM, and EigenCAM and EigenGradCAM where the system's LAPACK is "
      "there), all from one forward and backward pass.\n")


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
    ax.axhline(goals.in_process_throughput(results), color="grey", linestyle=":",
               label="engine in process (best of batch 1, 4)")
    ax.axhline(results["baseline"]["gradcam_per_s"], color="tab:red", linestyle=":",
               label="pytorch-grad-cam in process")
    ax.set_ylim(bottom=0)
    finish(fig, ax, "explanations per second", "throughput", "throughput.png")


def verdict(goal):
    if goal.met:
        return "**PASS**"
    if goal.within_spread:
        return f"**MISS within the run's spread** (+-{goal.spread * 100:.0f} %)"
    return "**MISS**"


def change(new, old, higher_is_better=True, spread=None):
    """How `new` compares with `old`: a difference within `spread` (the run's own, relative;
    `NOISE` where the figures carry none) is no measurable difference."""
    r = new / old
    gain = r - 1 if higher_is_better else 1 - r
    if abs(r - 1) <= (NOISE if spread is None else spread):
        return f"no measurable difference ({(r - 1) * 100:+.1f}%, within noise)"
    return (f"helps ({(r - 1) * 100:+.1f}%)" if gain > 0 else f"hurts ({(r - 1) * 100:+.1f}%)")


def timing_change(new, old):
    """`change` of two timings' p50s, judged against their medians' uncertainty."""
    return change(new["p50"], old["p50"], higher_is_better=False,
                  spread=goals.ratio_spread(new, old))


def report(results):
    m = results["machine"]
    eng = results["engine"]
    on = goals.engine_default(results)
    off = goals.engine_config(results, False, False)
    plain = goals.engine_config(results, True, False)
    base = results["baseline"]
    ours_per_s = on["batch1_images_per_s"]
    inproc = goals.in_process_throughput(results)

    targets = goals.goals(results)
    paired = results["paired"]
    lat = paired["latency"]
    r3 = lat["ratio"]
    verdicts = [f"{g.verdict:5} {g.title}: {g.figure} -> {g.value:.2f} (target {g.wanted})"
                for g in targets]
    phone_lines = phone_section(results)

    cold = results["cold_start"]
    cold_ready = statistics.median(c["ready_s"] for c in cold)
    cold_listen = statistics.median(c["listening_s"] for c in cold)
    mem = results["server_memory"]
    trace = results["memory_trace"]

    L = []
    w = L.append
    w("# Benchmarks\n")
    w("Written by `make bench` (scripts/bench.sh, bench/run.py and its modules, bench/src/main.rs, "
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
    for g in targets:
        w(f"| {g.title} | {g.figure} | {g.value:.2f} | {g.wanted} | {verdict(g)} |")
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
    w("- resident memory along the sweep (MiB): "
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
    scores_section(results, w)
    exported_section(results, w)
    w("## What we tried\n")
    w("Each row was measured in this run; a change within the run's own uncertainty (twice "
      "the standard error of the two medians, from their p50, p90 and run count; "
      f"{NOISE * 100:.0f}% for throughputs, which carry none) is reported as no difference.\n")
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
      f"{timing_change(on['explain_ms'], off['explain_ms'])}; "
      f"prediction {off['predict_ms']['p50']:.1f} -> {plain['predict_ms']['p50']:.1f} ms "
      "(both with plain tensors).")
    w(f"- **Folded weights reordered once into oneDNN's layout** (`onednn_weights`, "
      "`mkldnn_reorder_conv2d_weight` at load, the trunk's convolutions run with their ReLU "
      f"and shortcut add fused in, see below): explanation p50 {plain['explain_ms']['p50']:.1f} ms with plain tensors, "
      f"{on['explain_ms']['p50']:.1f} ms reordered: "
      f"{timing_change(on['explain_ms'], plain['explain_ms'])}; "
      f"batch 4 {plain['batch4_ms']['p50']:.0f} -> {on['batch4_ms']['p50']:.0f} ms "
      f"({timing_change(on['batch4_ms'], plain['batch4_ms'])}). "
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
    w("")
    w("Measured by hand, outside this benchmark (dated, with what was kept and why): "
      "[bench/measured-by-hand.md](bench/measured-by-hand.md).\n")
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


def phone_section(results):
    """Goal 3's section (its goals are in goals.phone_goals)."""
    p = results.get("phone")
    if not p:
        return []
    ip = p["in_process"]
    m = p.get("machine", results["machine"])
    size = p["answer_bytes"]
    h = p["http_1080_c8"]
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
      "levels of 255; libjpeg-turbo's own scaled decode differs as much, see "
      "bench/measured-by-hand.md). A map error of 4.6e-3 is about one level of 255 in the "
      "overlay.\n")
    w("JPEG decoders and encoders tried by hand: bench/measured-by-hand.md.\n")
    return L


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
        w("  Median ratios: "
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
