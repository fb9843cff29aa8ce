"""Data-parallel training under torchrun: 2 ranks (gloo, CPU) × 2 DataLoader workers each."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mlaas4hep.datasets import generate_dataset
from mlaas4hep.train.metrics import read_metrics
from mlaas4hep.train.package import load_package

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ddp")
    # 3 files a sample of uneven sizes: the shards get different numbers of chunks
    generate_dataset(folder, n_events=4100, n_files=3, seed=3)
    return folder


def torchrun(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TORCHRUN, *args], capture_output=True, text=True, timeout=600, check=False
    )


@pytest.mark.slow
def test_every_event_once_per_epoch_and_ranks_agree(dataset: Path, tmp_path: Path) -> None:
    worker = Path(__file__).with_name("ddp_worker.py")
    result = torchrun(str(worker), str(dataset), str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    for epoch in range(2):
        seen = [np.load(tmp_path / f"seen_rank{r}_epoch{epoch}.npy") for r in range(2)]
        assert all(len(s) > 0 for s in seen)  # both ranks got work
        everything = np.concatenate(seen)
        assert len(everything) == len(np.unique(everything)) == 2 * 4100  # exactly once
        assert not set(seen[0]) & set(seen[1])
    states = [torch.load(tmp_path / f"state_rank{r}.pt") for r in range(2)]
    assert states[0].keys() == states[1].keys()
    for name in states[0]:
        torch.testing.assert_close(states[0][name], states[1][name])
    histories = [np.load(tmp_path / f"history_rank{r}.npy") for r in range(2)]
    np.testing.assert_array_equal(histories[0], histories[1])  # losses reduced over ranks


@pytest.mark.slow
def test_train_command_under_torchrun(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = torchrun(
        "--module", "mlaas4hep", "train", "--files", str(dataset / "files.txt"),
        "--labels", str(dataset / "labels.txt"), "--model", str(EXAMPLES / "mlp.py"),
        "--params", str(EXAMPLES / "params.json"), "--epochs", "2", "--fout", str(out), "--quiet",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("model package written to") == 1  # rank 0 reports and exports
    assert load_package(out / "model").framework == "torch"
    assert read_metrics(out / "metrics.json")["splits"]["test"]["auc"] > 0.8
