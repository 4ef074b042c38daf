"""What the exported file runs at each tap (a target layer chosen at export).

Both export routes (torch.fx, or torch.jit.trace with forward hooks) call `tap` on the
target layer's output, so that the server can take the gradient of a class score with
respect to that output with plain autograd (TorchScript has no hooks), and can replace
the output (AblationCAM). It is a scripted function: its branches stay branches in a
traced model too.
"""

from typing import Tuple

import torch
from torch import Tensor


def tap(
    output: Tensor, index: int, wanted: Tensor, replace_at: Tensor, replacement: Tensor
) -> Tuple[Tensor, Tensor]:
    """Returns (what the rest of the network gets, what to differentiate with respect to).

    - `replace_at == index`: the layer's output is `replacement` instead (AblationCAM's
      ablated copies; the server sends the input repeated to the same batch size).
    - `wanted[index]` and the output has no autograd history (the server freezes the
      parameters and runs the network without autograd up to here): autograd is switched
      on and the output becomes a fresh leaf that requires grad, so that only what follows
      it is recorded, and nothing before it paid autograd's bookkeeping. An output that
      already requires grad (it depends on an earlier wanted tap) stays in the graph, so
      that gradients at earlier taps still flow through it. `_Exported.forward` puts the
      caller's autograd mode back at the end.
    - The rest of the network gets a clone: an in-place op after the layer (DenseNet's
      final `relu(inplace=True)`) then changes the clone, which the server reads as the
      activation (pytorch-grad-cam's hook keeps a tensor that shares storage with the
      output, so it sees the values after the in-place op), while the gradient is the one
      at the layer's output, as pytorch-grad-cam's is.
    """
    if int(replace_at) == index:
        output = replacement
    if bool(wanted[index]) and not output.requires_grad:
        torch.set_grad_enabled(True)
        output = output.detach().requires_grad_()
    return output.clone(), output


# The traced route calls the compiled function, so that its branches stay branches in the
# trace; the torch.fx route inserts the Python function, which scripting the graph compiles.
tap_scripted = torch.jit.script(tap)
