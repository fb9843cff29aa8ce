"""The ``mlaas4hep`` command as a user runs it: a real process, messages not tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import XRootDServer, shared_file
from helpers import write_indexed

COMMAND = [sys.executable, "-c", "from mlaas4hep.cli import main; main()"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*COMMAND, *args], capture_output=True, text=True, timeout=120, check=False
    )


def assert_clean_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert "error:" in result.stderr
    message = " ".join(result.stderr.split())  # rich may wrap long lines
    for fragment in fragments:
        assert fragment in message, message


@pytest.fixture(scope="module")
def listed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("cli")
    files = [write_indexed(folder / f"f{i}.root", 600 * (i + 1), 10_000 * i) for i in range(2)]
    listing = folder / "files.txt"
    listing.write_text("".join(f"{p}\n" for p in files))
    labels = folder / "labels.txt"
    labels.write_text("1\n0\n")
    return listing, labels


def test_help_and_version() -> None:
    result = run("--help")
    assert result.returncode == 0
    for command in ("generate", "inspect", "stream"):
        assert command in result.stdout
    assert run("--version").stdout.startswith("mlaas4hep ")


def test_runs_that_used_torch_end_without_xrootd_exit_warnings() -> None:
    # XRootD's exit hook touches every object, torch's deprecated reduce_op included
    code = (
        "import sys, torch.distributed, XRootD.client\n"
        "from mlaas4hep.cli import main\n"
        "sys.argv = ['mlaas4hep', '--version']\n"
        "main()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("mlaas4hep ")
    assert "Warning" not in result.stderr, result.stderr


def test_stream_json_summary(listed: tuple[Path, Path]) -> None:
    listing, labels = listed
    result = run(
        "stream", str(listing), "--labels", str(labels), "--step-size", "250",
        "--epochs", "2", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert [e["events"] for e in summary["epochs"]] == [1800, 1800]
    assert list(summary["epochs"][0]["per_source"].values()) == [600, 1200]
    assert summary["identifiers"] == ["run", "event"]
    assert summary["features"] == ["flat", "nX", "X_val"]
    assert summary["skipped"] == {}


def test_stream_table_and_options(listed: tuple[Path, Path]) -> None:
    listing, labels = listed
    result = run(
        "stream", str(listing), "--labels", str(labels), "--branches", "X_*",
        "--nevts", "300", "--balance", "undersample", "--no-shuffle",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "stream summary" in result.stdout
    assert "1 feature branches" in result.stdout
    assert "f1.root" in result.stdout


def test_stream_ratios_set_the_mixture(listed: tuple[Path, Path]) -> None:
    listing, labels = listed
    result = run(
        "stream", str(listing), "--labels", str(labels), "--ratios", "1:0.5,0:0.5",
        "--step-size", "200", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    per_source = list(json.loads(result.stdout)["epochs"][0]["per_source"].values())
    assert per_source == [600, 600]  # the larger file stops when the smaller runs out


def test_stream_errors_are_messages(listed: tuple[Path, Path], tmp_path: Path) -> None:
    listing, _ = listed
    assert_clean_error(run("stream", str(tmp_path / "none.root")), "file not found", "none.root")
    assert_clean_error(
        run("stream", str(listing), "--branches", "X_vall"), "unknown branch 'X_vall'", "X_val"
    )
    assert_clean_error(run("stream", str(listing), "--tree", "Nope"), "tree 'Nope' not found")
    bad_labels = tmp_path / "labels.txt"
    bad_labels.write_text("1\n")
    assert_clean_error(
        run("stream", str(listing), "--labels", str(bad_labels)), "has 1 labels but there are 2"
    )
    assert_clean_error(run("stream", str(listing), "--step-size", "lots"), "step size 'lots'")
    assert_clean_error(run("stream", str(listing), "--balance", "1:x"), "--balance")
    assert_clean_error(run("stream", str(listing), "--ratios", "1"), "--ratios expects")
    truncated = tmp_path / "truncated.root"
    truncated.write_bytes(shared_file("uproot-HZZ.root").read_bytes()[:50_000])
    assert_clean_error(run("stream", str(truncated)), "truncated.root")


def test_stream_skip_bad_files_reports_them(listed: tuple[Path, Path], tmp_path: Path) -> None:
    listing, _ = listed
    broken = tmp_path / "broken.root"
    broken.write_bytes(b"not a root file at all" * 100)
    result = run("stream", *listing.read_text().split(), str(broken), "--skip-bad-files", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert list(summary["skipped"]) == [str(broken)]
    assert summary["epochs"][0]["events"] == 1800


def test_stream_remote_unreachable_is_a_message(xrootd_server: XRootDServer) -> None:
    url = xrootd_server.url(xrootd_server.root / "missing.root")
    assert_clean_error(run("stream", url, "--retries", "1"), "cannot open root://", "missing.root")
    good = xrootd_server.publish(shared_file("uproot-Zmumu.root"))
    result = run("stream", good, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["epochs"][0]["events"] == 2304
