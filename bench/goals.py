"""The goals `make bench` checks, as data: each one is a measured value, the side of a
limit it must be on, and how much the run's own figures spread. Read from
bench/results.json only (`goals(results)`); the report prints them, nothing here measures.

A miss is judged against the run's own spread, as pyperf judges a difference by its
significance rather than by a fixed margin: when the limit lies within the value's
uncertainty in this run (half the range of the rounds' or sessions' ratios; for a ratio of
two timings, twice the standard error of their medians, estimated from each timing's p50,
p90 and run count), the verdict says the run cannot tell, rather than a fixed 3 % deciding.
"""
import math
import operator
import statistics
from dataclasses import dataclass

# The comparisons a goal may ask for, by the text the report prints.
OPERATORS = {"<=": operator.le, ">=": operator.ge, ">": operator.gt}


@dataclass
class Goal:
    name: str
    # The two measured values the ratio comes from, as the report prints them.
    figure: str
    value: float
    op: str
    limit: float
    # The value's relative spread in this run (0.05: +-5 %), None where it has none (a
    # byte count, a single run).
    spread: float = None
    # A timing from a machine too busy to trust (the phone step records its load).
    busy: bool = False

    @property
    def met(self):
        return OPERATORS[self.op](self.value, self.limit)

    @property
    def within_spread(self):
        """A miss by less than the run's own spread: the run cannot tell."""
        if self.met or self.spread is None:
            return False
        return abs(self.value - self.limit) <= self.spread * abs(self.value)

    @property
    def wanted(self):
        return f"{self.op} {self.limit:g}"

    @property
    def verdict(self):
        if self.met:
            return "PASS"
        return "NOISE" if self.within_spread else "MISS"

    @property
    def title(self):
        if self.busy and not self.name.startswith("Answer"):
            return f"{self.name} [busy machine: not trusted]"
        return self.name


def median_error(summary):
    """The relative standard error of a timing's median, from its summary: sigma read off
    the p50 to p90 distance (1.28 sigma for a normal spread), times 1.25 / sqrt(n); None
    where the summary lacks p50, p90 or n."""
    if not isinstance(summary, dict) or not summary.get("p50") or not summary.get("n"):
        return None
    if "p90" not in summary:
        return None
    sigma = (summary["p90"] - summary["p50"]) / 1.2816
    return 1.2533 * sigma / math.sqrt(summary["n"]) / summary["p50"]


def ratio_spread(*summaries):
    """The uncertainty of a ratio of independent timings' medians: twice their standard
    errors added in quadrature (about 95 %)."""
    errors = [median_error(s) for s in summaries]
    if any(e is None for e in errors):
        return None
    return 2 * math.sqrt(sum(e * e for e in errors))


def rounds_spread(ratios):
    """The spread of a ratio measured in several rounds or sessions: half their range,
    relative to their median."""
    ratios = list(ratios)
    if len(ratios) < 2:
        return None
    return (max(ratios) - min(ratios)) / 2 / statistics.median(ratios)


def engine_config(results, fold, onednn):
    return next(c for c in results["engine"]["configs"]
                if c["fold_batch_norm"] == fold and c["onednn_weights"] == onednn)


def engine_default(results):
    return engine_config(results, True, True)


def in_process_throughput(results):
    """The engine's best images/s, in process: batch 1 or batch 4 (the server's max_batch)."""
    c = engine_default(results)
    return max(c["batch1_images_per_s"], c["batch4_images_per_s"])


def engine_goals(results):
    """Issue 2's goals: the explanation's cost against a prediction and pytorch-grad-cam,
    and the server against the engine (paired)."""
    on = engine_default(results)
    eng = results["engine"]
    base = results["baseline"]
    out = [Goal("Explanation / prediction latency, in process (p50)",
                f"{on['explain_ms']['p50']:.1f} / {on['predict_ms']['p50']:.1f} ms",
                on["explain_ms"]["p50"] / on["predict_ms"]["p50"], "<=", 1.10,
                ratio_spread(on["explain_ms"], on["predict_ms"]))]
    # Earlier layers: the gradient runs back through the blocks after the layer.
    layers = {l["layer"]: l for l in eng.get("layers", [])}
    for name, limit in (("layer4", 1.10), ("layer3", 1.35)):
        if name in layers:
            l = layers[name]
            out.append(Goal(f"Explanation at {name} / prediction latency, in process (p50)",
                            f"{l['explain_ms']['p50']:.1f} / {l['predict_ms']['p50']:.1f} ms",
                            l["ratio_p50"], "<=", limit,
                            ratio_spread(l["explain_ms"], l["predict_ms"])))
    ours_per_s = on["batch1_images_per_s"]
    out.append(Goal("Our explanations/s / pytorch-grad-cam's",
                    f"{ours_per_s:.2f} / {base['gradcam_per_s']:.2f} per s",
                    ours_per_s / base["gradcam_per_s"], ">=", 2.5,
                    ratio_spread(on["explain_ms"], base.get("gradcam_ms"))))
    # The ratios between two programs come from the paired rounds (step 6).
    paired = results["paired"]
    lat = paired["latency"]
    mid = lat["median_session"]
    out.append(Goal("Our explanation latency / PyTorch eager forward-only (p50, paired)",
                    f"{mid['ours_p50_ms']:.1f} / {mid['torch_p50_ms']:.1f} ms",
                    lat["ratio"], "<=", 0.9,
                    rounds_spread(s["ratio"] for s in lat["sessions"])))
    for label, h in paired["http"].items():
        out.append(Goal(f"HTTP throughput at concurrency 8 ({label} JPEG) / engine in process "
                        "(paired)", f"{h['http']:.2f} / {h['in_process']:.2f} per s",
                        h["ratio"], ">=", 0.9, rounds_spread(x["ratio"] for x in h["rounds"])))
    return out


def phone_goals(results):
    """Issue 14, goal 3: phone photos."""
    p = results.get("phone")
    if not p:
        return []
    m = p.get("machine", results["machine"])
    # A timing verdict from a busy machine is no verdict (the answer's size does not
    # depend on it).
    busy = m["load_before"][0] > m["nproc"]
    mid = sorted(p["rounds"], key=lambda x: x["ratio"])[len(p["rounds"]) // 2]
    size = p["answer_bytes"]
    out = [
        Goal("4032x3024 JPEG / 224x224 JPEG, end-to-end p50 over HTTP at concurrency 1 "
             "(paired)", f"{mid['p50_phone']:.1f} / {mid['p50_224']:.1f} ms", p["ratio"],
             "<=", 1.5, rounds_spread(x["ratio"] for x in p["rounds"]), busy),
        Goal("Answer for the 4032x3024 JPEG, shipped defaults (MB)", f"{size:,} bytes",
             size / 1e6, "<=", 1.5, None, busy),
        Goal("Server CPU outside the network / the network's, per 4032x3024 request",
             "threads other than model-worker-* / model-worker-*",
             p["outside_over_network_cpu"], "<=", 0.25, None, busy),
    ]
    h = p["http_1080_c8"]
    if h != results.get("paired", {}).get("http", {}).get("1920x1080"):
        out.append(Goal("HTTP throughput at concurrency 8 (1920x1080 JPEG) / engine in process "
                        "(paired, phone step)", f"{h['http']:.2f} / {h['in_process']:.2f} per s",
                        h["ratio"], ">=", 0.9,
                        rounds_spread(x["ratio"] for x in h.get("rounds", [])), busy))
    return out


def peer_and_idle_goals(results):
    """Issue 14's goals 1 and 2, from the paired rounds (absent from older results)."""
    out = []
    paired = results["paired"]
    if "ort" in paired:
        o = paired["ort"]
        mid = o["median_session"]
        out.append(Goal("Our explanation at layer4 (batch 1, fp32, in process) / ONNX Runtime "
                        "forward (p50, paired)",
                        f"{mid['ours_p50_ms']:.1f} / {mid['torch_p50_ms']:.1f} ms",
                        o["ratio"], "<=", 1.0, rounds_spread(s["ratio"] for s in o["sessions"])))
    for pause, v in results.get("idle_http", {}).get("pauses", {}).items():
        how = "back to back" if pause == "0" else f"{pause} ms apart"
        out.append(Goal(f"HTTP at concurrency 1 (224x224, end to end) / explanation in process "
                        f"(p50, {how}, paired)",
                        f"{v['http_p50_ms']:.1f} / {v['in_process_p50_ms']:.1f} ms",
                        v["ratio"], "<=", 1.10,
                        rounds_spread(x["ratio"] for x in v.get("rounds", []))))
    return out


# ---------------------------------------------------------------------------------------
# CAM methods (issue 11)

# Methods whose cost is a pass per channel (or batch of channels) of the layer.
SLOW_METHODS = ("ablationcam", "scorecam")
# Methods that go back to the input, not to layer4: no one-pass goal at layer4 for them.
WHOLE_NETWORK_METHODS = ("fullgrad", "guided-backprop", "guided-gradcam")
# Methods that cost more than their passes by design: SESS explains 122 windows, DFF
# factorizes the activations (NMF): reported, no one-pass goal.
MORE_THAN_ONE_PASS = ("sess", "dff")


def method_rows(m):
    """(method, ours p50, ours / our prediction, theirs p50, theirs / ours) per method."""
    ours, theirs = m["ours"], m["pytorch_grad_cam"]
    predict = ours["prediction_ms"]["p50"]
    rows = []
    for name, o in ours["methods"].items():
        t = theirs["methods"][name]["p50"]
        rows.append((name, o["p50"], o["p50"] / predict, t, t / o["p50"]))
    return rows


def method_goals(results):
    m = results.get("methods")
    if m is None:
        return []
    rows = method_rows(m)
    one_pass = [r for r in rows
                if r[0] not in SLOW_METHODS + WHOLE_NETWORK_METHODS + MORE_THAN_ONE_PASS]
    worst = max(one_pass, key=lambda r: r[2])
    ours = m["ours"]
    predict = ours["prediction_ms"]["p50"]
    out = [Goal(f"Slowest one-pass CAM method at layer4 ({worst[0]}) / our prediction (p50)",
                f"{worst[1]:.1f} / {predict:.1f} ms", worst[2], "<=", 1.10,
                ratio_spread(ours["methods"][worst[0]], ours["prediction_ms"]))]
    by_name = {r[0]: r for r in rows}
    # Issue 11: AblationCAM at least 20 times faster, ScoreCAM faster at all (one run
    # each: no spread).
    for name, op, limit in (("ablationcam", ">=", 20), ("scorecam", ">", 1)):
        r = by_name[name]
        out.append(Goal(f"pytorch-grad-cam's {name} / ours at layer4 (p50)",
                        f"{r[3] / 1e3:.1f} / {r[1] / 1e3:.2f} s", r[4], op, limit))
    return out


# ---------------------------------------------------------------------------------------
# Faithfulness scores (issue 23)

# Our scores in the table's order, and the pytorch-grad-cam class timed for each (None:
# not timed there).
SCORES = ("road", "road_morf", "road_lerf", "confidence_change", "drop_in_confidence",
          "increase_in_confidence", "complexity", "coherency", "arcc")
THEIR_SCORES = {"road": "road", "confidence_change": "confidence_change"}


def score_rows(s):
    """Per score: (score, ours: the score alone p50 ms (`Scored::scores_ms`), that in
    our predictions (p50s), ours: Grad-CAM + the score p50 ms, runs, pytorch-grad-cam's p50
    ms or None, theirs / our score alone or None)."""
    ours, theirs = s["ours"], s["pytorch_grad_cam"]
    predict = ours["prediction_ms"]["p50"]
    rows = []
    for name in SCORES:
        c = ours["columns"][name]
        alone = c["score_ms"]["p50"]
        t = theirs["ms"].get(THEIR_SCORES.get(name, ""), {}).get("p50")
        rows.append((name, alone, alone / predict, c["whole_ms"]["p50"], c["whole_ms"]["n"],
                     t, t / alone if t else None))
    return rows


def per_round_ratios(a, b):
    """The ratios of two columns' whole times in each round both ran in."""
    of_b = dict(zip(b["rounds"], b["whole_each_ms"]))
    return [ms / of_b[r] for r, ms in zip(a["rounds"], a["whole_each_ms"]) if r in of_b]


def score_goals(results):
    s = results.get("scores")
    if s is None:
        return []
    cols = s["ours"]["columns"]
    road, their_road = cols["road"]["score_ms"], s["pytorch_grad_cam"]["ms"]["road"]
    auto, gradcam = cols["auto"], cols["gradcam"]
    a50, g50 = auto["whole_ms"]["p50"], gradcam["whole_ms"]["p50"]
    return [
        # Score against score: ROADCombined is given the map, and our road's own cost
        # (scores_ms) leaves out the Grad-CAM pass that made it. Different processes, one
        # after the other: the spread of the two medians.
        Goal("pytorch-grad-cam's ROADCombined / our road score alone (p50, percentiles "
             "20,40,60,80)", f"{their_road['p50'] / 1e3:.2f} / {road['p50'] / 1e3:.2f} s",
             their_road["p50"] / road["p50"], ">=", 5, ratio_spread(their_road, road)),
        Goal("method=auto (auto_score=confidence_change) / one Grad-CAM explanation "
             "(whole, p50)", f"{a50:.1f} / {g50:.1f} ms", a50 / g50, "<=", 6,
             rounds_spread(per_round_ratios(auto, gradcam))),
    ]


def score_reported(results):
    """The scores step's figures without a goal: (what, measured, ratio)."""
    s = results.get("scores")
    if s is None:
        return []
    ours, theirs = s["ours"], s["pytorch_grad_cam"]
    cols = ours["columns"]
    g50 = cols["gradcam"]["whole_ms"]["p50"]
    ar50 = cols["auto_road"]["whole_ms"]["p50"]
    road = cols["road"]["whole_ms"]["p50"]
    t = theirs["ms"]
    their_whole = t["gradcam"]["p50"] + t["road"]["p50"]
    return [
        ("method=auto (auto_score=road) / one Grad-CAM explanation (whole, p50)",
         f"{ar50 / 1e3:.2f} s / {g50:.1f} ms", ar50 / g50),
        ("pytorch-grad-cam's GradCAM call + ROADCombined / our Grad-CAM with road "
         "(whole, sum of their p50s / our p50)",
         f"{their_whole / 1e3:.2f} / {road / 1e3:.2f} s", their_whole / road),
    ]


def exported_goals(results):
    e = results.get("exported")
    if e is None:
        return []
    out = []
    for arch, m in e["models"].items():
        r = m["rounds"][len(m["rounds"]) // 2]
        out.append(Goal(f"{arch} (exported): pytorch-grad-cam in process / our Grad-CAM over "
                        "HTTP (p50, alternating rounds)",
                        f"{r['pytorch_grad_cam_p50_ms']:.1f} / {r['http_p50_ms']:.1f} ms",
                        m["speedup"], ">=", 3,
                        rounds_spread(x["pytorch_grad_cam_p50_ms"] / x["http_p50_ms"]
                                      for x in m["rounds"])))
        g = m["engine"]
        out.append(Goal(f"{arch} (exported): explanation / its prediction, in process (p50)",
                        f"{g['explanation_ms']['p50']:.1f} / {g['prediction_ms']['p50']:.1f} ms",
                        g["ratio"], "<=", 1.15,
                        ratio_spread(g["explanation_ms"], g["prediction_ms"])))
    return out


def trunk_goals(results):
    """Issue 14, goal 1 in the trunk section: fp32 against ONNX Runtime's plain forward."""
    t = results.get("trunk_vs_ort")
    if t is None or "skipped" in t:
        return []
    return [Goal("our layer4 explanation, fp32 / ONNX Runtime's plain forward",
                 "", t["ratio_fp32"], "<=", 1.0)]


def goals(results):
    """Every goal the results can judge, in the report's order (the trunk's is in its own
    section)."""
    return (engine_goals(results) + phone_goals(results) + peer_and_idle_goals(results)
            + method_goals(results) + score_goals(results) + exported_goals(results))
