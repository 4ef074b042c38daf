"""Deep Feature Factorization reference, for tests/core/methods_parity.rs (`dff` cases).

Imported by make_reference.py (and runnable alone: `python dff_reference.py OUT_DIR`, with
make_reference.py's models and images already in OUT_DIR); writes into OUT_DIR:
  dff.json  {"cases": [...]}: per case the architecture, weights, image, layer,
            n_components, top_k, the image's top-5, and per concept where its map is in
            dff.f32 and its top_k classes with their probabilities (none at a layer the
            classifier does not read); and the blended picture (RGB bytes)
  dff.f32   each concept's map (224x224 float32, little endian), one after another

As pytorch-grad-cam 1.5.7's `run_dff_on_image` runs it: `DeepFeatureFactorization` with
`computation_on_concepts=model.fc` (only at layer4, whose channels fc reads), the concept
outputs softmaxed, `create_labels_legend`'s top-k order, and `show_factorization_on_image`
with `image_weight=0.3` and no legend (its legend is a matplotlib figure the server does
not imitate). That function's default colours call `plt.cm.get_cmap`, which matplotlib
3.9 removed; the same colours are passed from `matplotlib.colormaps['gist_rainbow']`.
"""
import json
import os
import sys

import matplotlib
import numpy as np
import torch
from pytorch_grad_cam import DeepFeatureFactorization
from pytorch_grad_cam.utils.image import show_factorization_on_image


def dff_reference(out_dir, models, images, to_input):
    """`models`: {arch: (weights file, model)}; `images`: RGB uint8 arrays (224x224)."""
    named = [(f"case-{i}.png", rgb) for i, rgb in enumerate(images)]
    cases = []
    offset = 0
    with open(os.path.join(out_dir, "dff.f32"), "wb") as blob:
        def run(arch, image_index, layer, n_components, top_k):
            nonlocal offset
            weights, model = models[arch]
            image_name, rgb = named[image_index]
            rgb_float, x = to_input(rgb)
            with torch.no_grad():
                probs = torch.softmax(model(x), dim=1)[0]
            top5 = torch.topk(probs, 5).indices.tolist()
            target = {"layer4": model.layer4[-1], "layer3": model.layer3[-1]}[layer]
            classify = model.fc if layer == "layer4" else None
            dff = DeepFeatureFactorization(model=model, target_layer=target,
                                           computation_on_concepts=classify)
            out = dff(x, n_components)
            explanations = np.float32(out[1][0])
            concepts = []
            scores = None
            if classify is not None:
                scores = torch.softmax(torch.from_numpy(out[2]), axis=-1).numpy()
                # create_labels_legend's order: argsort, reversed, the first top_k.
                order = np.argsort(scores, axis=1)[:, ::-1][:, :top_k]
            for i, explanation in enumerate(explanations):
                blob.write(np.ascontiguousarray(explanation, dtype="<f4").tobytes())
                classes = ([] if scores is None else
                           [[int(c), float(scores[i, c])] for c in order[i]])
                concepts.append({"offset": offset, "classes": classes})
                offset += explanation.size
            cmap = matplotlib.colormaps["gist_rainbow"]
            colours = [np.array(cmap(i)) for i in np.arange(0, 1, 1.0 / n_components)]
            # It zeroes the explanations it does not show: a copy, so the maps stay.
            picture = show_factorization_on_image(np.array(rgb) / 255, explanations.copy(),
                                                  colors=colours, image_weight=0.3)
            dff.activations_and_grads.release()
            cases.append({
                "architecture": arch, "weights": weights, "image": image_name,
                "layer": layer, "n_components": n_components, "top_k": top_k,
                "top5": top5, "concepts": concepts,
                "picture": picture.reshape(-1).tolist(),
            })

        run("resnet50", 0, "layer4", 5, 2)
        run("resnet50", 1, "layer4", 3, 3)
        run("resnet50", 2, "layer3", 4, 2)
        run("resnet18", 1, "layer4", 5, 2)
        run("resnet18", 0, "layer4", 7, 1)
    with open(os.path.join(out_dir, "dff.json"), "w") as f:
        json.dump({"cases": cases}, f)
    print(f"reference: {len(cases)} dff cases")


if __name__ == "__main__":
    import make_reference as m
    out = sys.argv[1]
    images = m.make_images()
    resnet50 = m.make_model()
    resnet18 = m.build_model("resnet18", *m.ARCHITECTURES["resnet18"])
    weights = {e["architecture"]: e["weights"]
               for e in json.load(open(os.path.join(out, "reference.json")))["models"]}
    dff_reference(out, {"resnet50": (weights["resnet50"], resnet50),
                        "resnet18": (weights["resnet18"], resnet18)}, images, m.to_input)
