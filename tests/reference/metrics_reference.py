"""Faithfulness scores (ROAD, confidence change, Complexity, Coherency, ARCC) reference.

Imported by make_reference.py (and runnable alone: `python metrics_reference.py OUT_DIR`,
with make_reference.py's models and images already in OUT_DIR); writes into OUT_DIR:
  metrics.json  {"percentiles": [20, 40, 60, 80], "cases": [...], "noise_study": {...}}:
                per case the architecture, weights, image, layer, method, target (the class
                handed to ClassifierOutputTarget), forced (false: the top-1), the image's
                top-5, the target's logit before any perturbation, where its map is in
                metrics.f32, the thresholds ROAD's masks use (per percentile, MoRF and LeRF:
                the value, its NumPy repr and dtype, and how many pixels stay), and the
                scores, all with the imputer's noise 0: road (ROADCombined), road_morf and
                road_lerf (its two averages), road_morf_each and road_lerf_each (the
                ROADMostRelevantFirst(p) / ROADLeastRelevantFirst(p) behind them),
                confidence_change, drop_in_confidence, increase_in_confidence, complexity,
                coherency and arcc. noise_study: ROADCombined of the first case with the
                default noise (0.01), 20 unseeded runs: the values, their mean and std
                (ddof 1), the seed torch.seed() drew, and the noise-free score beside them.
  metrics.f32   each case's map (224x224 float32, little endian, one after another), as
                `cam(input_tensor=x, targets=[ClassifierOutputTarget(c)])[0]` returns it

As pytorch-grad-cam 1.5.7's metrics compute them (pytorch_grad_cam.metrics.road,
.cam_mult_image, .arcc), on the seeded random resnet50 of make_reference.py at layer4, for
GradCAM, GradCAM++ and EigenCAM on case-0.png and case-1.png, each with the top-1 and a
forced target (the image's third most probable class): 12 cases. Coherency and ARCC take
the same CAM object as their base method; every ROAD average and ARCC's ROAD use the
percentiles above. NoisyLinearImputer's noise is set to 0 through its constructor's
defaults (AveragerAcrossThresholds builds its imputers itself); that it took effect is
checked: ARCC reruns ROADCombined and must give the same scores bit for bit.

ROAD's sparse solves and the forward passes are the slow part, so within this script the
imputer's pure steps (setup_sparse_system, spsolve) and the metrics' forward passes without
gradients are memoised on their inputs' bytes (`Memo`); the masks, the perturbations and the
noise still run every time, and the first case's ARCC bypasses the memo (a genuine second
run, solves and forward passes included). Still about 300 forward passes (160 of them the
noise study's) and 96 solves: 1.5 to 2 minutes on two idle CPU threads, 5 to 8 on a busy one.
"""
import hashlib
import json
import os
import sys
import time
from contextlib import contextmanager

import numpy as np
import torch
from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus
from pytorch_grad_cam.metrics import road
from pytorch_grad_cam.metrics.arcc import ARCC, Coherency, Complexity
from pytorch_grad_cam.metrics.cam_mult_image import (CamMultImageConfidenceChange,
                                                     DropInConfidence, IncreaseInConfidence)
from pytorch_grad_cam.metrics.road import (ROADCombined, ROADLeastRelevantFirst,
                                           ROADMostRelevantFirst)
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

PERCENTILES = [20, 40, 60, 80]
METHODS = {"gradcam": GradCAM, "gradcam-plusplus": GradCAMPlusPlus, "eigencam": EigenCAM}
NOISE_RUNS = 20


@contextmanager
def imputer_noise(noise):
    """NoisyLinearImputer's default noise (its constructor's first default) set to `noise`."""
    init = road.NoisyLinearImputer.__init__
    saved = init.__defaults__
    init.__defaults__ = (noise,) + saved[1:]
    try:
        assert road.NoisyLinearImputer().noise == noise
        yield
    finally:
        init.__defaults__ = saved


def _digest(*arrays):
    h = hashlib.sha1()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.digest()


class Memo:
    """Memoises road.py's `NoisyLinearImputer.setup_sparse_system` and `spsolve` while
    active, and the model's forward passes without gradients (`model(net)` wraps it for the
    metrics): pure functions, keyed on their inputs' bytes. Inside `bypass()` they all run
    for real again."""

    def __init__(self):
        self.setups, self.solves, self.logits = {}, {}, {}
        self.bypassed = False
        self.setup = road.NoisyLinearImputer.setup_sparse_system
        self.spsolve = road.spsolve

    def setup_sparse_system(self, mask, img, weights):
        if self.bypassed:
            return self.setup(mask, img, weights)
        key = _digest(mask, img) + repr(weights).encode()
        if key not in self.setups:
            self.setups[key] = self.setup(mask, img, weights)
        a, b = self.setups[key]
        return a, b.copy()  # (spsolve leaves both alone; the copy is for certainty)

    def solve(self, a, b):
        if self.bypassed:
            return self.spsolve(a, b)
        key = _digest(a.indptr, a.indices, a.data, b)
        if key not in self.solves:
            self.solves[key] = self.spsolve(a, b)
        return self.solves[key].copy()

    def model(self, net):
        def forward(x):
            if self.bypassed or torch.is_grad_enabled():
                return net(x)
            key = _digest(x.detach().cpu().numpy())
            if key not in self.logits:
                self.logits[key] = net(x)
            return self.logits[key].clone()
        return forward

    def clear(self):
        """Forgets the imputations (large); the forward passes' logits stay."""
        self.setups.clear()
        self.solves.clear()

    @contextmanager
    def active(self):
        road.NoisyLinearImputer.setup_sparse_system = staticmethod(self.setup_sparse_system)
        road.spsolve = self.solve
        try:
            yield self
        finally:
            road.NoisyLinearImputer.setup_sparse_system = staticmethod(self.setup)
            road.spsolve = self.spsolve

    @contextmanager
    def bypass(self):
        self.bypassed = True
        try:
            yield
        finally:
            self.bypassed = False


def recorded_road(combined, store):
    """`combined` (a ROADCombined) with its two averages and their per-percentile metrics
    recorded into `store` as it runs: the library's own classes, run once."""
    store.update(morf=[], lerf=[], morf_each=[], lerf_each=[])

    def record(metric, key):
        def run(*args):
            score = metric(*args)
            store[key].append(score)
            return score
        return run

    morf, lerf = combined.morf_averager, combined.lerf_averager
    morf.imputer = lambda p: record(ROADMostRelevantFirst(p), "morf_each")
    lerf.imputer = lambda p: record(ROADLeastRelevantFirst(p), "lerf_each")
    combined.morf_averager = record(morf, "morf")
    combined.lerf_averager = record(lerf, "lerf")
    return combined


def thresholds(grayscale):
    """The thresholds RemoveMostRelevantFirst / RemoveLeastRelevantFirst compute from the
    map (LeRF hands it `1 - mask`, in float32 torch), and how many pixels each keeps.

    NumPy 2.4's np.percentile of these float32 maps returns np.float32, not float64
    (method "linear": a float32 `_lerp` between the two nearest order statistics, its
    weight a Python float). With 224*224 pixels NumPy's virtual index, n*q + (1 - q) - 1
    in float64, comes out whole for p = 20, 40, 60, 80 (10035, 20070, 30105, 40140), so
    each threshold is that order statistic of the map itself; `mask < threshold` then
    compares float32 with float32, and ties at the threshold are removed too."""
    mask = torch.from_numpy(grayscale)
    out = {}
    for order, ranked in (("morf", mask), ("lerf", 1 - mask)):
        values = ranked.cpu().numpy()
        out[order] = []
        for p in PERCENTILES:
            t = np.percentile(values, p)
            out[order].append({"percentile": p, "value": float(t), "repr": repr(t),
                               "dtype": str(t.dtype), "kept": int((ranked < t).sum())})
    return out


def scalar(a):
    """A metric's batch-of-one answer as a plain float."""
    a = np.asarray(a).reshape(-1)
    assert a.size == 1, a.shape
    return float(a[0])


def metrics_reference(out_dir, weights, model, images, to_input):
    """`model`: make_reference's resnet50 (`weights` its file); `images`: RGB uint8 arrays."""
    start = time.perf_counter()
    memo = Memo()
    net = memo.model(model)  # what the metrics run (the CAM objects run `model` itself)
    cases = []
    offset = 0
    first = None
    with memo.active(), open(os.path.join(out_dir, "metrics.f32"), "wb") as blob:
        previous = None
        for image_index in (0, 1):
            _, x = to_input(images[image_index])
            with torch.no_grad():
                logits = model(x)[0]
            top5 = torch.topk(logits, 5).indices.tolist()
            for method, cam_class in METHODS.items():
                cam = cam_class(model=model, target_layers=[model.layer4[-1]])
                for target, forced in ((top5[0], False), (top5[2], True)):
                    t = time.perf_counter()
                    targets = [ClassifierOutputTarget(target)]
                    cams = cam(input_tensor=x, targets=targets)
                    grayscale = cams[0]
                    assert grayscale.shape == (224, 224) and grayscale.dtype == np.float32
                    if previous is None or not np.array_equal(previous, grayscale):
                        memo.clear()  # (memory only: the memo is keyed on the arrays)
                    previous = grayscale
                    with imputer_noise(0.0):
                        scores = {}
                        road_score = recorded_road(ROADCombined(percentiles=PERCENTILES),
                                                   scores)(x, cams, targets, net)
                        arcc = ARCC(base_method=cam, road_percentiles=PERCENTILES)
                        rerun = {}
                        recorded_road(arcc.road, rerun)
                        if not cases:
                            with memo.bypass():
                                arcc_score = arcc(x, cams, targets, net)
                        else:
                            arcc_score = arcc(x, cams, targets, net)
                    # Noise 0 took effect: ARCC's own ROADCombined gives the same, bit for bit.
                    for key in ("morf", "lerf", "morf_each", "lerf_each"):
                        a, b = np.float32(scores[key]), np.float32(rerun[key])
                        assert a.tobytes() == b.tobytes(), (method, target, key, a, b)
                    blob.write(np.ascontiguousarray(grayscale, dtype="<f4").tobytes())
                    case = {
                        "architecture": "resnet50", "weights": weights,
                        "image": f"case-{image_index}.png", "layer": "layer4",
                        "method": method, "target": target, "forced": forced, "top5": top5,
                        "logit": float(logits[target]), "offset": offset,
                        "thresholds": thresholds(grayscale),
                        "road": scalar(road_score),
                        "road_morf": scalar(scores["morf"]),
                        "road_lerf": scalar(scores["lerf"]),
                        "road_morf_each": [scalar(s) for s in scores["morf_each"]],
                        "road_lerf_each": [scalar(s) for s in scores["lerf_each"]],
                        "confidence_change": scalar(
                            CamMultImageConfidenceChange()(x, cams, targets, net)),
                        "drop_in_confidence": scalar(
                            DropInConfidence()(x, cams, targets, net)),
                        "increase_in_confidence": scalar(
                            IncreaseInConfidence()(x, cams, targets, net)),
                        "complexity": scalar(Complexity()(cams)),
                        "coherency": scalar(Coherency()(x, cams, targets, net, cam)),
                        "arcc": scalar(arcc_score),
                    }
                    offset += grayscale.size
                    cases.append(case)
                    if first is None:
                        first = (x, cams, targets, case)
                    print(f"  metrics: {method} case-{image_index} target {target}: "
                          f"road {case['road']:.6g}, arcc {case['arcc']:.6g} "
                          f"({time.perf_counter() - t:.1f} s)")
                cam.activations_and_grads.release()

        # The default noise, unseeded (torch.seed()); the global generator is restored after.
        memo.clear()
        x, cams, targets, case = first
        values = []
        with torch.random.fork_rng(devices=[]):
            seed = torch.seed()
            for _ in range(NOISE_RUNS):
                values.append(scalar(ROADCombined(percentiles=PERCENTILES)(
                    x, cams, targets, net)))
    default_noise = road.NoisyLinearImputer().noise
    noise_study = {
        "method": case["method"], "image": case["image"], "target": case["target"],
        "noise": default_noise, "runs": NOISE_RUNS, "seed": seed, "values": values,
        "mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)), "ddof": 1,
        "noise_free": case["road"],
    }
    assert len(set(values)) > 1, "the default noise changed nothing"
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
        json.dump({"percentiles": PERCENTILES, "cases": cases, "noise_study": noise_study},
                  f, allow_nan=False)
    print(f"reference: {len(cases)} metrics cases and a {NOISE_RUNS}-run noise study "
          f"({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    import make_reference as m
    out = sys.argv[1]
    torch.set_num_threads(2)  # as make_reference.py's main
    with open(os.path.join(out, "reference.json")) as f:
        weights = {e["architecture"]: e["weights"] for e in json.load(f)["models"]}
    metrics_reference(out, weights["resnet50"], m.make_model(), m.make_images(), m.to_input)
