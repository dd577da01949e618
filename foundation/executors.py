"""How a stage's independent pieces of work are spread out: in-process, local processes, or Ray.

Stages take a `map_fn(fn, items)` and never import Ray themselves, so the same stage code runs in
a unit test on 200 images and as Ray tasks on a cluster, as img2dataset's distributors do.
Results come back in completion order; stages must not depend on it.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import logging
import multiprocessing
import os
import signal
import sys
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, ThreadPoolExecutor, as_completed, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Protocol, TypeVar

from foundation.errors import WorkerCrashed

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>

T = TypeVar("T")
R = TypeVar("R")
MapFn = Callable[[Callable[[T], R], Iterable[T]], Iterator[R]]


class WritesOneFile(Protocol):
    out: str


def run_unfinished(
    map_fn: MapFn, fn: Callable[[Any], R], tasks: list[WritesOneFile], done: Callable[[R], object] = lambda _: None
) -> None:
    """Run the tasks whose output file (`task.out`, written atomically) does not exist yet, so a
    killed stage keeps the chunks it finished; `done` is called with each task's result."""
    for result in map_fn(fn, [task for task in tasks if not Path(task.out).exists()]):
        done(result)


def serial_map(fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
    """Run every item in this process (stages whose work already uses every core, like Faiss searches)."""
    for item in items:
        yield fn(item)


def process_map(workers: int, attempts: int = 2) -> MapFn:
    """A map over a pool of `workers` local processes that survives a process dying hard.

    A pool that loses a process (a segfault in a native decoder, the OOM killer) breaks as a whole
    and cannot say whose item killed it. So the items it had not finished are run again one per
    process (`isolated`), where a death names its item; an item whose process dies `attempts`
    times in all is reported in a `WorkerCrashed` raised once every other item is done. An
    exception `fn` raises is raised here as it is.
    """

    def run(fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        unfinished = dict(enumerate(items))
        with worker_pool(max(workers, 1)) as pool:
            futures = {pool.submit(fn, item): index for index, item in unfinished.items()}
            try:
                for future in as_completed(futures):
                    result = future.result()
                    del unfinished[futures[future]]
                    yield result
            except BrokenProcessPool:
                log.warning("a worker process died; running its %d unfinished items one per process", len(unfinished))
        if unfinished:
            yield from isolated(fn, list(unfinished.values()), workers, max(attempts - 1, 1))

    return run


def isolated(fn: Callable[[T], R], items: list[T], workers: int, attempts: int) -> Iterator[R]:
    """Each item in a child process of its own, `workers` at a time; an item whose process dies is
    run again, and after `attempts` deaths reported in a `WorkerCrashed` once the others are done."""
    waiting = deque(enumerate(items))
    deaths: Counter[int] = Counter()
    crashed: list[T] = []
    running: dict[Future, tuple[int, T, ProcessPoolExecutor]] = {}
    try:
        while waiting or running:
            while waiting and len(running) < max(workers, 1):
                index, item = waiting.popleft()
                child = worker_pool(1)
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
        raise WorkerCrashed(crashed, "its process died on every try")


def worker_pool(workers: int) -> ProcessPoolExecutor:
    """A process pool whose workers die with the process that started them. A forked worker holds
    its own copy of the pool's task pipe, so after a SIGKILL of the driver it would wait on that
    pipe forever, holding its memory, and a re-run would start beside it."""
    context = multiprocessing.get_context()  # what ProcessPoolExecutor would pick by itself
    parent = os.getpid() if context.get_start_method() == "fork" else None  # else a fork server starts them
    return ProcessPoolExecutor(workers, context, initializer=_die_with_parent, initargs=(parent,))


def _die_with_parent(parent: int | None) -> None:
    """Pool initializer: ask Linux to SIGKILL this worker when its parent dies (elsewhere, a no-op).
    Linux sends it when the thread that started the worker ends; stages start pools from their own."""
    if sys.platform != "linux":
        return
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if parent is not None and os.getppid() != parent:  # the parent died before the request was made
        os._exit(1)


def prefetched(fn: Callable[[T], R], items: Iterable[T], ahead: int) -> Iterator[R]:
    """`fn(item)` for each item, in order, computed up to `ahead` items in advance on threads, so
    reading and decoding the next shards overlaps the model's work on this one (PIL, zlib and file
    reads release the GIL). `ahead=0` computes each when it is asked for."""
    if ahead <= 0:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(max_workers=ahead) as pool:
        window: deque[Future] = deque()
        for item in items:
            window.append(pool.submit(fn, item))
            if len(window) > ahead:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()


def ray_map(num_cpus: float = 1.0, in_flight: int | None = None) -> MapFn:
    """A map over Ray tasks on whatever cluster `ray.init()` connected to (one task per item).

    At most `in_flight` tasks are out at once (by default twice as many as the cluster's CPUs run
    together, and at least 64), items being drawn as tasks finish: submitting a million shards at
    once would hold a million task handles and their arguments, and every `ray.wait` would scan
    them all, which makes the map quadratic in the number of tasks.

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
        limit = in_flight or max(64, int(2 * ray.cluster_resources().get("CPU", 1) / num_cpus))
        todo = iter(items)
        pending = {remote.remote(item): item for item in itertools.islice(todo, limit)}
        crashed: list[T] = []
        try:
            while pending:
                (done,), _ = ray.wait(list(pending), num_returns=1)
                item = pending.pop(done)
                pending.update({remote.remote(more): more for more in itertools.islice(todo, 1)})
                try:
                    yield ray.get(done)
                except (WorkerCrashedError, OutOfMemoryError):
                    crashed.append(item)
        finally:
            # A task's error ends the map: the rest is cancelled, not waited for, so that their own
            # errors are not printed as Ray's "unhandled errors" after the one the user is told. A
            # task that had already failed when its cancel came still would be, unless its outcome
            # is read: so each is, quietly, once the cancels have landed (interrupted tasks end at once).
            for ref in pending:
                ray.cancel(ref)
            if pending:
                ended, _ = ray.wait(list(pending), num_returns=len(pending), timeout=10)
                for ref in ended:
                    with contextlib.suppress(Exception):
                        ray.get(ref)
        if crashed:
            raise WorkerCrashed(crashed, "Ray's task retries exhausted")

    return run
