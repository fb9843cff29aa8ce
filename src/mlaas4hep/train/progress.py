"""Rich progress bars for training: one bar per epoch with events/s and the running loss."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Self

from rich.console import Console
from rich.progress import BarColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.progress import Progress as Bars

Progress = Callable[[str, int, dict[str, float]], None]
"""A trainer's report: ``progress(stage, events, values)``, the stage being
``start:<epoch>``, ``batch`` (``events`` more were trained on) or ``end``."""


class TrainingProgress:
    """A ``progress(stage, events, values)`` callback drawing epoch bars.

    ``events_per_epoch`` sizes the bar (an estimate: a selection may drop some).
    """

    def __init__(self, console: Console, epochs: int, events_per_epoch: int | None) -> None:
        self.epochs = epochs
        self.total = events_per_epoch
        self.bars = Bars(
            TextColumn("[bold]{task.description}"),
            BarColumn(bar_width=16),
            TextColumn("{task.completed:>9,.0f} ev"),
            TextColumn("{task.fields[rate]:>8,.0f} ev/s"),
            TextColumn("loss {task.fields[loss]}"),
            TimeElapsedColumn(),
            console=console,
        )
        self.task: TaskID | None = None
        self.started = 0.0
        self.events = 0

    def __enter__(self) -> Self:
        self.bars.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bars.stop()

    def __call__(self, stage: str, events: int, values: dict[str, float]) -> None:
        if stage.startswith("start:"):
            epoch = int(stage.split(":")[1])
            self.task = self.bars.add_task(
                f"epoch {epoch + 1}/{self.epochs}", total=self.total, rate=0.0, loss="-"
            )
            self.started, self.events = time.perf_counter(), 0
            return
        if self.task is None:
            return
        self.events += events
        rate = self.events / max(time.perf_counter() - self.started, 1e-9)
        loss = values.get("loss", math.nan)
        text = "-" if math.isnan(loss) else f"{loss:.4f}"
        if stage == "end":
            val = values.get("val_loss", math.nan)
            text += "" if math.isnan(val) else f"  val {val:.4f}"
            self.bars.update(self.task, total=self.events, completed=self.events, loss=text)
            return
        self.bars.update(self.task, advance=events, rate=rate, loss=text)
