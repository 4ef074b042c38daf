"""The fixed cost of one libtorch oneDNN convolution call, apart from its arithmetic.

A 1x1 convolution of 8 channels on 7x7 through `mkldnn::_convolution_pointwise` (what
csrc/fused_conv.cpp calls, 53 times per ResNet-50 forward) against a ReLU on the same
tensor: what is left is ideep building the primitive descriptor and looking the
primitive up, on every call. Best of 5 means of 20,000 calls, in microseconds.

    PY=$(scripts/setup-pyref.sh) && $PY bench/call_cost.py
"""

import time

import torch


def per_call_us(f, calls=20_000, repeats=5):
    for _ in range(200):
        f()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter_ns()
        for _ in range(calls):
            f()
        best = min(best, (time.perf_counter_ns() - start) / calls / 1000)
    return best


def main():
    torch.set_num_threads(2)
    x = torch.randn(1, 8, 7, 7)
    w = torch.randn(8, 8, 1, 1)
    b = torch.randn(8)
    relu = per_call_us(lambda: torch.relu(x))
    conv = per_call_us(
        lambda: torch.ops.mkldnn._convolution_pointwise(
            x, w, b, [0, 0], [1, 1], [1, 1], 1, "relu", [None], None
        )
    )
    print(f"torch {torch.__version__}, 2 threads")
    print(f"ReLU: {relu:.1f} us per call")
    print(f"_convolution_pointwise (1x1, 8 channels, 7x7, ReLU fused): {conv:.1f} us per call")
    print(f"x 53 calls per ResNet-50 forward: {53 * conv / 1000:.2f} ms")


if __name__ == "__main__":
    main()
