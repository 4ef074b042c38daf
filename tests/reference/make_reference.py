"""Reference answers from pytorch-grad-cam, for the parity test (tests/parity.rs).

Writes into OUT_DIR:
  resnet50-random.safetensors  seeded random torchvision ResNet-50, with non-default
                               batch-norm statistics (so code that ignored them would fail)
  case-N.png                   224x224 RGB inputs (no resizing on either side)
  case-N-overlay.png           show_cam_on_image(rgb, GradCAM(...)(x), use_rgb=True)
  reference.json               per case: top-5, probabilities, target, raw 7x7 map; and
                               OpenCV's COLORMAP_JET table as RGB

The raw map is what pytorch-grad-cam computes before `scale_cam_image`: ReLU(sum_k w_k A_k).
Usage: python make_reference.py OUT_DIR
"""
import json
import os
import sys

import cv2
import numpy as np
import torch
import torchvision
from PIL import Image
from safetensors.torch import save_file

import pytorch_grad_cam.base_cam as base_cam
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def make_model():
    torch.manual_seed(1234)
    model = torchvision.models.resnet50(weights=None)
    g = torch.Generator().manual_seed(99)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
        # Random trunks give layer4 activations in the tens, so the default fc gives logits
        # in the hundreds and a softmax of one 1.0 and 999 underflowed zeros, whose order
        # means nothing. Scaled down, the top-5 are distinct probabilities worth comparing.
        model.fc.weight.mul_(1.0 / 150.0)
    return model.eval()


def make_images():
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:224, 0:224].astype(np.float32) / 223.0
    images = []
    # Smooth colour gradients with a bright disc: structure the network responds to.
    for i in range(4):
        cx, cy = rng.uniform(0.2, 0.8, size=2)
        disc = ((xx - cx) ** 2 + (yy - cy) ** 2 < 0.03 + 0.02 * i).astype(np.float32)
        img = np.stack([xx, yy, 1 - xx], axis=-1) * 0.6 + disc[..., None] * rng.uniform(0.2, 0.4, 3)
        images.append(img)
    # Noise and stripes.
    images.append(rng.uniform(0, 1, size=(224, 224, 3)).astype(np.float32))
    stripes = (np.sin(xx * 40) > 0).astype(np.float32)
    images.append(np.stack([stripes, 1 - stripes, yy], axis=-1))
    return [np.uint8(np.clip(img, 0, 1) * 255) for img in images]


def main(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    torch.set_num_threads(2)
    model = make_model()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, os.path.join(out_dir, "resnet50-random.safetensors"))

    raw_maps = []
    original_scale = base_cam.scale_cam_image

    def recording_scale(cam, target_size=None):
        raw_maps.append(np.array(cam))
        return original_scale(cam, target_size)

    base_cam.scale_cam_image = recording_scale
    cam = GradCAM(model=model, target_layers=[model.layer4[-1]])

    cases = []
    for i, rgb in enumerate(make_images()):
        name = f"case-{i}.png"
        Image.fromarray(rgb).save(os.path.join(out_dir, name))
        rgb_float = rgb.astype(np.float32) / 255.0
        # Contiguous NCHW, as pytorch-grad-cam's preprocess_image (ToTensor) makes it. (A bare
        # numpy transpose would be channels-last in memory, and libtorch would then run
        # other convolution kernels, equal only to about 1e-6.)
        x = torch.from_numpy(((rgb_float - MEAN) / STD).transpose(2, 0, 1)).unsqueeze(0).contiguous()
        with torch.no_grad():
            probs = torch.softmax(model(x), dim=1)[0]
        top5 = torch.topk(probs, 5).indices.tolist()
        # Alternate: the top-1 (no target) and an explicit other class.
        target = None if i % 2 == 0 else top5[3]
        raw_maps.clear()
        grayscale = cam(input_tensor=x, targets=None if target is None else [ClassifierOutputTarget(target)])[0]
        raw = raw_maps[0][0]
        overlay = show_cam_on_image(rgb_float, grayscale, use_rgb=True)
        Image.fromarray(overlay).save(os.path.join(out_dir, f"case-{i}-overlay.png"))
        cases.append({
            "image": name,
            "overlay": f"case-{i}-overlay.png",
            "target": target,
            "explained_class": target if target is not None else top5[0],
            "top5": top5,
            "probabilities": probs.tolist(),
            "raw_map": raw.tolist(),
        })

    jet = cv2.applyColorMap(np.arange(256, dtype=np.uint8).reshape(256, 1), cv2.COLORMAP_JET)
    reference = {
        "weights": "resnet50-random.safetensors",
        "cases": cases,
        "jet_rgb": jet[:, 0, ::-1].tolist(),
        "versions": {"torch": torch.__version__, "opencv": cv2.__version__},
    }
    with open(os.path.join(out_dir, "reference.json"), "w") as f:
        json.dump(reference, f)
    print(f"reference: {len(cases)} cases in {out_dir}")


if __name__ == "__main__":
    main(sys.argv[1])
