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
from foundation.ray_session import raised_in_task

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
    told = raised_in_task(exc)
    lines = str(told).strip().splitlines() or [""]
    if isinstance(told, LvdError):
        # Ours are one line, but for a config error's list of bad keys. Ray Data appends its retry
        # advice to a task's error on lines of its own: a task's error is its first line.
        return "error: " + (lines[0] if told is not exc else "\n".join(lines))
    return f"error: {type(told).__name__}: {lines[0]} (--debug or {DEBUG_ENV}=1 shows the traceback)"
