"""The custom module of the exported-model tests: two branches joined, then fused (not from
torchvision). Imported by make_exported.py and by export_with.py under another torch."""

import torch


class TwoBranch(torch.nn.Module):
    """A small classifier that is not from torchvision: two branches joined, then fused."""

    def __init__(self, classes=7):
        super().__init__()
        conv = torch.nn.Conv2d
        self.stem = torch.nn.Sequential(
            conv(3, 16, 3, stride=2, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU())
        self.left = torch.nn.Sequential(
            conv(16, 32, 3, stride=2, padding=1), torch.nn.BatchNorm2d(32), torch.nn.ReLU(),
            conv(32, 32, 3, stride=2, padding=1), torch.nn.ReLU())
        self.right = torch.nn.Sequential(
            conv(16, 24, 5, stride=4, padding=2), torch.nn.BatchNorm2d(24), torch.nn.ReLU())
        self.fuse = torch.nn.Sequential(conv(56, 48, 1), torch.nn.ReLU())
        self.head = torch.nn.Linear(48, classes)

    def forward(self, x):
        s = self.stem(x)
        z = torch.cat([self.left(s), self.right(s)], dim=1)
        return self.head(self.fuse(z).mean(dim=(2, 3)))
