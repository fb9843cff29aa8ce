"""The benchmark model of the serving benchmarks: an MLP 42 → 1024 → 1024 → 2 (softmax)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

FEATURES = 42


def write_model(repository: Path) -> Path:
    """The benchmark's MLP, exported to ONNX as version 1 of model ``mlp``."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(FEATURES, 1024),
        torch.nn.ReLU(),
        torch.nn.Linear(1024, 1024),
        torch.nn.ReLU(),
        torch.nn.Linear(1024, 2),
        torch.nn.Softmax(dim=1),
    ).eval()
    directory = repository / "mlp" / "1"
    directory.mkdir(parents=True)
    path = directory / "model.onnx"
    torch.onnx.export(
        model,
        (torch.zeros(1, FEATURES),),
        str(path),
        input_names=["x"],
        output_names=["probabilities"],
        dynamic_axes={"x": {0: "batch"}, "probabilities": {0: "batch"}},
        dynamo=False,
    )
    (directory / "params.json").write_text(
        json.dumps({"name": "mlp", "features": [f"f{i}" for i in range(FEATURES)]})
    )
    return path
