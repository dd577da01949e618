"""The config system: typed recipes, errors that name the key and the file, `key.sub=value` overrides."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from curation.run_config import load_curation_config
from curation.synth.crawl import _curation_config
from foundation.config import load_config
from foundation.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "curation"


def write(tmp_path: Path, tree: dict) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def minimal() -> dict:
    return {"ingest": {"sources": [{"kind": "folder", "path": "pool"}]}}


def test_lvd142m_holds_the_27_rows_of_table_15():
    config = load_curation_config(CONFIGS / "lvd142m.yaml")
    rows = config.retrieve.sources
    assert len(rows) == 27
    assert config.retrieve.expected_total() == 142_109_386
    kinds = [r.strategy.kind for r in rows]
    assert kinds.count("as_is") == 3 and kinds.count("sample") == 3 and kinds.count("cluster") == 21
    by_name = {r.name: r for r in rows}
    assert by_name["imagenet1k_sample"].strategy.n == 32
    assert by_name["imagenet22k_sample"].expected == 56_788_344
    assert all(
        r.strategy.images_per_cluster == 10_000 and r.strategy.max_images == 1_000_000
        for r in rows
        if r.strategy.kind == "cluster"
    )
    assert config.retrieve.clusters == 100_000 and config.decontam.threshold == 0.45


def test_demo_config_is_the_recipe_synth_writes():
    demo = yaml.safe_load((CONFIGS / "demo.yaml").read_text())
    synth = _curation_config(seed=0)

    def strip(tree):  # compare everything but names and paths
        if isinstance(tree, dict):
            return {k: strip(v) for k, v in tree.items() if k not in ("path", "name")}
        return [strip(v) for v in tree] if isinstance(tree, list) else tree

    assert strip(demo) == strip(synth)
    load_curation_config(CONFIGS / "demo.yaml")


def test_misspelt_key_fails_fast_naming_key_file_and_fix(tmp_path):
    tree = minimal()
    tree["ingest"]["shard_sise"] = 10
    path = write(tmp_path, tree)
    started = time.perf_counter()
    with pytest.raises(ConfigError) as err:
        load_curation_config(path)
    assert time.perf_counter() - started < 1.0
    message = str(err.value)
    assert "ingest.shard_sise" in message and str(path) in message and "shard_size" in message


def test_bad_value_names_key_and_value(tmp_path):
    tree = minimal()
    tree["ingest"]["min_side"] = -3
    with pytest.raises(ConfigError, match=r"ingest\.min_side.*-3"):
        load_curation_config(write(tmp_path, tree))


def test_unknown_strategy_kind_is_refused(tmp_path):
    tree = minimal()
    tree["retrieve"] = {"sources": [{"name": "x", "strategy": {"kind": "nearest", "n": 3}}]}
    with pytest.raises(ConfigError, match=r"retrieve\.sources\.0\.strategy"):
        load_curation_config(write(tmp_path, tree))


def test_repeated_row_names_are_refused(tmp_path):
    tree = minimal()
    tree["retrieve"] = {"sources": [{"name": "x", "strategy": {"kind": "as_is"}}] * 2}
    with pytest.raises(ConfigError, match="unique"):
        load_curation_config(write(tmp_path, tree))


def test_overrides_set_nested_keys_lists_and_typed_values(tmp_path):
    path = write(tmp_path, minimal())
    config = load_curation_config(
        path,
        [
            "ingest.shard_size=7",
            "ingest.sources.0.path=/data/x",
            "retrieve.sources=[{name: a, strategy: {kind: sample, n: 2}}]",
        ],
    )
    assert config.ingest.shard_size == 7
    assert config.ingest.sources[0].path == Path("/data/x")
    assert config.retrieve.sources[0].strategy.n == 2


def test_override_of_unknown_key_or_bad_form_is_a_config_error(tmp_path):
    path = write(tmp_path, minimal())
    with pytest.raises(ConfigError, match=r"ingest\.workerz"):
        load_curation_config(path, ["ingest.workerz=3"])
    with pytest.raises(ConfigError, match=r"key\.sub=value"):
        load_curation_config(path, ["ingest.workers"])
    with pytest.raises(ConfigError, match="list index"):
        load_curation_config(path, ["ingest.sources.5.path=x"])


def test_relative_paths_resolve_against_the_config_file(tmp_path):
    config = load_curation_config(write(tmp_path, minimal()))
    assert config.ingest.sources[0].path == (tmp_path / "pool").resolve()


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_curation_config(tmp_path / "nope.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_curation_config(tmp_path / "list.yaml")


def test_execution_knobs_do_not_change_the_config_hash(tmp_path):
    from foundation.config import config_hash

    path = write(tmp_path, minimal())
    base = load_curation_config(path)
    spread = load_curation_config(path, ["ingest.workers=7", "embed.actors=3", "embed.threads_per_actor=2"])
    changed = load_curation_config(path, ["ingest.min_side=64"])
    assert config_hash(base.ingest) == config_hash(spread.ingest)
    assert config_hash(base.embed) == config_hash(spread.embed)
    assert config_hash(base.ingest) != config_hash(changed.ingest)


def test_a_stage_reading_a_missing_embed_role_is_refused(tmp_path):
    path = write(tmp_path, minimal())
    with pytest.raises(ConfigError, match=r"retrieve\.role 'retrieval' is not one of the embed\.models roles"):
        load_curation_config(path, ["embed.models={copy: {name: tiny}}"])


@pytest.mark.parametrize(
    "path", sorted((Path(__file__).parents[1] / "configs/training").glob("*.yaml")), ids=lambda p: p.name
)
def test_every_training_config_validates(path):
    from training.config import TrainConfig
    from training.distill import DistillConfig

    config = load_config(DistillConfig if path.name.startswith("distill") else TrainConfig, path)
    assert config.optim.total_steps > 0
