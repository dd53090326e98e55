"""A small CNN with BatchNorm for scikit-learn's 8x8 digits (so BN handling gets exercised)."""

from __future__ import annotations

import torch
from torch import nn


class DigitsCNN(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(32)
        self.relu2 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(32, 64, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(64)
        self.relu3 = nn.ReLU()
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))  # (N, 16, 8, 8)
        x = self.pool(self.relu2(self.bn2(self.conv2(x))))  # (N, 32, 4, 4)
        x = self.relu3(self.bn3(self.conv3(x)))  # (N, 64, 4, 4)
        return self.fc(torch.flatten(self.gap(x), 1))  # (N, classes)


def digits_cnn(num_classes: int = 10) -> DigitsCNN:
    return DigitsCNN(num_classes)
