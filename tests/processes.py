"""Finding a test's leftover or target processes by their command line (Ray sets its workers' to
`ray::<task>`), so tests can check that none outlived a kill, or kill one on purpose."""

from __future__ import annotations

import os
from collections.abc import Collection

import psutil


def alive_with(text: str, sessions: Collection[int] | None = None) -> list[psutil.Process]:
    """Live processes (not zombies, not this one) whose command line contains `text`; with
    `sessions`, only those in one of these sessions (the ids of the `start_new_session` processes
    they descend from)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        if proc.pid == os.getpid() or proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if text in " ".join(proc.info["cmdline"] or []) and (sessions is None or _session(proc) in sessions):
            found.append(proc)
    return found


def _session(proc: psutil.Process) -> int | None:
    try:
        return os.getsid(proc.pid)
    except ProcessLookupError:
        return None
