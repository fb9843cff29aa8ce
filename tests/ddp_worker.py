"""Run under torchrun by test_ddp.py: one rank of a data-parallel training job.

Every rank records the events its two DataLoader workers deliver in each epoch,
then trains a small model with DistributedDataParallel on the same loader and
saves its final weights. Usage: ``ddp_worker.py DATASET_DIR OUT_DIR``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from mlaas4hep.data.branches import BranchSelection
from mlaas4hep.data.sources import resolve_sources
from mlaas4hep.train.config import TrainConfig
from mlaas4hep.train.loaders import TorchEvents
from mlaas4hep.train.torch_trainer import fit_torch
from mlaas4hep.transform.scan import ScanOptions, scan

EPOCHS = 2


def main() -> None:
    dataset, out = Path(sys.argv[1]), Path(sys.argv[2])
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    sources = resolve_sources(str(dataset / "files.txt"), labels=str(dataset / "labels.txt"))
    spec, _ = scan(
        sources,
        BranchSelection(include="Jet_pt,Jet_eta,MET_pt,nJet"),
        options=ScanOptions(length=6, pad_value=0.0),
    )
    # 14 chunks of 600 events over 4 shards: the two ranks get 8 and 6 chunks (uneven)
    events = TorchEvents(sources, spec, batch_size=128, seed=7, stream_options={"step_size": 600})
    for epoch in range(EPOCHS):
        events.set_epoch(epoch)
        keys = [
            batch["event"].numpy().astype(np.int64) * 2 + batch["label"].numpy().astype(np.int64)
            for batch in DataLoader(events, batch_size=None, num_workers=2)
        ]
        np.save(out / f"seen_rank{rank}_epoch{epoch}.npy", np.concatenate(keys))
    torch.manual_seed(1)  # the same initial weights on every rank
    model = torch.nn.Sequential(
        torch.nn.Linear(len(spec.columns()), 16), torch.nn.ReLU(), torch.nn.Linear(16, 1)
    )
    config = TrainConfig(epochs=EPOCHS, loader_workers=2, patience=None, learning_rate=0.01, seed=1)
    trained = fit_torch(model, events, events, config)
    torch.save(trained.model.model.state_dict(), out / f"state_rank{rank}.pt")
    np.save(out / f"history_rank{rank}.npy", np.array(trained.history.val_loss))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
