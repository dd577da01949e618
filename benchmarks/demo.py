"""`lvd demo` wall time end to end (target, issue 6: under 10 minutes on 2 cores after the install).

    python benchmarks/demo.py [--no-train] [--fresh-venv] [--record]

Runs the demo in a new temporary work directory, as a user would, and prints its wall time next to
the bare operation it is made of: the curation and training stages' own summed seconds from the
manifest and the metrics logs. With --fresh-venv it first creates a virtual environment and
installs the project into it (`pip install -e ".[cpu]"`), timing that separately.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path

from curation.measurements import record

ROOT = Path(__file__).resolve().parents[1]


def fresh_python(where: Path) -> tuple[str, float]:
    started = time.perf_counter()
    venv.create(where, with_pip=True)
    python = str(where / "bin" / "python")
    subprocess.run([python, "-m", "pip", "install", "-q", "-e", f"{ROOT}[cpu]"], check=True)
    return python, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-train", action="store_true", help="curation only")
    parser.add_argument("--fresh-venv", action="store_true", help="install into a new virtual environment first")
    parser.add_argument("--record", action="store_true", help="append the wall time to benchmarks/results.jsonl")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        python, install_s = fresh_python(Path(tmp) / "venv") if args.fresh_venv else (sys.executable, 0.0)
        workdir = Path(tmp) / "demo"
        command = [python, "-m", "pipelines.cli", "demo", "--workdir", str(workdir)]
        if args.no_train:
            command.append("--no-train")
        started = time.perf_counter()
        subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - started
        manifest = json.loads((workdir / "run" / "manifest.json").read_text())
        stage_s = sum(record.get("seconds", 0) for record in manifest["stages"].values())
    if args.fresh_venv:
        print(f"install into a fresh venv: {install_s:6.1f} s")
    print(f"lvd demo{' --no-train' if args.no_train else ''}: {wall:6.1f} s wall (target < 600 s on 2 cores)")
    print(f"curation stages' own seconds (manifest): {stage_s:6.1f} s; the rest is synth, training and eval")
    if args.record:
        subject = "demo --no-train" if args.no_train else "demo"
        record("benchmarks/demo.py", "demo.wall_seconds", wall, "s", subject)


if __name__ == "__main__":
    main()
