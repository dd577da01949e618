"""Print pip constraints that pin each runtime dependency to the lowest version pyproject.toml allows.

A lower bound is a promise: `torch>=2.9` says 2.9 works. CI installs the project under these pins
and runs the default tests, so a bound that drifts below what the code needs fails there, not on a
user's machine. Only the runtime dependencies and the `cpu` extra are pinned (the test tools stay
at their newest); a requirement whose marker excludes this interpreter is left out.

    python .ci/lowest_versions.py > lowest.txt && pip install -c lowest.txt -e ".[cpu,dev]"
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement


def lowest_pins(pyproject: Path) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    pins = []
    for line in [*project["dependencies"], *project["optional-dependencies"]["cpu"]]:
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        bounds = [s.version for s in requirement.specifier if s.operator == ">="]
        if len(bounds) != 1:
            sys.exit(f"lowest_versions: {line!r} needs exactly one '>=' bound to be pinned at it")
        pins.append(f"{requirement.name}=={bounds[0]}")
    return pins


if __name__ == "__main__":
    print("\n".join(lowest_pins(Path(__file__).resolve().parent.parent / "pyproject.toml")))
