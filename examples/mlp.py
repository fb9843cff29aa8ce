"""A plain PyTorch MLP on the flat layout (padded entries arrive as the spec's pad value)."""

import torch


def model(idim):
    return torch.nn.Sequential(
        torch.nn.Linear(idim, 64),
        torch.nn.ReLU(),
        torch.nn.Linear(64, 64),
        torch.nn.ReLU(),
        torch.nn.Linear(64, 1),
    )
