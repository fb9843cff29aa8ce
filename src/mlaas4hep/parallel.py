"""Independent tasks run in this process or on a ``dask.distributed`` cluster.

``mlaas4hep scan`` and ``mlaas4hep predict`` cut their work into tasks (a file,
or an entry range of one) and run them with :func:`run_tasks`:

* ``scheduler``: the address of a running dask scheduler (``tcp://host:8786``);
  the workers must be able to import mlaas4hep and read the inputs;
* ``workers > 1``: a local cluster of that many single-threaded worker
  processes, started for the call and closed after it;
* otherwise one task after the other in this process.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from mlaas4hep.errors import ConfigError

Item = TypeVar("Item")
Result = TypeVar("Result")


def is_distributed(scheduler: str | None, workers: int) -> bool:
    """Whether :func:`run_tasks` runs the tasks on dask (else in this process)."""
    return scheduler is not None or workers > 1


def run_tasks(
    function: Callable[..., Result],
    items: Sequence[Item],
    *args: Any,
    scheduler: str | None = None,
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
    on_error: Callable[[Item, BaseException], Result] | None = None,
    on_result: Callable[[Result], None] | None = None,
) -> list[Result]:
    """``function(item, *args)`` for every item; the results in item order.

    ``on_result(result)`` and then ``progress(done, total)`` are called in
    this process as tasks finish, in the order they finish. A task that raises
    (or whose worker dies) raises here, unless ``on_error(item, exception)``
    turns it into a result.
    """
    finished = _Finished(len(items), progress, on_result)
    if workers < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}")
    if not is_distributed(scheduler, workers):
        results = []
        for item in items:
            try:
                results.append(function(item, *args))
            except Exception as exc:
                if on_error is None:
                    raise
                results.append(on_error(item, exc))
            finished(results[-1])
        return results
    return _run_on_dask(function, items, args, scheduler, workers, finished, on_error)


class _Finished:
    """Calls ``on_result`` and ``progress`` for each finished task."""

    def __init__(
        self,
        total: int,
        progress: Callable[[int, int], None] | None,
        on_result: Callable[[Any], None] | None,
    ) -> None:
        self.done, self.total = 0, total
        self.progress, self.on_result = progress, on_result

    def __call__(self, result: Any) -> None:
        self.done += 1
        if self.on_result is not None:
            self.on_result(result)
        if self.progress is not None:
            self.progress(self.done, self.total)


def _run_on_dask(
    function: Callable[..., Result],
    items: Sequence[Item],
    args: tuple[Any, ...],
    scheduler: str | None,
    workers: int,
    finished: _Finished,
    on_error: Callable[[Item, BaseException], Result] | None,
) -> list[Result]:
    try:
        from distributed import Client, LocalCluster, as_completed  # noqa: PLC0415 - optional
    except ImportError:
        raise ConfigError(
            "--scheduler and --workers need dask: pip install 'mlaas4hep[dask]'"
        ) from None
    cluster: Any = None
    if scheduler is None:
        # dashboard on any free port: a fixed one may be taken by another cluster
        cluster = LocalCluster(  # type: ignore[no-untyped-call]
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0"
        )
    try:
        try:
            client = Client(scheduler if cluster is None else cluster, timeout=30)  # type: ignore[no-untyped-call]
        except OSError as exc:
            raise ConfigError(f"cannot reach the dask scheduler {scheduler}: {exc}") from None
        with client:
            futures = [client.submit(function, item, *args, pure=False) for item in items]
            position = {future.key: i for i, future in enumerate(futures)}
            results: dict[int, Result] = {}
            for future in as_completed(futures):  # type: ignore[no-untyped-call]
                index = position[future.key]
                try:
                    results[index] = future.result()
                except Exception as exc:
                    if on_error is None:
                        client.cancel(futures)  # type: ignore[no-untyped-call]
                        raise
                    results[index] = on_error(items[index], exc)
                finished(results[index])
            return [results[i] for i in range(len(items))]
    finally:
        if cluster is not None:
            cluster.close()


__all__ = ["is_distributed", "run_tasks"]
