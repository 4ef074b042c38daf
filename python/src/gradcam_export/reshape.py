"""Reshape transforms: a tap's output (and its gradient) to a `(N, C, H, W)` map.

pytorch-grad-cam applies its `reshape_transform` to both the activation and the gradient
inside its hooks; the exported file carries the same transform as a scripted module and the
server applies it to both.
"""

import math
from typing import Callable, Optional, Union

import torch
from torch import Tensor, nn

from .errors import ExportError


class NoReshape(nn.Module):
    """Convolutional layers: the output is already `(N, C, H, W)`."""

    def forward(self, x: Tensor) -> Tensor:
        return x


class VitReshape(nn.Module):
    """ViT tokens `(N, 1 + H*W, C)`: the class token dropped, the rest a square grid,
    channels first (pytorch-grad-cam's `vit_reshape_transform`, for any square grid)."""

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 3:
            raise RuntimeError("the vit reshape takes (N, tokens, channels)")
        tokens = x.size(1) - 1
        side = int(math.sqrt(float(tokens)) + 0.5)
        if side * side != tokens:
            raise RuntimeError("the vit reshape needs 1 + a square number of tokens")
        result = x[:, 1:, :].reshape(x.size(0), side, side, x.size(2))
        return result.transpose(2, 3).transpose(1, 2)


class SwinReshape(nn.Module):
    """Swin's channels-last maps to channels first: `(N, H, W, C)` as torchvision's Swin
    keeps them, or `(N, H*W, C)` tokens on a square grid (pytorch-grad-cam's
    `swinT_reshape_transform`)."""

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 3:
            side = int(math.sqrt(float(x.size(1))) + 0.5)
            if side * side != x.size(1):
                raise RuntimeError("the swin reshape needs a square number of tokens")
            x = x.reshape(x.size(0), side, side, x.size(2))
        if x.dim() != 4:
            raise RuntimeError("the swin reshape takes (N, H, W, C) or (N, H*W, C)")
        return x.transpose(2, 3).transpose(1, 2)


class FunctionReshape(nn.Module):
    """A user's reshape function, as pytorch-grad-cam takes it (it must be scriptable)."""

    def __init__(self, function: Callable[[Tensor], Tensor]):
        super().__init__()
        self.function = function

    def forward(self, x: Tensor) -> Tensor:
        return self.function(x)


NAMED = {"none": NoReshape, "vit": VitReshape, "swin": SwinReshape}

ReshapeSpec = Union[None, str, nn.Module, Callable[[Tensor], Tensor]]


def resolve(spec: ReshapeSpec) -> "tuple[nn.Module, str]":
    """The module for a `reshape_transform` argument, and how the metadata names it."""
    if spec is None:
        return NoReshape(), "none"
    if isinstance(spec, str):
        if spec not in NAMED:
            raise ExportError(
                f"reshape_transform={spec!r}: the named ones are none, vit and swin "
                "(or pass an nn.Module)"
            )
        return NAMED[spec](), spec
    if isinstance(spec, nn.Module):
        return spec, "custom"
    if callable(spec):
        return FunctionReshape(spec), "custom"
    raise ExportError(f"reshape_transform must be None, 'vit', 'swin' or a module, not {spec!r}")


def script(module: nn.Module, kind: str) -> torch.jit.ScriptModule:
    """The transform scripted, with a clear error when it cannot be."""
    try:
        return torch.jit.script(module)
    except Exception as e:  # TorchScript raises several types
        raise ExportError(
            f"the {kind} reshape_transform cannot be compiled to TorchScript ({e}); write it "
            "as an nn.Module with a typed forward(self, x: Tensor) -> Tensor, or use 'vit' "
            "or 'swin'"
        ) from None


def channel_axis(kind: str) -> Optional[int]:
    """Where a tap's channels are in its raw output, for AblationCAM's ablated copies:
    dimension 1 for convolutional maps (pytorch-grad-cam's `AblationLayer`), the last one
    for token layouts (`AblationLayerVit`), unknown for a custom transform."""
    return {"none": 1, "vit": -1, "swin": -1}.get(kind)
