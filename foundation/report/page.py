"""One offline HTML page (plots and images embedded, no scripts) plus its numbers as stats.json.

The curation report and the training report share the page (`page.html.j2`); each extends it with
a template of its own that lives in its own package.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jinja2


def write_page(out: Path, package: str, template: str, stats: dict[str, Any], **context: Any) -> None:
    """stats.json and index.html (`package`'s `template` rendered with the stats and `context`) into `out`."""
    loader = jinja2.ChoiceLoader([jinja2.PackageLoader(package, "."), jinja2.PackageLoader(__package__, ".")])
    environment = jinja2.Environment(loader=loader, autoescape=True, undefined=jinja2.StrictUndefined)
    html = environment.get_template(template).render(stats=stats, **context)
    (out / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    (out / "index.html").write_text(html)
