"""Small models for the exporter's tests: made here, so the tests need no downloads."""

import pytest
import torch
from torch import nn


class TwoBranch(nn.Module):
    """Two branches joined, then fused: not from torchvision."""

    def __init__(self, classes=5):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU()
        )
        self.left = nn.Sequential(nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU())
        self.right = nn.Sequential(nn.Conv2d(8, 4, 3, stride=2, padding=1), nn.ReLU())
        self.fuse = nn.Sequential(nn.Conv2d(12, 16, 1), nn.ReLU())
        self.head = nn.Linear(16, classes)

    def forward(self, x):
        s = self.stem(x)
        z = torch.cat([self.left(s), self.right(s)], dim=1)
        return self.head(self.fuse(z).mean(dim=(2, 3)))


class Tokens(nn.Module):
    """A ViT-like model: a class token and a 4x4 grid of patch tokens."""

    def __init__(self, classes=3, width=12):
        super().__init__()
        self.patch = nn.Conv2d(3, width, 8, stride=8)
        self.cls = nn.Parameter(torch.randn(1, 1, width))
        self.norm = nn.LayerNorm(width)
        self.mix = nn.Linear(width, width)
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(t.size(0), -1, -1), t], dim=1)
        t = t + self.mix(self.norm(t))
        return self.head(t[:, 0])


@pytest.fixture
def two_branch():
    torch.manual_seed(0)
    return TwoBranch().eval()


@pytest.fixture
def tokens():
    torch.manual_seed(1)
    return Tokens().eval()
