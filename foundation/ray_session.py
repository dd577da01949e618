"""Connecting to Ray: the cluster `ray job submit` runs us on (RAY_ADDRESS), else an embedded local one."""

from __future__ import annotations

import logging
import os
import sys

from foundation.errors import LvdError


def connect_ray() -> None:
    """`ray.init` once per process; quiet on the driver, no dashboard for an embedded cluster."""
    import ray

    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        options = {} if address else {"include_dashboard": False, "num_cpus": os.cpu_count()}
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING, **options)
    configure_ray_data()


def configure_ray_data() -> None:
    """Ray Data as the stages use it: the stage draws its own progress bar, and an error of ours
    raised in a map function reaches the user as the entry point's one line, not as Ray's report.

    Ray Data wraps a map function's exception in a `UserCodeException` whose cause is lost on its
    way to the driver, so the raised error itself is asked for. Ray then takes it for a fault of
    its own: it logs two full tracebacks to the console and asks the user to report a Ray bug.
    Those records stay in the session's `ray-data.log`; only the console drops them.
    """
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.raise_original_map_exception = True
    for handler in ray_data_consoles():
        if not any(isinstance(f, ToldByTheEntryPoint) for f in handler.filters):
            handler.addFilter(ToldByTheEntryPoint())


def ray_data_consoles() -> list[logging.Handler]:
    """The handlers Ray Data logs to the console with (not its session's log file)."""
    return [
        handler
        for handler in logging.getLogger("ray.data").handlers
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)
    ]


class ToldByTheEntryPoint(logging.Filter):
    """Drops a log record about an `LvdError` (the one it carries, or the one being handled while
    it is logged): the entry point tells that error in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else sys.exc_info()[1]
        return not (error is not None and isinstance(raised_in_task(error), LvdError))


def raised_in_task(exc: BaseException) -> BaseException:
    """The exception a Ray task raised, not the driver's copy of it: Ray wraps it in a subclass of
    both `RayTaskError` and its own type, whose text is the task's whole traceback, and keeps it as
    `cause`."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc
