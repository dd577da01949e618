"""The few exception types the product raises on bad input.

Each message names the file, key or sample, the bad value, and what to do, so a user can act on
it without reading a traceback.
"""

from __future__ import annotations


class LvdError(Exception):
    """Base class: an error the user can fix (bad config, bad input, missing file)."""


class ConfigError(LvdError):
    """A config file or override is invalid; raised before any work starts."""


class CorruptInput(LvdError):
    """An input file or archive cannot be read safely (unsafe tar member, unreadable listing)."""


class StageError(LvdError):
    """A stage cannot run: a missing input, an upstream stage not done, a run-dir conflict."""


class WorkerCrashed(LvdError):
    """Items whose worker process died (a native crash, the OOM killer) on every try.

    Raised by an executor after every other item is done, so the stage can deal with just these
    (ingest decodes their inputs one by one in child processes and quarantines the killer).
    """

    def __init__(self, items: list, detail: str):
        super().__init__(f"{len(items)} work items killed their worker process on every try ({detail})")
        self.items = items
