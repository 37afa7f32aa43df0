"""A real multi-node Ray cluster on this machine (each node its own raylet, object store
and resources), and `lofipipe` drivers run against it as separate processes."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

LOFIPIPE = str(Path(sys.executable).parent / "lofipipe")
_NODE = {"include_dashboard": False, "object_store_memory": 400 * 2**20}


@contextlib.contextmanager
def ray_cluster(cpus_per_node: list[int], env: Mapping[str, str]) -> Iterator:
    """Starts a head node and a worker node per further entry of `cpus_per_node`; their
    processes get `env` (e.g. storage credentials), as a cluster's machines would."""
    from ray.cluster_utils import Cluster

    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        cluster = Cluster(
            initialize_head=True,
            connect=False,
            head_node_args={**_NODE, "num_cpus": cpus_per_node[0]},
        )
        for cpus in cpus_per_node[1:]:
            cluster.add_node(**_NODE, num_cpus=cpus)
        cluster.wait_for_nodes()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    try:
        yield cluster
    finally:
        cluster.shutdown()


def node_ids(cluster) -> set[str]:
    return {node.node_id for node in cluster.list_all_nodes()}


def driver(args: list[str], env: Mapping[str, str]) -> subprocess.Popen:
    """`lofipipe ARGS` as its own process (stdout and stderr to pipes)."""
    environment = {**os.environ, **env, "RAY_AUTH_MODE": "disabled"}
    environment.pop("RAY_ADDRESS", None)
    return subprocess.Popen(
        [LOFIPIPE, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
    )
