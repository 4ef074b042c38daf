"""torchvision's classifiers: built by name, a fine-tuned checkpoint loaded into them, and the
target layer pytorch-grad-cam's README recommends for each family."""

from typing import Dict, Optional, Tuple

import torch
from torch import Tensor, nn

from .errors import ExportError

# (architecture name prefix, default target layer, reshape): the first match wins.
DEFAULT_LAYERS = [
    ("resnet", "layer4[-1]", "none"),
    ("resnext", "layer4[-1]", "none"),
    ("wide_resnet", "layer4[-1]", "none"),
    ("vit_", "encoder.layers[-1].ln_1", "vit"),
    ("swin_", "features[-1][-1].norm1", "swin"),
    ("regnet_", "trunk_output[-1]", "none"),
    ("mnasnet", "layers[-1]", "none"),
    ("shufflenet", "conv5", "none"),
    ("googlenet", "inception5b", "none"),
    ("inception_v3", "Mixed_7c", "none"),
    ("maxvit", "blocks[-1]", "none"),
    # VGG, DenseNet, MobileNet, EfficientNet, ConvNeXt, SqueezeNet, AlexNet.
    ("", "features[-1]", "none"),
]

# The keys a training wrapper puts a state dict under, and the prefixes it puts before
# every tensor name (DataParallel's `module.`, Lightning's `model.`, `backbone.`).
CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model", "net")
WRAPPER_PREFIXES = ("module.", "model.", "backbone.")


def default_layer(arch: str) -> Tuple[str, str]:
    """(target layer, reshape) for a torchvision architecture."""
    for prefix, layer, reshape in DEFAULT_LAYERS:
        if arch.startswith(prefix):
            return layer, reshape
    raise AssertionError("the last entry matches every name")


def classifiers() -> "list[str]":
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def build(arch: str, num_classes: Optional[int]) -> nn.Module:
    """torchvision's `arch` with random weights (and `num_classes` outputs when given)."""
    try:
        import torchvision
    except ImportError:
        raise ExportError(
            "the torchvision command needs torchvision: pip install 'gradcam-export[torchvision]'"
        ) from None
    names = classifiers()
    if arch not in names:
        raise ExportError(f"{arch!r} is not a torchvision classifier; they are: {', '.join(names)}")
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    if arch in ("inception_v3", "googlenet"):
        # Their auxiliary heads exist in training only.
        kwargs["aux_logits"] = False
        kwargs["init_weights"] = True
    return torchvision.models.get_model(arch, weights=None, **kwargs)


def read_checkpoint(path: str) -> Dict[str, Tensor]:
    """A state dict from a .safetensors or torch.save file, unwrapped from the usual
    containers and wrapper prefixes."""
    if path.endswith(".safetensors"):
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise ExportError(
                "reading .safetensors needs safetensors: pip install safetensors"
            ) from None
        state = load_file(path)
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise ExportError(f"no checkpoint at {path}") from None
        except Exception as e:
            raise ExportError(
                f"{path} cannot be read as a state dict ({str(e).splitlines()[0]}). If it holds a "
                "whole pickled model that you trust, load it in Python and call "
                "gradcam_export.export(model, ...)"
            ) from None
    for key in CHECKPOINT_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ExportError(f"{path} does not hold a state dict (names to tensors)")
    state = dict(state)
    stripped = True
    while stripped:
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if state and all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                stripped = True
    return state


def _classifier(model: nn.Module) -> Optional[str]:
    """The qualified name of the model's last linear layer (its classifier)."""
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = name
    return last


def load(arch: str, checkpoint: Optional[str], num_classes: Optional[int]):
    """The model with the checkpoint's weights, and a note when the class count came from
    the checkpoint (its classifier's rows, when `num_classes` is not given)."""
    model = build(arch, num_classes)
    if checkpoint is None:
        return model, None
    state = read_checkpoint(checkpoint)
    expected = model.state_dict()
    note = None
    if num_classes is None:
        head = _classifier(model)
        weight = state.get(f"{head}.weight") if head else None
        if weight is not None and weight.shape != expected[f"{head}.weight"].shape:
            model = build(arch, int(weight.shape[0]))
            expected = model.state_dict()
            note = f"{weight.shape[0]} classes, from the checkpoint's {head}.weight"
    for name, tensor in state.items():
        if name in expected and tensor.shape != expected[name].shape:
            raise ExportError(
                f"{checkpoint}: tensor {name} has shape {tuple(tensor.shape)}, but {arch} "
                f"needs {tuple(expected[name].shape)}: is it another architecture, or another "
                "class count (--num-classes)?"
            )
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        detail = []
        if missing:
            detail.append(f"missing {len(missing)} tensors, e.g. {missing[0]}")
        if unexpected:
            detail.append(f"{len(unexpected)} tensors {arch} does not have, e.g. {unexpected[0]}")
        raise ExportError(f"{checkpoint} is not a {arch} state dict: {'; '.join(detail)}")
    model.load_state_dict(state, strict=False)
    return model, note
