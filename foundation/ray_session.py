"""Connecting to Ray: the cluster `ray job submit` runs us on (RAY_ADDRESS), else an embedded local one."""

from __future__ import annotations

import logging
import os


def connect_ray() -> None:
    """`ray.init` once per process; quiet on the driver, no dashboard for an embedded cluster."""
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    options = {} if address else {"include_dashboard": False, "num_cpus": os.cpu_count()}
    ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING, **options)
    ray.data.DataContext.get_current().enable_progress_bars = False
