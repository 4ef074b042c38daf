"""Exports the custom module's weights (a state dict) with this Python's torch and
gradcam_export: make_exported.py runs it with an older torch.

Usage: python export_with.py CHECKPOINT.pth OUT.pt
"""
import sys

import torch

import gradcam_export
from two_branch import TwoBranch

model = TwoBranch(7)
model.load_state_dict(torch.load(sys.argv[1], map_location="cpu", weights_only=True))
model.eval()
meta = gradcam_export.export(model, [model.fuse, model.left], sys.argv[2], name="custom-old-torch")
print(f"exported with torch {meta['torch_version']}: {sys.argv[2]}")
