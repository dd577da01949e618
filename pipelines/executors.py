"""How a stage's independent pieces of work are spread out: in-process, a local process pool, or Ray.

Stages in `curation/` take a `map_fn(fn, items)` and never import Ray themselves, so the same
stage code runs in a unit test on 200 images and as Ray tasks on a cluster (STYLE.md §1).
Results come back in completion order; stages must not depend on it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def serial_map(fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
    """Run every item in this process (debugging, and workers=1)."""
    for item in items:
        yield fn(item)


def process_map(workers: int) -> Callable[[Callable[[T], R], Iterable[T]], Iterator[R]]:
    """A map over a local pool of `workers` processes; an exception in a worker is raised here."""

    def run(fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        items = list(items)
        if workers <= 1 or len(items) <= 1:
            yield from serial_map(fn, items)
            return
        with ProcessPoolExecutor(max_workers=workers) as pool:
            pending = {pool.submit(fn, item) for item in items}
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    yield future.result()

    return run


def ray_map(num_cpus: float = 1.0) -> Callable[[Callable[[T], R], Iterable[T]], Iterator[R]]:
    """A map over Ray tasks on whatever cluster `ray.init()` connected to (one task per item)."""
    import ray

    from pipelines.ray_session import connect_ray

    connect_ray()

    def run(fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        remote = ray.remote(num_cpus=num_cpus)(fn)
        pending = [remote.remote(item) for item in items]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            yield ray.get(done[0])

    return run
