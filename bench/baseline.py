"""Python baseline for `make bench`: pytorch-grad-cam, plain PyTorch and ONNX Runtime on the
same weights, the same input image and the same thread count as the Rust engine benchmark.

Measures, batch 1, 224x224, after warm-up:
  gradcam   GradCAM(model, target_layers=[model.layer4[-1]])(input_tensor=x), targets=None
            (its top-1 class), i.e. forward + full autograd backward + its map post-processing
  forward   model(x) under torch.no_grad(), eval mode: PyTorch's eager forward-only prediction
  ort       ONNX Runtime (CPU provider, all graph optimisations, intra-op threads = N, inter-op
            1) on the same model exported here with torch.onnx.export: its plain forward
  ort_cam   the same session with layer4's activation as a second output, and the layer4
            Grad-CAM map computed from it in NumPy: ReLU(fc.weight[c] . A) / (h * w), c the
            top-1 class. For a ResNet that is exactly Grad-CAM at layer4 (the gradient of the
            score with respect to A is fc.weight[c] / (h * w) at every position), so a user
            gets that explanation for the price of ORT's forward.

Usage: python baseline.py --weights W.safetensors --image IMG.jpg --threads N [--runs R]
                          [--onnx OUT.onnx]
       python baseline.py ... --methods [--slow-runs S]
       (every pytorch-grad-cam method at layer4[-1], its top-1 class, with its default
       settings: R rounds of the one-pass methods in rotated order, S runs each of
       AblationCAM and ScoreCAM, for the methods table of `make bench`)
       python baseline.py ... --scores [--slow-runs S]
       (faithfulness scores, issue 23: on the layer4 Grad-CAM map of the top-1 class,
       ROADCombined(percentiles=[20, 40, 60, 80]) S times and CamMultImageConfidenceChange
       and the GradCAM call itself R times, interleaved, for the scores table)
       python baseline.py ... --forward-loop [--runtime torch|onnxruntime|onnxruntime-cam]
       (forward-only on request, for bench/run.py's paired rounds: each stdin line
       "1 RUNS" is answered by one JSON line of latencies)
The ONNX file (default: the weights' path with .onnx) is exported when missing or older than
the weights; its outputs are checked against PyTorch's.
Prints one JSON document on stdout.
"""
import argparse
import json
import os
import sys
import time

# pytorch-grad-cam's progress bars (AblationCAM, ScoreCAM) on stderr: tqdm reads this
# when it is first imported, which torch does.
os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from pytorch_grad_cam import GradCAM  # noqa: E402

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def summarise(values):
    v = np.asarray(values, dtype=np.float64)
    return {
        "n": int(v.size),
        "mean": float(v.mean()),
        "min": float(v.min()),
        "p50": float(np.percentile(v, 50)),
        "p90": float(np.percentile(v, 90)),
        "p99": float(np.percentile(v, 99)),
        "max": float(v.max()),
    }


def load_model(path):
    model = torchvision.models.resnet50(weights=None)
    missing, unexpected = model.load_state_dict(load_file(path), strict=False)
    # The Rust side does not write the batch-norm step counters; inference does not use them.
    bad = [k for k in missing if not k.endswith("num_batches_tracked")]
    if bad or unexpected:
        raise SystemExit(f"weights mismatch: missing {bad[:3]}, unexpected {unexpected[:3]}")
    return model.eval()


def load_input(path):
    rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
    if rgb.shape[:2] != (224, 224):
        raise SystemExit(f"{path}: expected a 224x224 image, got {rgb.shape[1]}x{rgb.shape[0]}")
    x = (rgb - MEAN) / STD
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None]


class TwoOutputs(torch.nn.Module):
    """The ResNet with layer4's activation as a second output (for the layer4 map)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        m = self.model
        x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
        a = m.layer4(m.layer3(m.layer2(m.layer1(x))))
        return m.fc(torch.flatten(m.avgpool(a), 1)), a


def onnx_paths(weights, onnx):
    base = onnx or (weights.rsplit(".", 1)[0] + ".onnx")
    return base, base[: -len(".onnx")] + "-layer4.onnx"


def export_onnx(model, x, weights, onnx):
    """Exports the model (and its two-output variant) with torch.onnx.export, unless files
    newer than the weights are there already. Returns the two paths."""
    import os
    plain, cam = onnx_paths(weights, onnx)
    for path, module, outputs in ((plain, model, ["logits"]),
                                  (cam, TwoOutputs(model).eval(), ["logits", "layer4"])):
        if os.path.exists(path) and os.path.getmtime(path) >= os.path.getmtime(weights):
            continue
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            torch.onnx.export(module, x, path + ".tmp", dynamo=False, opset_version=17,
                              input_names=["input"], output_names=outputs)
        os.replace(path + ".tmp", path)
    return plain, cam


def ort_session(path, threads):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def ort_runners(plain, x, fc_weight, threads):
    """ORT's plain forward and its layer4 Grad-CAM (forward with the activation as a second
    output, then the map in NumPy), as two callables."""
    plain_path, cam_path = plain
    sess = ort_session(plain_path, threads)
    cam_sess = ort_session(cam_path, threads)
    feed = {"input": x.numpy()}
    w = fc_weight.detach().numpy()

    def forward():
        return sess.run(None, feed)[0]

    def cam():
        logits, a = cam_sess.run(None, feed)
        c = int(logits[0].argmax())
        h, wd = a.shape[2], a.shape[3]
        return np.maximum(np.tensordot(w[c], a[0], axes=1), 0.0) / (h * wd)

    return forward, cam


def timed(fn, runs, warmup):
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1e3)
    return out


def raw_layer4_cam(model, x):
    """Grad-CAM at layer4 by autograd, before any scaling: ReLU(sum_k mean(dy/dA_k) A_k)."""
    store = {}
    handle = model.layer4.register_forward_hook(lambda m, i, o: store.update(a=o))
    try:
        logits = model(x)
        a = store["a"]
        c = int(logits[0].argmax())
        (grad,) = torch.autograd.grad(logits[0, c], a)
        weights = grad.mean(dim=(2, 3), keepdim=True)
        return torch.relu((weights * a).sum(dim=1))[0].detach().numpy()
    finally:
        handle.remove()


# The API's method names and pytorch-grad-cam's classes (src/cam/method.rs).
METHODS = {
    "gradcam": "GradCAM", "hirescam": "HiResCAM", "gradcam-elementwise": "GradCAMElementWise",
    "gradcam-plusplus": "GradCAMPlusPlus", "xgradcam": "XGradCAM", "layercam": "LayerCAM",
    "eigencam": "EigenCAM", "eigengradcam": "EigenGradCAM", "ablationcam": "AblationCAM",
    "scorecam": "ScoreCAM", "fem": "FEM", "randomcam": "RandomCAM", "finercam": "FinerCAM",
    "shapleycam": "ShapleyCAM", "refinecam": "RefineCAM", "kpcacam": "KPCA_CAM",
    "fullgrad": "FullGrad", "sobelcam": "sobel_cam",
    "guided-backprop": "GuidedBackpropReLUModel", "guided-gradcam": "GuidedGradCAM",
    "sess": "SESS", "dff": "DeepFeatureFactorization",
}
# FullGrad min-max scales and resizes every channel of every batch norm (26,560 maps of
# 224 x 224 on a ResNet-50): seconds a call, so timed like the per-channel methods.
# SESS explains 122 windows of 12 scales with its base method.
SLOW = ("ablationcam", "scorecam", "fullgrad", "sess")


def methods_table(weights, x, runs, slow_runs):
    """p50 of each method's `cam(input_tensor=x, targets=None)` (its top-1 class), with the
    class's default batch sizes, as a user would call it. sobel_cam is a function of the
    8-bit image, not a CAM: timed with the prediction that the server's answer carries."""
    import pytorch_grad_cam
    from pytorch_grad_cam.sobel_cam import sobel_cam

    rgb = np.uint8(np.clip((x[0].numpy().transpose(1, 2, 0) * STD + MEAN) * 255 + 0.5, 0, 255))

    def make(cls):
        # A model each: every CAM object hooks the layer of the model it wraps, and all
        # hooks on one model would run on every method's passes.
        model = load_model(weights)
        if cls == "sobel_cam":
            def edges(input_tensor, targets):
                with torch.no_grad():
                    model(input_tensor)
                return sobel_cam(rgb)
            return edges
        if cls == "GuidedBackpropReLUModel":
            guided = pytorch_grad_cam.GuidedBackpropReLUModel(model=model, device="cpu")
            return lambda input_tensor, targets: guided(input_tensor.clone(), None)
        if cls == "GuidedGradCAM":
            # pytorch-grad-cam's cam.py: GradCAM's map times guided backpropagation's.
            guided = pytorch_grad_cam.GuidedBackpropReLUModel(model=model, device="cpu")
            cam = pytorch_grad_cam.GradCAM(model=model, target_layers=[model.layer4[-1]])

            def guided_gradcam(input_tensor, targets):
                mask = cam(input_tensor=input_tensor, targets=targets)[0]
                return np.stack([mask] * 3, axis=-1) * guided(input_tensor.clone(), None)
            return guided_gradcam
        if cls == "DeepFeatureFactorization":
            # run_dff_on_image's: five concepts, the classifier on each.
            dff = pytorch_grad_cam.DeepFeatureFactorization(
                model=model, target_layer=model.layer4[-1], computation_on_concepts=model.fc)
            return lambda input_tensor, targets: dff(input_tensor, 5)
        # FullGrad takes every bias layer, and warns when given a layer.
        layers = [] if cls == "FullGrad" else [model.layer4[-1]]
        return getattr(pytorch_grad_cam, cls)(model=model, target_layers=layers)

    cams = {name: make(cls) for name, cls in METHODS.items()}
    fast = [n for n in METHODS if n not in SLOW]
    for name in fast:
        timed(lambda: cams[name](input_tensor=x, targets=None), 1, 2)
    times = {n: [] for n in METHODS}
    for i in range(runs):
        for step in range(len(fast)):
            name = fast[(i + step) % len(fast)]
            times[name] += timed(lambda: cams[name](input_tensor=x, targets=None), 1, 0)
    for name in SLOW:
        print(f"baseline: {METHODS[name]}, {slow_runs} runs", file=sys.stderr, flush=True)
        # No warm-up run: the rounds above warmed the model, and one run is 2048 passes.
        times[name] = timed(lambda: cams[name](input_tensor=x, targets=None), slow_runs, 0)
    return {name: summarise(t) for name, t in times.items()}


# ROAD's percentiles: ARCC's and the service's (src/faithfulness/mod.rs,
# DEFAULT_PERCENTILES); ROADCombined's own default is 10, 20, ..., 90.
ROAD_PERCENTILES = [20, 40, 60, 80]


def due(round_index, runs, rounds):
    """Whether something timed `runs` times in `rounds` rounds runs in this one: spread
    evenly from the first round, as gradcam-bench scores does."""
    return -(-round_index * runs // rounds) < -(-(round_index + 1) * runs // rounds)


def scores_table(weights, x, runs, slow_runs):
    """p50 of pytorch-grad-cam 1.5.7's ROADCombined and CamMultImageConfidenceChange on
    the layer4 Grad-CAM map of the top-1 class, called as its documentation shows
    (`metric(input_tensor, grayscale_cams, targets, model)`), and of the GradCAM call that
    makes the map. The metrics get a model of their own without GradCAM's hooks (under
    no_grad the hooks would only copy the activation). ROADCombined's imputer keeps its
    default noise (0.01), as our default seed keeps ours."""
    from pytorch_grad_cam.metrics.cam_mult_image import CamMultImageConfidenceChange
    from pytorch_grad_cam.metrics.road import ROADCombined
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = load_model(weights)
    plain = load_model(weights)
    with torch.no_grad():
        top1 = int(plain(x)[0].argmax())
    targets = [ClassifierOutputTarget(top1)]
    cam = GradCAM(model=model, target_layers=[model.layer4[-1]])
    cams = cam(input_tensor=x, targets=targets)
    road = ROADCombined(percentiles=ROAD_PERCENTILES)
    confidence = CamMultImageConfidenceChange()
    columns = {
        "gradcam": (lambda: cam(input_tensor=x, targets=targets), runs),
        "road": (lambda: road(x, cams, targets, plain), slow_runs),
        "confidence_change": (lambda: confidence(x, cams, targets, plain), runs),
    }
    values = {"road": float(np.asarray(road(x, cams, targets, plain)).ravel()[0]),
              "confidence_change": float(np.asarray(
                  confidence(x, cams, targets, plain)).ravel()[0])}
    for name, (fn, n) in columns.items():
        timed(fn, 0, 2 if n >= runs else 1)
    names = list(columns)
    rounds = max(n for _, n in columns.values())
    times = {n: [] for n in names}
    for i in range(rounds):
        for step in range(len(names)):
            name = names[(i + step) % len(names)]
            fn, n = columns[name]
            if due(i, n, rounds):
                times[name] += timed(fn, 1, 0)
    print(f"baseline: scores, ROADCombined p50 {np.median(times['road']):.0f} ms",
          file=sys.stderr, flush=True)
    return {"top1": top1, "percentiles": ROAD_PERCENTILES,
            "classes": {"road": "ROADCombined",
                        "confidence_change": "CamMultImageConfidenceChange",
                        "gradcam": "GradCAM"},
            "values": values,
            "ms": {name: summarise(t) for name, t in times.items()}}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--weights", required=True)
    p.add_argument("--image", required=True)
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--runs", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--forward-loop", action="store_true")
    p.add_argument("--runtime", choices=["torch", "onnxruntime", "onnxruntime-cam"],
                   default="torch", help="what --forward-loop runs")
    p.add_argument("--onnx", help="the exported model (default: next to the weights)")
    p.add_argument("--methods", action="store_true", help="time every CAM method")
    p.add_argument("--scores", action="store_true",
                   help="time ROADCombined and CamMultImageConfidenceChange")
    p.add_argument("--slow-runs", type=int, default=3,
                   help="runs of AblationCAM and ScoreCAM with --methods, of ROADCombined "
                        "with --scores")
    a = p.parse_args()

    torch.set_num_threads(a.threads)
    if a.methods:
        x = load_input(a.image)
        print(json.dumps({
            "grad_cam": __import__("importlib.metadata").metadata.version("grad-cam"),
            "threads": torch.get_num_threads(), "runs": a.runs, "slow_runs": a.slow_runs,
            "methods": methods_table(a.weights, x, a.runs, a.slow_runs),
        }, indent=2))
        return
    if a.scores:
        x = load_input(a.image)
        print(json.dumps({
            "grad_cam": __import__("importlib.metadata").metadata.version("grad-cam"),
            "threads": torch.get_num_threads(), "runs": a.runs, "slow_runs": a.slow_runs,
            **scores_table(a.weights, x, a.runs, a.slow_runs),
        }, indent=2))
        return
    # Two copies: GradCAM hooks the model it wraps, and the forward-only figure is of a model
    # without hooks, as a plain prediction service would run it.
    plain = load_model(a.weights)
    x = load_input(a.image)

    def forward():
        with torch.no_grad():
            return plain(x)

    onnx = export_onnx(plain, x, a.weights, a.onnx)
    ort_forward, ort_cam = ort_runners(onnx, x, plain.fc.weight, a.threads)

    if a.forward_loop:
        run = {"torch": forward, "onnxruntime": ort_forward, "onnxruntime-cam": ort_cam}[a.runtime]
        print(json.dumps({"threads": torch.get_num_threads()}), flush=True)
        for line in sys.stdin:
            batch, runs = map(int, line.split())
            if batch != 1:
                raise SystemExit(f"only batch 1 is measured here, got {line!r}")
            print(json.dumps({"ms": timed(run, runs, 0)}), flush=True)
        return

    # ORT answers what PyTorch answers, and its layer4 map is pytorch-grad-cam's before
    # the min-max scaling.
    with torch.no_grad():
        reference = plain(x).numpy()
    ort_diff = float(np.abs(ort_forward() - reference).max())

    model = load_model(a.weights)
    cam = GradCAM(model=model, target_layers=[model.layer4[-1]])

    def gradcam():
        return cam(input_tensor=x, targets=None)

    ort_map = ort_cam()
    ref_map = raw_layer4_cam(plain, x)
    cam_diff = float(np.abs(ort_map - ref_map).max())

    # Interleaved like the Rust side: no measurement always runs after the same one.
    steps = [forward, gradcam, ort_forward, ort_cam]
    for _ in range(a.warmup):
        for fn in steps:
            fn()
    times = [[] for _ in steps]
    for i in range(a.runs):
        for step in range(len(steps)):
            k = (i + step) % len(steps)
            times[k] += timed(steps[k], 1, 0)
    f, g, o, oc = (summarise(t) for t in times)
    import onnxruntime
    print(json.dumps({
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "grad_cam": __import__("importlib.metadata").metadata.version("grad-cam"),
        "threads": torch.get_num_threads(),
        "runs": a.runs,
        "warmup": a.warmup,
        "gradcam_ms": g,
        # Per second from the median latency, as the Rust side computes it.
        "gradcam_per_s": 1e3 / g["p50"],
        "forward_ms": f,
        "forward_per_s": 1e3 / f["p50"],
        "onnxruntime": onnxruntime.__version__,
        "ort_forward_ms": o,
        "ort_cam_ms": oc,
        "ort_max_abs_diff": ort_diff,
        "ort_cam_max_abs_diff": cam_diff,
        "onnx": onnx[0],
    }, indent=2))


if __name__ == "__main__":
    main()
