"""The ``mlaas4hep`` command: one entry point, one sub-command per job.

Every error a user can cause is an :class:`~mlaas4hep.errors.MlaasError`; the
CLI prints it as ``error: <message>`` and exits with status 2, never with a
traceback. Heavy imports happen inside the commands so ``--help`` stays fast.
"""

from __future__ import annotations

import json
import logging
import sys
import warnings
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console

from mlaas4hep import __version__
from mlaas4hep.errors import MlaasError

app = typer.Typer(
    name="mlaas4hep",
    help="Machine Learning as a Service for HEP: stream ROOT data, train models, serve them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
stdout = Console()


def fail(message: str) -> NoReturn:
    """Print a one-line error and leave with status 2."""
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mlaas4hep {__version__}")
        raise typer.Exit


@app.callback()
def _main(
    verbose: Annotated[
        int, typer.Option("--verbose", "-v", count=True, help="More log output (-v, -vv).")
    ] = 0,
    version: Annotated[  # noqa: ARG001 - handled by its eager callback
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


@app.command()
def generate(
    out: Annotated[Path, typer.Argument(help="Output directory.")] = Path("demo-data"),
    events: Annotated[
        int, typer.Option("--events", "-n", min=1, help="Events per sample (signal, background).")
    ] = 10_000,
    files: Annotated[int, typer.Option(min=1, help="Files per sample.")] = 1,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same files).")] = 42,
    fmt: Annotated[str, typer.Option("--format", help="ttree or rntuple.")] = "ttree",
    compression: Annotated[
        str, typer.Option(help="zlib, lz4, zstd, lzma or none (optionally with a level: zstd:5).")
    ] = "zlib",
    tree: Annotated[str, typer.Option(help="Tree name.")] = "Events",
    wide: Annotated[
        bool,
        typer.Option(
            "--wide", help="~900 branches with real NanoAOD names and dtypes instead of 35."
        ),
    ] = False,
) -> None:
    """Write a toy NanoAOD-like signal (ttbar-like) and background (W+jets-like) dataset.

    Also writes files.txt and labels.txt (signal = 1, background = 0) in OUT.
    """
    from mlaas4hep.datasets import generate_dataset

    dataset = generate_dataset(
        out,
        n_events=events,
        n_files=files,
        seed=seed,
        fmt=fmt,
        compression=compression,
        tree=tree,
        wide=wide,
    )
    for sample, paths in dataset.files.items():
        for path in paths:
            stdout.print(f"{sample:>10}  {path}", highlight=False)
    stdout.print(f"file list: {dataset.files_txt}  labels: {dataset.labels_txt}", highlight=False)


@app.command()
def inspect(
    target: Annotated[
        str, typer.Argument(help="FILE or FILE:tree; a local path or a root:// / https:// URL.")
    ],
    tree: Annotated[str | None, typer.Option(help="Tree name (instead of FILE:tree).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
    branches: Annotated[
        str | None,
        typer.Option(help="Only these branches (comma list, wildcards, re:regex)."),
    ] = None,
    stats_entries: Annotated[
        int, typer.Option(help="Entries read for length statistics (-1 = all).")
    ] = 100_000,
) -> None:
    """Show the trees, entries, branches, types, jaggedness, compression and sizes of a file."""
    from mlaas4hep.data.inspect import inspect_file, print_report
    from mlaas4hep.data.sources import split_tree_spec

    url, spec_tree = split_tree_spec(target)
    report = inspect_file(url, tree or spec_tree, branches=branches, stats_entries=stats_entries)
    if as_json:
        sys.stdout.write(json.dumps(report.to_dict(), indent=2) + "\n")
    else:
        print_report(report, stdout)


# Options shared by the commands that read a dataset.
Inputs = Annotated[
    list[str],
    typer.Argument(help="Files, globs, directories, files.txt lists or root:// / https:// URLs."),
]
Labels = Annotated[
    list[str] | None,
    typer.Option(help="labels.txt paired with the file list, or one value per input."),
]
Tree = Annotated[str | None, typer.Option(help="Tree name (default: the file's only tree).")]
Redirector = Annotated[str | None, typer.Option(help="Prefix for logical file names (/store/...).")]
Preproc = Annotated[
    Path | None,
    typer.Option("--preproc", help="Python file defining selection / new_variables / label."),
]
Nevts = Annotated[int, typer.Option(help="Events to read in all (-1 = all).")]
StepSize = Annotated[str, typer.Option(help="Events per chunk, or a size such as '100 MB'.")]
Workers = Annotated[
    int,
    typer.Option(min=1, help="Local dask worker processes, one task each (1: in this process)."),
]
Scheduler = Annotated[
    str | None, typer.Option(help="The address of a dask.distributed scheduler (tcp://host:8786).")
]
Branches = Annotated[
    str | None, typer.Option(help="Feature branches: comma list, wildcards, re:regex.")
]
Exclude = Annotated[str | None, typer.Option(help="Branches to leave out (patterns).")]
Identifiers = Annotated[
    str | None, typer.Option(help="Identifier branches (default run,event,luminosityBlock).")
]


def _step(value: str) -> int | str:
    return int(value) if value.isdigit() else value


def _list_option(values: list[str] | None) -> str | list[str] | None:
    """A repeated option: one list-file path stays a path, several values stay a list."""
    if not values:
        return None
    return values[0] if len(values) == 1 and values[0].endswith((".txt", ".list")) else values


def _fractions(option: str, value: str) -> dict[float, float]:
    """``LABEL:FRACTION,...`` as a mapping."""
    try:
        pairs = [item.split(":") for item in value.split(",")]
        return {float(label): float(fraction) for label, fraction in pairs}
    except ValueError:
        fail(f"{option} expects LABEL:FRACTION,... (e.g. 1:0.5,0:0.5), got {value!r}")


def _balance_option(value: str | None) -> str | dict[float, float] | None:
    """``undersample``, ``oversample`` or ``LABEL:FRACTION,...``."""
    if value is None or value in {"undersample", "oversample"}:
        return value
    return _fractions("--balance (undersample, oversample or fractions)", value)


@app.command()
def stream(
    inputs: Inputs,
    labels: Labels = None,
    weights: Annotated[
        list[str] | None, typer.Option(help="weights.txt or one weight per input.")
    ] = None,
    tree: Tree = None,
    branches: Branches = None,
    exclude: Exclude = None,
    identifiers: Identifiers = None,
    step_size: StepSize = "100 MB",
    nevts: Nevts = -1,
    epochs: Annotated[int, typer.Option(min=1, help="Passes over the data.")] = 1,
    shuffle: Annotated[bool, typer.Option(help="Shuffle pieces and events.")] = True,
    interleave: Annotated[
        bool, typer.Option(help="Mix all sources in every chunk (else one file after another).")
    ] = True,
    ratios: Annotated[
        str | None,
        typer.Option(
            help="Share of each label in every chunk, LABEL:FRACTION,... (default: sizes)."
        ),
    ] = None,
    shuffle_buffer: Annotated[
        int | None, typer.Option(help="Events in the shuffle buffer (default: one chunk).")
    ] = None,
    balance: Annotated[
        str | None,
        typer.Option(help="undersample, oversample, or target fractions LABEL:FRACTION,..."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    redirector: Redirector = None,
    retries: Annotated[int, typer.Option(min=1, help="Attempts per remote read.")] = 3,
    timeout: Annotated[float, typer.Option(help="Seconds per remote request.")] = 30.0,
    prefetch: Annotated[int, typer.Option(min=0, help="Chunks read ahead.")] = 2,
    threads: Annotated[int, typer.Option(min=1, help="Sources read in parallel.")] = 4,
    skip_bad_files: Annotated[
        bool, typer.Option(help="Skip unreadable files (reported) instead of failing.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Read a dataset as configured; show progress and a summary (events, MB, events/s)."""
    from mlaas4hep.data.branches import BranchSelection
    from mlaas4hep.data.reader import EventStream
    from mlaas4hep.data.rootfile import RetryPolicy
    from mlaas4hep.data.sources import resolve_sources
    from mlaas4hep.data.summary import print_summary, stream_with_progress, summary_dict

    sources = resolve_sources(
        inputs, labels=_list_option(labels), weights=_list_option(weights), redirector=redirector
    )
    with EventStream(
        sources,
        BranchSelection(include=branches, exclude=exclude, identifiers=identifiers),
        tree=tree,
        step_size=_step(step_size),
        nevts=nevts,
        interleave=interleave,
        shares=_fractions("--ratios", ratios) if ratios else None,
        shuffle=shuffle,
        shuffle_buffer=shuffle_buffer,
        balance=_balance_option(balance),
        seed=seed,
        prefetch=prefetch,
        threads=threads,
        retry=RetryPolicy(attempts=retries, timeout=timeout),
        skip_bad_files=skip_bad_files,
    ) as events:
        reports = stream_with_progress(events, epochs=epochs, console=console, quiet=as_json)
    if as_json:
        sys.stdout.write(json.dumps(summary_dict(events, reports), indent=2) + "\n")
    else:
        print_summary(events, reports, stdout)


def _length_overrides(values: list[str] | None) -> dict[str, str]:
    """``PATTERN=POLICY`` pairs of --length-of."""
    overrides = {}
    for item in values or []:
        pattern, sep, policy = item.partition("=")
        if not sep or not pattern or not policy:
            fail(f"--length-of expects PATTERN=max|qQ|N (e.g. 'Jet_*=8'), got {item!r}")
        overrides[pattern] = policy
    return overrides


def _image_spec(path: Path) -> dict[str, object]:
    """A validated image spec from a JSON file."""
    from mlaas4hep.transform.matrix import ImageSpec

    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        fail(f"cannot read the image spec {path}: {exc.strerror or exc}")
    except json.JSONDecodeError as exc:
        fail(f"{path} is not valid JSON: {exc}")
    return ImageSpec.from_dict(data).to_dict()


@app.command()
def scan(
    inputs: Inputs,
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the spec.")] = Path(
        "features.json"
    ),
    labels: Labels = None,
    tree: Tree = None,
    branches: Branches = None,
    exclude: Exclude = None,
    identifiers: Identifiers = None,
    redirector: Redirector = None,
    preproc: Preproc = None,
    nevts: Nevts = -1,
    step_size: StepSize = "100 MB",
    workers: Workers = 1,
    scheduler: Scheduler = None,
    length: Annotated[
        str, typer.Option(help="Jagged length: max, a quantile such as q0.95, or a number.")
    ] = "max",
    length_of: Annotated[
        list[str] | None, typer.Option(help="Per-branch length, PATTERN=POLICY (repeatable).")
    ] = None,
    normalize: Annotated[
        str, typer.Option(help="none, minmax, standard or robust (on real entries).")
    ] = "standard",
    log: Annotated[
        str | None, typer.Option(help="Branches to log1p before normalising (patterns).")
    ] = None,
    pad_value: Annotated[str, typer.Option(help="Pad value: nan or a number.")] = "nan",
    layout: Annotated[str, typer.Option(help="flat ([N, F]) or grouped ([N, C, L]).")] = "flat",
    clip: Annotated[str, typer.Option(help="Longer lists: clip (counted) or error.")] = "clip",
    images: Annotated[
        Path | None,
        typer.Option(help="JSON image spec (views, channels) for matrix-wise event images."),
    ] = None,
) -> None:
    """First pass: statistics of a dataset, written as the feature spec (features.json)."""
    from rich.progress import Progress

    from mlaas4hep.data.branches import BranchSelection
    from mlaas4hep.data.sources import resolve_sources
    from mlaas4hep.transform.scan import ScanOptions
    from mlaas4hep.transform.scan import scan as run_scan

    try:
        pad = float(pad_value)
    except ValueError:
        fail(f"--pad-value expects nan or a number, got {pad_value!r}")
    sources = resolve_sources(inputs, labels=_list_option(labels), redirector=redirector)
    options = ScanOptions(
        length=length,
        lengths=_length_overrides(length_of),
        normalization=normalize,
        log=[p for p in (log or "").split(",") if p],
        pad_value=pad,
        layout=layout,
        clip=clip,
    )
    with Progress(console=console) as progress:
        task = progress.add_task("scanning files", total=len(sources))
        spec, report = run_scan(
            sources,
            BranchSelection(include=branches, exclude=exclude, identifiers=identifiers),
            tree=tree,
            preprocessing=preproc,
            options=options,
            nevts=nevts,
            step_size=_step(step_size),
            workers=workers,
            scheduler=scheduler,
            progress=lambda done, total: progress.update(task, completed=done, total=total),
        )
    if images is not None:
        spec.images = _image_spec(images)
    spec.save(out)
    stdout.print(
        f"{len(spec.branches)} branches ({len(spec.flat_branches)} flat, "
        f"{len(spec.jagged_branches)} jagged) -> {len(spec.columns())} columns; "
        f"{report.selected:,} of {report.events:,} events selected; spec written to {out}",
        highlight=False,
    )
    for name, count in report.clipped.items():
        branch = spec.collections()[name][0]
        stdout.print(
            f"  {name}: length {branch.length} ({branch.length_policy}), {count:,} events clipped",
            highlight=False,
        )


@app.command()
def convert(
    inputs: Inputs,
    specs: Annotated[Path, typer.Option(help="The feature spec (features.json) from scan.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output .parquet, .h5 or .npz.")],
    labels: Labels = None,
    label_branch: Annotated[
        str | None, typer.Option(help="Take each event's label from this branch.")
    ] = None,
    redirector: Redirector = None,
    preproc: Preproc = None,
    nevts: Nevts = -1,
    step_size: StepSize = "100 MB",
    shuffle: Annotated[bool, typer.Option(help="Mix and shuffle events.")] = False,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    allow_other_data: Annotated[
        bool, typer.Option(help="Use a spec computed on other data (reported).")
    ] = False,
) -> None:
    """Write the transformed tensors (and masks, labels, identifiers) to Parquet, HDF5 or npz."""
    from rich.progress import Progress

    from mlaas4hep.data.sources import resolve_sources
    from mlaas4hep.transform.convert import convert as run_convert
    from mlaas4hep.transform.spec import FeatureSpec

    spec = FeatureSpec.load(specs)
    sources = resolve_sources(inputs, labels=_list_option(labels), redirector=redirector)
    with Progress(console=console) as progress:
        task = progress.add_task("converting", total=None)
        report = run_convert(
            sources,
            spec,
            out,
            preprocessing=preproc,
            label_branch=label_branch,
            allow_other_data=allow_other_data,
            nevts=nevts,
            step_size=_step(step_size),
            shuffle=shuffle,
            seed=seed,
            progress=lambda n: progress.advance(task, n),
        )
    for warning in report.warnings:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    clipped = ", ".join(f"{k}: {v:,}" for k, v in report.clipped.items()) or "none"
    stdout.print(
        f"{report.written:,} of {report.events:,} events written to {out}; clipped: {clipped}",
        highlight=False,
    )


@app.command()
def predict(
    model: Annotated[
        str,
        typer.Option(help="A model package directory, or NAME[:VERSION]@URL on a server."),
    ],
    files: Annotated[
        list[str],
        typer.Option(help="Files, globs, directories or files.txt lists to score (repeatable)."),
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out", "-o", help="scores.parquet (one file) or a directory of ROOT friend trees."
        ),
    ],
    tree: Tree = None,
    redirector: Redirector = None,
    step_size: StepSize = "100 MB",
    workers: Workers = 1,
    scheduler: Scheduler = None,
    entries_per_task: Annotated[
        int | None, typer.Option(min=1, help="Split big files into tasks of this many entries.")
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(envvar="MLAAS4HEP_TOKEN", help="Bearer token of the server (NAME@URL)."),
    ] = None,
) -> None:
    """Score ROOT files with a model package: Parquet scores or ROOT friend trees."""
    from rich.progress import Progress

    from mlaas4hep.predict.batch import ModelSource, open_model, predict_files, resolve_inputs

    source = open_model(ModelSource.parse(model, token=token))  # fails before the progress bar
    sources = resolve_inputs(files, redirector=redirector)
    with Progress(console=console) as progress:
        task = progress.add_task("scoring", total=None)
        report = predict_files(
            sources,
            source,
            out,
            tree=tree,
            step_size=_step(step_size),
            scheduler=scheduler,
            workers=workers,
            entries_per_task=entries_per_task,
            progress=lambda done, total: progress.update(task, completed=done, total=total),
        )
    stdout.print(
        f"{report.events:,} events in {report.files} files ({report.tasks} tasks) scored in "
        f"{report.seconds:.1f} s ({report.events_per_second:,.0f} events/s) -> {out}; "
        f"{len(report.failures)} failed",
        highlight=False,
    )
    for failure in report.failures:
        console.print(f"[bold red]failed:[/] {failure.file}: {failure.message}", highlight=False)
    if report.failures:
        fail(f"{len(report.failures)} of {len(sources)} files could not be scored")


def _labels_option(value: str | None) -> tuple[str | list[str] | None, str | None]:
    """MLaaS4HEP's --labels: a labels file, a comma list, one value, or a branch name."""
    if value is None:
        return None, None
    if Path(value).is_file():
        return value, None
    items = [v for v in value.split(",") if v]
    if len(items) > 1:
        return items, None
    try:
        float(value)
    except ValueError:
        return None, value  # the name of the branch holding each event's label
    return [value], None


@app.command()
def train(
    files: Annotated[
        str, typer.Option(help="files.txt, or a comma list of files / globs / directories / URLs.")
    ],
    model: Annotated[
        Path, typer.Option(help="model.py defining model(idim), model(input_shapes) or model().")
    ],
    labels: Annotated[
        str | None,
        typer.Option(help="labels.txt, a comma list (one per input), or the label branch name."),
    ] = None,
    params: Annotated[
        Path | None, typer.Option(help="MLaaS4HEP params.json (nevts, epochs, batch_size, ...).")
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="YAML/JSON training config (overrides params.json).")
    ] = None,
    preproc: Preproc = None,
    specs: Annotated[
        Path | None, typer.Option(help="A feature spec to use instead of scanning the train split.")
    ] = None,
    fout: Annotated[
        Path, typer.Option(help="Output directory: model/ package, metrics.json, plots/.")
    ] = Path("mlaas4hep-model"),
    epochs: Annotated[int | None, typer.Option(min=1, help="Override the epochs.")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Override the batch size.")] = None,
    nevts: Annotated[
        int | None, typer.Option(help="Override the events to use (-1 = all).")
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue from the last checkpoint in FOUT.")
    ] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bars (as verbose: 0).")] = False,
) -> None:
    """Train a user model on ROOT files and export a model package (ONNX + native + spec)."""
    from rich.table import Table

    from mlaas4hep.train.config import load_config
    from mlaas4hep.train.progress import TrainingProgress
    from mlaas4hep.train.workflow import train as run_train

    label_values, label_branch = _labels_option(labels)
    settings, warnings = load_config(
        params,
        config,
        {"epochs": epochs, "batch_size": batch_size, "nevts": nevts, "label_branch": label_branch},
    )
    for warning in warnings:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    inputs = files if Path(files).is_file() else [f for f in files.split(",") if f]
    result = run_train(
        inputs,
        label_values,
        model,
        config=settings,
        out=fout,
        specs=specs,
        preproc=preproc,
        resume=resume,
        progress=None
        if quiet or settings.verbose == 0
        else (lambda n, total: TrainingProgress(console, n, total)),
    )
    if result is None:  # another rank of a torchrun job: rank 0 reports
        return
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    table = Table(title=f"{result.framework} model from {model}")
    for column in ("split", "events", "ROC AUC", "accuracy", "loss"):
        table.add_column(column, justify="right")
    for split, found in result.splits.items():
        loss = "-" if found.loss is None else f"{found.loss:.4f}"
        table.add_row(split, f"{found.events:,}", f"{found.auc:.4f}", f"{found.accuracy:.4f}", loss)
    stdout.print(table)
    if result.baseline.get("feature"):
        stdout.print(
            f"cut-based baseline (best single cut, on {result.baseline['feature']}): "
            f"test ROC AUC {result.baseline['auc']:.4f}",
            highlight=False,
        )
    stdout.print(f"model package written to {result.package}", highlight=False)


@app.command()
def serve(
    repository: Annotated[
        str | None, typer.Option(help="Model repository: a directory or an fsspec URL [./models].")
    ] = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on [127.0.0.1].")] = None,
    port: Annotated[int | None, typer.Option(help="Port [8083, as TFaaS].")] = None,
    workers: Annotated[int | None, typer.Option(min=1, help="Server processes [1].")] = None,
    grpc_port: Annotated[
        int | None, typer.Option(help="Also serve Triton's gRPC API on this port (e.g. 8001).")
    ] = None,
    auth_tokens: Annotated[
        Path | None, typer.Option(help="Tokens file (scopes read/write/admin); turns auth on.")
    ] = None,
    tls_cert: Annotated[Path | None, typer.Option(help="TLS certificate (PEM).")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="TLS private key (PEM).")] = None,
    config: Annotated[
        Path | None, typer.Option(help="server.yaml with any setting (flags override it).")
    ] = None,
) -> None:
    """Serve the models of a repository over HTTP (TFaaS API)."""
    from mlaas4hep.serve.config import load_settings
    from mlaas4hep.serve.server import serve as run_server

    settings = load_settings(
        config,
        repository=repository,
        host=host,
        port=port,
        workers=workers,
        grpc_port=grpc_port,
        auth_tokens=str(auth_tokens) if auth_tokens else None,
        tls_cert=str(tls_cert) if tls_cert else None,
        tls_key=str(tls_key) if tls_key else None,
    )
    scheme = "https" if settings.tls_cert else "http"
    console.print(
        f"serving {settings.repository} on {scheme}://{settings.host}:{settings.port} "
        f"({settings.workers} worker{'s' if settings.workers > 1 else ''})",
        highlight=False,
    )
    run_server(settings, log_level=min(logging.INFO, logging.getLogger().getEffectiveLevel()))


@app.command()
def client(
    url: Annotated[str, typer.Option(help="The server's base URL.")] = "http://localhost:8083",
    token: Annotated[
        str | None, typer.Option(envvar="MLAAS4HEP_TOKEN", help="Bearer token of the server.")
    ] = None,
    upload: Annotated[
        Path | None,
        typer.Option(help='upload.json: {"model", "labels", "name", "params"} (TFaaS form).'),
    ] = None,
    bundle: Annotated[
        Path | None,
        typer.Option(help="Upload a .tar.gz bundle, a bundle directory or a model package."),
    ] = None,
    predict: Annotated[
        Path | None, typer.Option(help='input.json: {"keys", "values", "model"}.')
    ] = None,
    image: Annotated[
        Path | None, typer.Option(help="Classify a PNG/JPEG image (with --model).")
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="Model (NAME or NAME:VERSION) for --predict / --image.")
    ] = None,
    delete: Annotated[
        str | None, typer.Option(help="Delete a model (NAME) or one version (NAME:VERSION).")
    ] = None,
    models: Annotated[bool, typer.Option("--models", help="List the models.")] = False,
    params: Annotated[str | None, typer.Option(help="Show a model's params.")] = None,
) -> None:
    """Talk to a model server with TFaaS's client flags; prints the answer as JSON."""
    from mlaas4hep.client.command import run

    run(
        url,
        token,
        upload=upload,
        bundle=bundle,
        predict=predict,
        image=image,
        model=model,
        delete=delete,
        models=models,
        params=params,
    )


def main() -> None:
    """Console-script entry point: run the app, turning user errors into messages."""
    # XRootD's exit hook calls isinstance() on every live object, which touches
    # torch's deprecated ``torch.distributed.reduce_op`` and would end every run
    # that used torch with this FutureWarning.
    warnings.filterwarnings(
        "ignore", message="`torch.distributed.reduce_op` is deprecated", category=FutureWarning
    )
    try:
        app()
    except MlaasError as exc:
        try:
            fail(str(exc))
        except typer.Exit as done:
            sys.exit(done.exit_code)
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)
