"""Epoch plans, apportioning, class balancing: pure functions, checked exhaustively."""

from __future__ import annotations

import numpy as np
import pytest

from mlaas4hep.data.shuffle import apportion, balance_index, epoch_rng, plan_epoch, split_units
from mlaas4hep.errors import ConfigError


def covered(plan: list, n_sources: int) -> list[list[int]]:
    entries: list[list[int]] = [[] for _ in range(n_sources)]
    for chunk in plan:
        for seg in chunk:
            for start, stop in seg.ranges:
                entries[seg.source].extend(range(start, stop))
    return entries


def units(*ranges: tuple[int, int], cluster: int = 100) -> list[np.ndarray]:
    return [split_units(a, b, range(0, b, cluster), 10**9) for a, b in ranges]


def test_split_units_follows_clusters_and_caps_their_size() -> None:
    assert split_units(0, 10, [0, 4, 10], 100).tolist() == [0, 4, 10]
    assert split_units(2, 9, [0, 4, 10], 100).tolist() == [2, 4, 9]
    assert split_units(0, 10, [0, 10], 3).tolist() == [0, 2, 5, 7, 10]
    assert split_units(5, 5, [0, 10], 3).tolist() == [5, 5]


def test_apportion_is_exact_and_proportional() -> None:
    assert apportion(10, [1, 1, 1]) == [4, 3, 3]
    assert sum(apportion(1001, [3.0, 5.0, 7.0])) == 1001
    assert apportion(100, [30, 70]) == [30, 70]
    assert apportion(0, [1, 2]) == [0, 0]


@pytest.mark.parametrize("rng", [None, epoch_rng(1, 0)])
def test_interleaved_plan_reads_every_entry_once_in_proportion(rng: object) -> None:
    ranges = [(0, 1000), (100, 400), (0, 0), (5, 2005)]
    plan = plan_epoch(units(*ranges), 250, rng=rng)  # type: ignore[arg-type]
    entries = covered(plan, 4)
    for (start, stop), got in zip(ranges, entries, strict=True):
        assert sorted(got) == list(range(start, stop))
    assert len(plan) == 14  # ceil(3300 / 250)
    for chunk in plan:
        sizes = {seg.source: len(seg) for seg in chunk}
        total = sum(sizes.values())
        # every chunk holds every non-empty source, in proportion to its size
        assert set(sizes) == {0, 1, 3}
        assert abs(sizes[0] / total - 1000 / 3300) < 0.02
        assert abs(sizes[3] / total - 2000 / 3300) < 0.02


def test_shuffled_plan_is_deterministic_per_seed_and_epoch() -> None:
    edges = units((0, 5000), (0, 3000))

    def starts(seed: int, epoch: int) -> list[int]:
        return [c[0].ranges[0][0] for c in plan_epoch(edges, 400, rng=epoch_rng(seed, epoch))]

    assert starts(7, 0) == starts(7, 0)
    assert starts(7, 0) != starts(7, 1)
    assert starts(7, 0) != starts(8, 0)
    assert starts(7, 0) != sorted(starts(7, 0))


def test_sequential_plan_follows_files_like_uproot_iterate() -> None:
    plan = plan_epoch(units((0, 25), (0, 10), cluster=8), 10, interleave=False)
    assert [[(s.source, s.ranges) for s in c] for c in plan] == [
        [(0, ((0, 10),))],
        [(0, ((10, 20),))],
        [(0, ((20, 25),))],
        [(1, ((0, 10),))],
    ]
    shuffled = plan_epoch(
        units((0, 25), (0, 10), cluster=8), 10, interleave=False, rng=epoch_rng(0, 0)
    )
    assert sorted(covered(shuffled, 2)[0]) == list(range(25))
    assert covered(shuffled, 2)[0] != list(range(25))


def test_pieces_walk_whole_units_so_each_is_decompressed_once() -> None:
    edges = units((0, 1000), (0, 3000), cluster=500)
    plan = plan_epoch(edges, 100, rng=epoch_rng(3, 0))
    for source, unit_edges in enumerate(edges):
        visited = []
        for chunk in plan:
            for seg in chunk:
                if seg.source == source:
                    for start, _ in seg.ranges:
                        unit = int(np.searchsorted(unit_edges, start, side="right")) - 1
                        if not visited or visited[-1] != unit:
                            visited.append(unit)
        assert sorted(visited) == list(range(len(unit_edges) - 1))  # each unit entered once


def test_shares_change_the_mixture_and_stop_at_the_first_exhausted_source() -> None:
    plan = plan_epoch(units((0, 1000), (0, 9000)), 200, shares=[0.5, 0.5])
    for chunk in plan:
        assert abs(len(chunk[0]) - len(chunk[1])) <= 1
    entries = covered(plan, 2)
    assert sorted(entries[0]) == list(range(1000))
    assert len(set(entries[1])) == len(entries[1]) == 1000


def test_plan_rejects_bad_chunk_size() -> None:
    with pytest.raises(ConfigError, match="at least 1 event"):
        plan_epoch(units((0, 10)), 0)


def test_balancing_modes() -> None:
    labels = np.array([0.0] * 80 + [1.0] * 20)
    rng = np.random.default_rng(0)
    under = labels[balance_index(labels, "undersample", rng)]
    assert (under == 0).sum() == (under == 1).sum() == 20
    over_index = balance_index(labels, "oversample", rng)
    over = labels[over_index]
    assert (over == 0).sum() == (over == 1).sum() == 80
    assert set(np.flatnonzero(labels == 1)) <= set(over_index)
    target = labels[balance_index(labels, {0: 0.75, 1: 0.25}, rng)]
    assert (target == 1).sum() == 20
    assert (target == 0).sum() == 60
    with pytest.raises(ConfigError, match="needs a label"):
        balance_index(np.array([np.nan, 1.0]), "undersample", rng)
    with pytest.raises(ConfigError, match="balance must be one of"):
        balance_index(labels, "sideways", rng)
