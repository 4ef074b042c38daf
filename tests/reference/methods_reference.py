"""Reference maps of every CAM method, for tests/core/methods_parity.rs.

Imported by make_reference.py (its `methods` step); writes into OUT_DIR, per
architecture (resnet50, resnet18):
  methods-<arch>.json  {"cases": [...]}: per case the architecture, weights, image, method,
                layers, targets (null: top-1), eigen_smooth, aug_smooth, the top-5, and
                per target the explained class, the raw map (one layer without aug_smooth:
                what pytorch-grad-cam hands to scale_cam_image) and where its returned map
                is in methods.f32
  methods-<arch>.f32   the maps `cam(input_tensor, targets)` returns (224x224 float32, little
                endian, one after another)

Models: the seeded random resnet50 and resnet18 of make_reference.py. Every method but
AblationCAM and ScoreCAM on both, at layer4 and layer3, top-1 (case-0.png) and a forced
target (top5[3] of case-1.png), and eigen_smooth (top-1) for the methods it changes; aug_smooth
for GradCAM++, EigenCAM, RandomCAM and ShapleyCAM; RandomCAM with another seed and FinerCAM
with other comparison categories and alpha (the `options` of a case); RefineCAM over one to
three layers with its default base method (GradCAM++) and others; KPCA-CAM with each kernel;
FullGrad (no layer: layers []) top-1, forced, on noise.png, eigen_smooth and aug_smooth;
SobelCAM (no layer either) on three images; guided backpropagation top-1 and forced, Guided
Grad-CAM at layer4 (top-1, forced) and layer3 with eigen_smooth, each with its deprocessed
picture; SESS (122 windows of 12 scales each) on resnet50 at layer4 (top-1, and noise.png
with eigen_smooth) and resnet18 (layer3 forced with LayerCAM as its base, layer4 top-1);
layer3+layer4 together; three targets of one image; every
one-pass method at layer3 on a seeded noise image (noise.png), FEM with a forced target too.
AblationCAM and ScoreCAM rerun the network once per channel (pytorch-grad-cam reruns the
whole model even for AblationCAM): on resnet18 only (512 channels at layer4, 256 at layer3
instead of 2048 and 1024), top-1 at layer4 and the forced target at layer3, to keep
`make test` short.
"""
import json
import os
import time

import numpy as np
import torch
from PIL import Image

from pytorch_grad_cam import (AblationCAM, EigenCAM, EigenGradCAM, FEM, FinerCAM, FullGrad,
                              GradCAM, GradCAMElementWise, GradCAMPlusPlus, HiResCAM, LayerCAM,
                              KPCA_CAM, RandomCAM, RefineCAM, ScoreCAM, ShapleyCAM, XGradCAM)
from pytorch_grad_cam.sess import SESS
from pytorch_grad_cam import GuidedBackpropReLUModel
from pytorch_grad_cam.sobel_cam import sobel_cam
from pytorch_grad_cam.utils.image import deprocess_image, scale_cam_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

METHODS = {
    "gradcam": GradCAM,
    "hirescam": HiResCAM,
    "gradcam-elementwise": GradCAMElementWise,
    "gradcam-plusplus": GradCAMPlusPlus,
    "xgradcam": XGradCAM,
    "layercam": LayerCAM,
    "eigencam": EigenCAM,
    "eigengradcam": EigenGradCAM,
    "fem": FEM,
    "ablationcam": AblationCAM,
    "scorecam": ScoreCAM,
    "randomcam": RandomCAM,
    "finercam": FinerCAM,
    "shapleycam": ShapleyCAM,
    "refinecam": RefineCAM,
    "kpcacam": KPCA_CAM,
    "fullgrad": FullGrad,
    # A function, not a CAM class: the edges of the 8-bit image, whatever the class.
    "sobelcam": None,
    # GuidedBackpropReLUModel, and its product with GradCAM's map (the Grad-CAM paper's
    # Guided Grad-CAM, as pytorch-grad-cam's cam.py example computes it).
    "guided-backprop": None,
    "guided-gradcam": GradCAM,
    "sess": SESS,
}
# Methods whose map eigen_smooth changes (EigenCAM, EigenGradCAM and FEM ignore it).
SMOOTHABLE = ["gradcam", "hirescam", "gradcam-elementwise", "gradcam-plusplus", "xgradcam",
              "layercam", "randomcam", "finercam", "shapleycam"]
# RefineCAM multiplies maps of several layers, FullGrad takes none: their own cases below.
ONE_PASS = [m for m in METHODS
            if m not in ("ablationcam", "scorecam", "refinecam", "fullgrad", "sobelcam",
                         "guided-backprop", "guided-gradcam", "sess")]
LAYERS = {"layer4": lambda m: m.layer4[-1], "layer3": lambda m: m.layer3[-1]}
# Only RefineCAM's cases reach this far back (it is made for early layers).
LAYER2 = {"layer2": lambda m: m.layer2[-1]}


def methods_reference(out_dir, arch, weights, model, images, to_input, recorder):
    """The cases of one architecture: methods-<arch>.json and methods-<arch>.f32."""
    start = time.perf_counter()
    cases = []
    blob = open(os.path.join(out_dir, f"methods-{arch}.f32"), "wb")
    offset = 0
    # The images by name: case-N.png, and a seeded noise image (written here), on which the
    # fast path's rounding once flipped FEM's mean + 2 std threshold at layer3.
    named = [(f"case-{i}.png", rgb) for i, rgb in enumerate(images)]
    noise = np.random.default_rng(7).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    Image.fromarray(noise).save(os.path.join(out_dir, "noise.png"))
    named.append(("noise.png", noise))

    def run(arch, weights, model, image_index, method, layers, targets, eigen=False, aug=False,
            options=None):
        nonlocal offset
        options = options or {}
        image_name, rgb = named[image_index]
        rgb_float, x = to_input(rgb)
        with torch.no_grad():
            probs = torch.softmax(model(x), dim=1)[0]
        top5 = torch.topk(probs, 5).indices.tolist()
        kwargs = {}
        if "base_method" in options:
            kwargs["base_method"] = METHODS[options["base_method"]]
        kwargs.update({k: options[k] for k in ("kernel", "gamma") if k in options})
        pick = {**LAYERS, **LAYER2}
        cam = None
        if METHODS[method] is not None:
            cam = METHODS[method](model=model, target_layers=[pick[l](model) for l in layers],
                                  **kwargs)
        entries = []
        for target in targets:
            recorder.maps.clear()
            if method in ("guided-backprop", "guided-gradcam"):
                # A fresh input each time: the model sets requires_grad on the tensor it is
                # given and its .grad would add up over calls.
                gb = GuidedBackpropReLUModel(model=model, device="cpu")(x.clone(), target)
                if method == "guided-gradcam":
                    t = None if target is None else [ClassifierOutputTarget(target)]
                    mask = cam(input_tensor=x, targets=t, eigen_smooth=eigen, aug_smooth=aug)[0]
                    gb = np.stack([mask, mask, mask], axis=-1) * gb
                returned = gb
            elif method == "sobelcam":
                # sobel_cam of the 8-bit RGB image the model sees, scaled as every returned
                # map is (the server's convention for it).
                returned = scale_cam_image(np.float32(sobel_cam(rgb))[None])[0]
            elif method == "finercam":
                # FinerCAM takes the target as `target_idx` and has no aug_smooth.
                returned = cam(input_tensor=x, targets=None, eigen_smooth=eigen,
                               target_idx=target, alpha=options.get("finer_alpha", 1),
                               comparison_categories=options.get("comparison_categories"))[0]
            elif method == "sess":
                # SESS with its defaults; it has no aug_smooth.
                t = None if target is None else [ClassifierOutputTarget(target)]
                returned = cam(input_tensor=x, targets=t, eigen_smooth=eigen)[0]
            elif method == "refinecam":
                # RefineCAM has no aug_smooth.
                np.random.seed(options.get("seed", 0))
                t = None if target is None else [ClassifierOutputTarget(target)]
                if eigen:
                    returned = refine_by_keyword(cam, x, t)[0]
                else:
                    returned = cam(input_tensor=x, targets=t, eigen_smooth=eigen)[0]
                    np.random.seed(options.get("seed", 0))
                    same = refine_by_keyword(cam, x, t, eigen_smooth=False)[0]
                    assert np.array_equal(returned, same), "refine_by_keyword is RefineCAM's"

            else:
                # RandomCAM draws from NumPy's global generator: seeded per map, as the
                # server seeds it (its `seed` option, 0 by default).
                np.random.seed(options.get("seed", 0))
                t = None if target is None else [ClassifierOutputTarget(target)]
                returned = cam(input_tensor=x, targets=t, eigen_smooth=eigen, aug_smooth=aug)[0]
            returned = np.ascontiguousarray(returned, dtype="<f4")
            blob.write(returned.tobytes())
            one_layer = (len(layers) == 1 and not aug
                         and method not in ("refinecam", "guided-gradcam", "sess"))
            raw = recorder.maps[0][0] if one_layer else None
            entries.append({
                # The guided methods' picture: deprocess_image of the map.
                "deprocessed": (deprocess_image(returned).reshape(-1).tolist()
                                if method.startswith("guided") else None),
                "explained_class": target if target is not None else top5[0],
                "raw_map": None if raw is None else np.float32(raw).tolist(),
                "offset": offset,
                "size": list(returned.shape),
            })
            offset += returned.size
        if cam is None:
            pass
        elif method == "sess":
            cam.base_cam.activations_and_grads.release()
        elif method == "refinecam":
            for base in cam.base_cam_per_layer:
                base.activations_and_grads.release()
        else:
            (cam.base_cam if method == "finercam" else cam).activations_and_grads.release()
        cases.append({
            "architecture": arch, "weights": weights, "image": image_name,
            "method": method, "layers": layers, "targets": targets, "eigen_smooth": eigen,
            "aug_smooth": aug, "options": options, "top5": top5, "maps": entries,
        })

    forced = forced_target(model, to_input(images[1])[1])
    for layer in LAYERS:
        for method in ONE_PASS:
            for image, target in ((0, None), (1, forced)):
                run(arch, weights, model, image, method, [layer], [target])
            if method in SMOOTHABLE:
                run(arch, weights, model, 0, method, [layer], [None], eigen=True)
    noise_forced = forced_target(model, to_input(noise)[1])
    for method in ONE_PASS:
        run(arch, weights, model, -1, method, ["layer3"], [None])
    run(arch, weights, model, -1, "fem", ["layer3"], [noise_forced])
    run(arch, weights, model, -1, "fem", ["layer4"], [None])
    # The methods' own options: another seed, other comparisons and strength, aug_smooth.
    run(arch, weights, model, 1, "randomcam", ["layer4"], [None], options={"seed": 7})
    run(arch, weights, model, 0, "randomcam", ["layer3"], [None], aug=True)
    run(arch, weights, model, 1, "finercam", ["layer3"], [forced],
        options={"comparison_categories": [2, 5], "finer_alpha": 0.6})
    run(arch, weights, model, 0, "shapleycam", ["layer3"], [None], aug=True)
    # KPCA-CAM's other kernels, and rbf with a gamma of about 1 / the median squared
    # distance between the layer's positions: the seeded weights' activations are large
    # (about 5e6 at resnet50's layer3, 2e8 at layer4), so with the default 1 / channels the
    # rbf kernel is the identity, whose eigenvectors are any vectors at all.
    for kernel in ("linear", "poly", "cosine"):
        run(arch, weights, model, 1, "kpcacam", ["layer4"], [forced], options={"kernel": kernel})
    for image, layer in ((1, "layer4"), (0, "layer3")):
        gamma = rbf_gamma(model, LAYERS[layer](model), to_input(named[image][1])[1])
        run(arch, weights, model, image, "kpcacam", [layer], [None],
            options={"kernel": "rbf", "gamma": gamma})
    # RefineCAM: its default base (GradCAM++) and others, one to three layers.
    run(arch, weights, model, 0, "refinecam", ["layer3", "layer4"], [None])
    run(arch, weights, model, 1, "refinecam", ["layer2", "layer3", "layer4"], [forced],
        options={"base_method": "gradcam"})
    run(arch, weights, model, 0, "refinecam", ["layer3"], [None], eigen=True)
    run(arch, weights, model, -1, "refinecam", ["layer3", "layer4"], [None],
        options={"base_method": "eigencam"})
    run(arch, weights, model, 1, "refinecam", ["layer3", "layer4"], [None],
        options={"base_method": "randomcam", "seed": 3})
    # FullGrad: every batch norm of the network, no layer (target_layers=[]).
    for image, target in ((0, None), (1, forced), (-1, None)):
        run(arch, weights, model, image, "fullgrad", [], [target])
    run(arch, weights, model, 0, "fullgrad", [], [None], eigen=True)
    run(arch, weights, model, 1, "fullgrad", [], [None], aug=True)
    # Guided backpropagation, and Guided Grad-CAM at both layers and with eigen_smooth.
    for image, target in ((0, None), (1, forced)):
        run(arch, weights, model, image, "guided-backprop", [], [target])
        run(arch, weights, model, image, "guided-gradcam", ["layer4"], [target])
    run(arch, weights, model, 0, "guided-gradcam", ["layer3"], [None], eigen=True)
    # SobelCAM: the same edges whatever the class.
    for image, target in ((0, None), (1, forced), (-1, None)):
        run(arch, weights, model, image, "sobelcam", [], [target])
    # SESS (122 windows each): its default base (Grad-CAM) and another, eigen_smooth.
    if arch == "resnet50":
        run(arch, weights, model, 0, "sess", ["layer4"], [None])
        run(arch, weights, model, -1, "sess", ["layer4"], [None], eigen=True)
    else:
        run(arch, weights, model, 1, "sess", ["layer3"], [forced],
            options={"base_method": "layercam"})
        run(arch, weights, model, 0, "sess", ["layer4"], [None])
    run(arch, weights, model, 0, "gradcam-plusplus", ["layer4"], [None], aug=True)
    run(arch, weights, model, 1, "eigencam", ["layer3"], [forced], aug=True)
    run(arch, weights, model, 0, "layercam", ["layer3", "layer4"], [None])
    _, x = to_input(images[2])
    with torch.no_grad():
        top = torch.topk(model(x)[0], 5).indices.tolist()
    run(arch, weights, model, 2, "xgradcam", ["layer3"], [top[0], top[2], top[4]])
    if arch == "resnet18":
        for method in ("ablationcam", "scorecam"):
            run(arch, weights, model, 0, method, ["layer4"], [None])
            run(arch, weights, model, 1, method, ["layer3"], [forced])
    blob.close()
    with open(os.path.join(out_dir, f"methods-{arch}.json"), "w") as f:
        json.dump({"cases": cases}, f)
    print(f"reference: {len(cases)} method cases on {arch} ({time.perf_counter() - start:.1f} s)")


def refine_by_keyword(cam, x, targets, eigen_smooth=True):
    """RefineCAM.forward with `eigen_smooth` passed to its base method by name. RefineCAM
    1.5.7 passes it third, where BaseCAM.__call__ takes `aug_smooth`: its eigen_smooth=True
    runs the base method with aug_smooth instead. The server's `eigen_smooth` means
    eigen_smooth (README); this is RefineCAM's own code otherwise, and equals it without
    eigen_smooth (checked on every such case above)."""
    per_layer = np.array([base(x, targets, eigen_smooth=eigen_smooth)
                          for base in cam.base_cam_per_layer])
    return scale_cam_image(np.prod(per_layer, axis=0))


def rbf_gamma(model, layer, x):
    """1 / the median squared distance between the layer's (centred) positions, to two
    digits."""
    kept = []
    handle = layer.register_forward_hook(lambda m, i, o: kept.append(o.detach()))
    with torch.no_grad():
        model(x)
    handle.remove()
    a = kept[0][0].numpy().astype(np.float64)
    positions = a.reshape(a.shape[0], -1).T
    positions -= positions.mean(axis=0)
    squares = (positions ** 2).sum(axis=1)
    distances = squares[:, None] + squares[None, :] - 2 * positions @ positions.T
    return float(f"{1 / np.median(distances):.1e}")


def forced_target(model, x):
    with torch.no_grad():
        return torch.topk(model(x)[0], 5).indices.tolist()[3]
