"""Every benchmark script still imports (they run by hand, so a renamed function would otherwise go
unnoticed), and RESULTS.md is up to date with results.jsonl."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCHMARKS = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py"))


@pytest.mark.parametrize("script", BENCHMARKS, ids=lambda p: p.name)
def test_benchmark_imports_and_has_a_main(script):
    spec = importlib.util.spec_from_file_location(f"benchmark_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert callable(module.main)


def test_results_page_is_rendered_from_the_recorded_lines():
    from benchmarks.results import PAGE, render
    from curation.measurements import load

    assert PAGE.read_text() == render(load()), "run python benchmarks/results.py after recording a benchmark"
