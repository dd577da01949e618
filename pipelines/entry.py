"""What every entry point (`lvd`, `python -m pipelines.curate`, the torchrun modules) does around
its work: logging set up once, and a failure told in one line, not a traceback.

A crawl of a billion files meets every kind of fault; a person reading a terminal should see the
cause (a config key, a missing path, a stage that cannot run) without scrolling through frames.
`--debug` or `LVD_DEBUG=1` brings the traceback back for whoever is fixing the code.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

from foundation.errors import LvdError

DEBUG_ENV = "LVD_DEBUG"


def debugging() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def setup_logging() -> None:
    """Library warnings (a repeated URL, a shard retried) reach stderr under every entry point."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")


def exit_code_of(work: Callable[[], int | None]) -> int:
    """Run `work`; an exception becomes one line on stderr and exit code 2 (a fault the user can fix:
    config, input, stage order) or 1 (anything else), unless debugging, when it propagates."""
    setup_logging()
    try:
        return work() or 0
    except Exception as exc:
        if debugging():
            raise
        print(one_line(exc), file=sys.stderr)
        return 2 if isinstance(exc, LvdError) else 1


def one_line(exc: Exception) -> str:
    exc = raised_in_task(exc)
    if isinstance(exc, LvdError):
        return f"error: {exc}"
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"error: {type(exc).__name__}: {first} (--debug or {DEBUG_ENV}=1 shows the traceback)"


def raised_in_task(exc: BaseException) -> BaseException:
    """The exception a Ray task raised, not the driver's copy of it: Ray wraps it in a subclass of
    both `RayTaskError` and its own type, whose text is the task's whole traceback, and keeps it as
    `cause`."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc
