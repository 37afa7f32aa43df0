"""The container and cluster files: they cannot be built or deployed here, so they are
checked for what the README promises of them."""

import re
from pathlib import Path

import yaml

REPO = Path(__file__).parents[2]


def test_dockerfile_installs_with_the_ci_script_for_both_variants():
    text = (REPO / "docker/Dockerfile").read_text()
    assert re.search(r"^ARG VARIANT=cpu$", text, re.M)
    assert "AS base-cpu" in text and "AS base-cuda" in text and "FROM base-${VARIANT}" in text
    assert re.search(r"^RUN bash scripts/setup\.sh$", text, re.M)
    assert "make test" in (REPO / ".ci/run").read_text()
    assert "scripts/setup.sh" in (REPO / "Makefile").read_text()
    for path in re.findall(r"^COPY (\S+) ", text, re.M):
        assert (REPO / path).exists(), path


def test_ray_cluster_config():
    config = yaml.safe_load((REPO / "docker/ray-cluster.yaml").read_text())
    assert config["head_node_type"] in config["available_node_types"]
    assert config["docker"]["image"].endswith("lofipipe:cuda")
    assert "lofipipe run --config" in (REPO / "docker/ray-cluster.yaml").read_text()


def test_rayjob_runs_a_shipped_recipe_with_credentials_from_a_secret():
    text = (REPO / "docker/rayjob.yaml").read_text()
    job = yaml.safe_load(text)
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    entrypoint = job["spec"]["entrypoint"]
    recipe = re.search(r"--config /opt/lofipipe/(\S+)", entrypoint).group(1)
    assert (REPO / recipe).exists()
    cluster = job["spec"]["rayClusterSpec"]
    containers = [cluster["headGroupSpec"]["template"]["spec"]["containers"][0]] + [
        group["template"]["spec"]["containers"][0] for group in cluster["workerGroupSpecs"]
    ]
    for container in containers:
        assert container["envFrom"] == [{"secretRef": {"name": "lofipipe-s3"}}]
        assert "env" not in container  # no credential values in the manifest
