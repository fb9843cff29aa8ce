"""Progress display and summaries of a stream, for the ``stream`` command."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from mlaas4hep.data.reader import EventStream, StreamReport


def stream_with_progress(
    events: EventStream, *, epochs: int, console: Console, quiet: bool = False
) -> list[StreamReport]:
    """Consume ``epochs`` epochs of ``events`` with a progress bar; one report per epoch."""
    reports = []
    total = events.total_events
    with Progress(
        TextColumn("[bold]epoch {task.fields[epoch]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:>12} ev/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=quiet,
        transient=False,
    ) as progress:
        for epoch in range(epochs):
            report = StreamReport()
            task = progress.add_task("read", total=total, epoch=epoch, rate="")
            for chunk in events.iter_epoch(epoch, report):
                progress.update(task, advance=len(chunk), rate=f"{report.events_per_second:,.0f}")
            progress.update(task, total=report.events, completed=report.events)
            reports.append(report)
    return reports


def summary_dict(events: EventStream, reports: list[StreamReport]) -> dict[str, Any]:
    """A JSON-ready summary of the passes over ``events``."""
    return {
        "features": events.features,
        "identifiers": events.identifiers,
        "chunk_events": events.chunk_events,
        "epochs": [
            {
                "events": r.events,
                "chunks": r.chunks,
                "megabytes": r.nbytes / 1e6,
                "seconds": r.seconds,
                "events_per_second": r.events_per_second,
                "megabytes_per_second": r.megabytes_per_second,
                "per_source": {events.sources[i].url: n for i, n in sorted(r.per_source.items())},
            }
            for r in reports
        ],
        "skipped": dict(events.skipped),
    }


def print_summary(events: EventStream, reports: list[StreamReport], console: Console) -> None:
    """Tables of what was read: per epoch, per source, and skipped files."""
    totals = Table(title="stream summary")
    for column in ("epoch", "events", "chunks", "MB", "seconds", "events/s", "MB/s"):
        totals.add_column(column, justify="right")
    for epoch, r in enumerate(reports):
        totals.add_row(
            str(epoch),
            f"{r.events:,}",
            str(r.chunks),
            f"{r.nbytes / 1e6:,.1f}",
            f"{r.seconds:.2f}",
            f"{r.events_per_second:,.0f}",
            f"{r.megabytes_per_second:,.1f}",
        )
    console.print(totals)
    console.print(
        f"{len(events.features)} feature branches, identifiers: "
        f"{', '.join(events.identifiers) or 'none'}; {events.chunk_events:,} events per chunk",
        highlight=False,
    )
    per_source = Table(title="events per source (last epoch)")
    for column in ("source", "label", "weight", "events"):
        per_source.add_column(column, justify="left" if column == "source" else "right")
    last = reports[-1] if reports else StreamReport()
    for i, source in enumerate(events.sources):
        label = "" if source.label is None else f"{source.label:g}"
        per_source.add_row(
            source.url, label, f"{source.weight:g}", f"{last.per_source.get(i, 0):,}"
        )
    console.print(per_source)
    for url, reason in events.skipped.items():
        console.print(f"[yellow]skipped[/] {url}: {reason}", highlight=False)
