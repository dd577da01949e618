"""Render benchmarks/results.jsonl as benchmarks/RESULTS.md: the newest figure per metric, subject and device.

    python benchmarks/results.py          # rewrite RESULTS.md after a benchmark ran with --record

The JSON lines stay the source of truth (`--plan` reads them); this page is for people, and a
test fails when it is older than the lines it is made from.
"""

from __future__ import annotations

from pathlib import Path

from curation.measurements import RESULTS, Measurement, latest, load

PAGE = Path(__file__).resolve().parent / "RESULTS.md"
HEADER = """# Benchmark results

Made by `python benchmarks/results.py` from `results.jsonl` (do not edit by hand): the newest
measurement of each metric, subject and device. Each benchmark prints its ratio against the bare
operation it wraps when run; the rates here are what `--plan` extrapolates from. Run a benchmark
with `--record` on new hardware (a GPU's name is recorded as its device), then this script.
"""


CURATION_VALUE = "benchmarks/curation_value.py"


def render(results: list[Measurement]) -> str:
    keys = sorted({(m.benchmark, m.metric, m.subject, m.device) for m in results if m.benchmark != CURATION_VALUE})
    rows = [latest(results, metric, subject, device) for _, metric, subject, device in keys]
    lines = [
        HEADER,
        "| benchmark | metric | subject | value | device | date | commit | command |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m in rows:
        lines.append(
            f"| {m.benchmark} | {m.metric} | {m.subject} | {_number(m.value)} {m.unit} | {m.device} ({m.cores} cores) "
            f"| {m.date} | {m.commit[:8]} | `{m.command}` |"
        )
    return "\n".join(lines + curation_value(results)) + "\n"


def curation_value(results: list[Measurement]) -> list[str]:
    """benchmarks/curation_value.py's newest figures as its own table: top-1 mean ± std per variant."""
    found = [m for m in results if m.benchmark == CURATION_VALUE]
    if not found:
        return []
    device = max(found, key=lambda m: m.date).device
    metrics = sorted({m.metric[len("curation_value.") : -len(".mean")] for m in found if m.metric.endswith(".mean")})
    variants = list(dict.fromkeys(m.subject for m in found if m.device == device))
    lines = [
        "",
        f"## Curation value ({device})",
        "",
        "Top-1 mean ± std over seeds of the same ViT trained on each variant of the synthetic crawl's",
        "pool (`python benchmarks/curation_value.py --record`; the README's 'Does curation pay?' reads it).",
        "",
        "| trained on | images | covered share | " + " | ".join(metrics) + " |",
        "|---|---|---|" + "---|" * len(metrics),
    ]
    for variant in variants:
        images, share = (
            latest(found, f"curation_value.{name}", variant, device) for name in ("images", "covered_share")
        )
        cells = [f"{images.value:,.0f}" if images else "—", f"{share.value:.2f}" if share else "—"]
        for metric in metrics:
            mean = latest(found, f"curation_value.{metric}.mean", variant, device)
            std = latest(found, f"curation_value.{metric}.std", variant, device)
            cells.append(f"{mean.value:.3f} ± {std.value:.3f}" if mean and std else "—")
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return lines


def _number(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def main() -> None:
    PAGE.write_text(render(load(RESULTS)))
    print(f"wrote {PAGE}")


if __name__ == "__main__":
    main()
