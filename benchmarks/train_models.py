"""Test ROC AUC of the example models on the demo data, with the cut-based baseline.

Generates the demo's signal / background dataset (``--events`` per sample, seed 42),
trains every model file of ``examples/`` through :func:`mlaas4hep.train.workflow.train`
(the code behind ``mlaas4hep train``) with ``examples/params.json`` (and
``examples/grouped.yaml`` for the DeepSets model), and prints per model: the test
split's events, ROC AUC and accuracy, the best single cut's AUC on the same events,
the epochs run and the wall time.

    python benchmarks/train_models.py [--events 20000] [--epochs 5]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from mlaas4hep.datasets import generate_dataset
from mlaas4hep.train.config import load_config
from mlaas4hep.train.workflow import train

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
MODELS = {
    "ex_pytorch.py": "params.json",
    "ex_keras.py": "params.json",
    "mlp.py": "params.json",
    "xgb.py": "params.json",
    "deepsets.py": "grouped.yaml",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000, help="events per sample")
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    console = Console(width=120)
    table = Table(title=f"test split of {2 * args.events:,} generated events (70/15/15 split)")
    for column in (
        "model",
        "framework",
        "test events",
        "ROC AUC",
        "accuracy",
        "cut AUC",
        "epochs",
        "seconds",
    ):
        table.add_column(column, justify="right")
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "data"
        generate_dataset(data, n_events=args.events, seed=42)
        for model, settings in MODELS.items():
            if settings.endswith(".json"):
                config, _ = load_config(
                    EXAMPLES / settings, overrides={"epochs": args.epochs, "plots": False}
                )
            else:
                config, _ = load_config(config=EXAMPLES / settings, overrides={"plots": False})
            started = time.perf_counter()
            result = train(
                str(data / "files.txt"), str(data / "labels.txt"), EXAMPLES / model,
                config=config, out=Path(folder) / model,
            )  # fmt: skip
            seconds = time.perf_counter() - started
            assert result is not None
            test = result.splits["test"]
            table.add_row(
                model, result.framework, f"{test.events:,}", f"{test.auc:.4f}", f"{test.accuracy:.4f}",
                f"{result.baseline['auc']:.4f} ({result.baseline['feature']})",
                str(len(result.history.train_loss) or 1), f"{seconds:.0f}",
            )  # fmt: skip
    console.print(table)


if __name__ == "__main__":
    main()
