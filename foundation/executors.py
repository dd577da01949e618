"""How a stage's independent pieces of work are spread out: in-process, local processes, or Ray.

Stages take a `map_fn(fn, items)` and never import Ray themselves, so the same stage code runs in
a unit test on 200 images and as Ray tasks on a cluster, as img2dataset's distributors do.
Results come back in completion order; stages must not depend on it.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Protocol, TypeVar

from foundation.errors import WorkerCrashed

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")
MapFn = Callable[[Callable[[T], R], Iterable[T]], Iterator[R]]


class WritesOneFile(Protocol):
    out: str


def run_unfinished(map_fn: MapFn, fn: Callable[[Any], object], tasks: list[WritesOneFile]) -> None:
    """Run the tasks whose output file (`task.out`, written atomically) does not exist yet, so a
    killed stage keeps the chunks it finished."""
    for _ in map_fn(fn, [task for task in tasks if not Path(task.out).exists()]):
        pass


def serial_map(fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
    """Run every item in this process (debugging, and workers=1)."""
    for item in items:
        yield fn(item)


def process_map(workers: int, attempts: int = 2) -> Callable[[Callable[[T], R], Iterable[T]], Iterator[R]]:
    """A map that runs each item in a child process of its own, `workers` at a time.

    One process per item, not one long-lived pool: a pool that loses a process to a hard crash (a
    segfault in a native decoder, the OOM killer) breaks as a whole and cannot say whose item killed
    it. Here a dead process names its item, which is run again; after `attempts` deaths it is
    reported in a `WorkerCrashed` raised once every other item is done. An exception `fn` raises is
    raised here as it is. Starting a process costs milliseconds; an item (a shard) costs seconds.
    """

    def run(fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        waiting = deque(enumerate(items))
        deaths: Counter[int] = Counter()
        crashed: list[T] = []
        running: dict[Future, tuple[int, T, ProcessPoolExecutor]] = {}
        try:
            while waiting or running:
                while waiting and len(running) < max(workers, 1):
                    index, item = waiting.popleft()
                    child = ProcessPoolExecutor(max_workers=1)
                    running[child.submit(fn, item)] = (index, item, child)
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    index, item, child = running.pop(future)
                    child.shutdown()
                    if not isinstance(future.exception(), BrokenProcessPool):
                        yield future.result()
                        continue
                    deaths[index] += 1
                    if deaths[index] < attempts:
                        log.warning("a worker process died on item %d; running it again", index)
                        waiting.append((index, item))
                    else:
                        crashed.append(item)
        finally:
            for _, _, child in running.values():
                child.shutdown(wait=False, cancel_futures=True)
        if crashed:
            raise WorkerCrashed(crashed, f"{attempts} tries each in a fresh process")

    return run


def ray_map(num_cpus: float = 1.0) -> Callable[[Callable[[T], R], Iterable[T]], Iterator[R]]:
    """A map over Ray tasks on whatever cluster `ray.init()` connected to (one task per item).

    Ray already runs a task again when its worker process dies (up to `max_retries`); an item
    still killing its worker after that is reported in a `WorkerCrashed` once the others are done,
    as `process_map` does.
    """
    import ray
    from ray.exceptions import OutOfMemoryError, WorkerCrashedError

    from foundation.ray_session import connect_ray

    connect_ray()

    def run(fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        remote = ray.remote(num_cpus=num_cpus)(fn)
        pending = {remote.remote(item): item for item in items}
        crashed: list[T] = []
        while pending:
            (done,), _ = ray.wait(list(pending), num_returns=1)
            item = pending.pop(done)
            try:
                yield ray.get(done)
            except (WorkerCrashedError, OutOfMemoryError):
                crashed.append(item)
        if crashed:
            raise WorkerCrashed(crashed, "Ray's task retries exhausted")

    return run
