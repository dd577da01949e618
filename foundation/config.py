"""Typed, validated configuration: YAML (safe loader) -> pydantic models, plus `key.sub=value` overrides.

Every model derives from `Section`, which forbids unknown keys, so a misspelt key stops the run
before any work with a message naming the key, the file and the closest valid spelling.
Path fields are `foundation.storage.ConfigPath` (read: local or any fsspec URL) or `OutputPath`
(written: local or file://); relative paths resolve against the config file's own directory.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from foundation.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


class Section(BaseModel):
    """Base of every config model: unknown keys are errors, values are validated on assignment.

    `execution_fields` name knobs that change how work is spread (workers, actors, threads) but
    not what it produces; they are left out of the config hash, so changing them reuses output.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)
    execution_fields: ClassVar[frozenset[str]] = frozenset()

    def identity(self) -> dict[str, Any]:
        """The fields that determine this section's output, as JSON-able values (for hashing)."""
        return {
            name: _identity_of(getattr(self, name))
            for name in type(self).model_fields
            if name not in self.execution_fields
        }


def _identity_of(value: Any) -> Any:
    if isinstance(value, Section):
        return value.identity()
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {str(k): _identity_of(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_identity_of(v) for v in value]
    return value if isinstance(value, str | int | float | bool | None) else str(value)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `a.b.0.c=value` into (["a", "b", "0", "c"], value parsed as YAML)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not of the form key.sub=value")
    return key.strip().split("."), yaml.safe_load(raw) if raw.strip() else ""


def apply_override(tree: dict[str, Any], parts: list[str], value: Any) -> None:
    """Set `value` at the dotted path `parts` in a nested dict/list tree, creating dicts as needed."""
    node: Any = tree
    for depth, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            node = node[_list_index(node, part, parts[: depth + 1])]
        else:
            node = node.setdefault(part, {})
    last = parts[-1]
    if isinstance(node, list):
        node[_list_index(node, last, parts)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError(f"override key {'.'.join(parts)!r}: {'.'.join(parts[:-1])!r} is not a section")


def _list_index(node: list[Any], part: str, where: list[str]) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(f"override key {'.'.join(where)!r}: expected a list index below {len(node)}, got {part!r}")
    return int(part)


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping with the safe loader; a missing file or a non-mapping is a ConfigError."""
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: top level must be a mapping, got {type(data).__name__}")
    return data


def load_config(model: type[M], path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> M:
    """Load `path` into `model`, applying `key.sub=value` overrides first; ConfigError on any problem."""
    path = Path(path)
    tree = read_yaml(path)
    for text in overrides:
        apply_override(tree, *parse_override(text))
    return validate_tree(model, tree, source=str(path), base_dir=path.resolve().parent)


def validate_tree(model: type[M], tree: dict[str, Any], source: str, base_dir: Path | None = None) -> M:
    """Validate a plain dict into `model`; errors name each bad key, its value and a suggestion."""
    try:
        return model.model_validate(tree, context={"base_dir": base_dir})
    except ValidationError as exc:
        lines = [_describe(model, err) for err in exc.errors()]
        raise ConfigError(f"invalid config {source}:\n  " + "\n  ".join(lines)) from None


def _describe(model: type[BaseModel], err: Any) -> str:
    loc = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        hint = _suggest(model, [str(p) for p in err["loc"]])
        return f"unknown key {loc!r}" + (f" (did you mean {hint!r}?)" if hint else "")
    if not loc:  # a check across keys (a model validator): its message names the keys itself
        return err["msg"].removeprefix("Value error, ")
    return f"key {loc!r}: {err['msg']} (got {err.get('input')!r})"


def _suggest(model: type[BaseModel], loc: list[str]) -> str | None:
    """Closest valid field name for the last element of `loc`, walking nested models when possible."""
    current: Any = model
    for part in loc[:-1]:
        fields = getattr(current, "model_fields", None)
        if fields is None or part not in fields:
            return None
        current = _model_of(fields[part].annotation)
    fields = getattr(current, "model_fields", None)
    if not fields:
        return None
    match = difflib.get_close_matches(loc[-1], list(fields), n=1)
    return match[0] if match else None


def _model_of(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def config_hash(payload: Any) -> str:
    """A stable sha256 of a value: sections by their `identity()`, paths as strings, keys sorted."""
    blob = json.dumps(_identity_of(payload), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()
