"""Starting or joining Ray."""

from __future__ import annotations

import logging
import os

import ray

from lofipipe.schemas.config import RayConfig


def ensure_ray(config: RayConfig) -> None:
    """Joins the cluster at `config.address` or RAY_ADDRESS, else starts a local Ray.

    An already initialised Ray (a test session, a notebook) is used as it is. A local Ray's
    workers inherit this process's environment (storage credentials included); a cluster's
    workers use the cluster's own, since credentials are never sent through Ray's runtime
    environment, which Ray logs.
    """
    if ray.is_initialized():
        return
    address = config.address or os.environ.get("RAY_ADDRESS") or None
    ray.init(
        address=address,
        num_cpus=None if address else config.num_cpus,
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=True,
        # Worker processes log at ERROR: Ray Train's helper actors otherwise warn every
        # few seconds that the state API is off (it needs the dashboard, not installed).
        # Failures still reach the driver as exceptions and as lofipipe's own output.
        logging_config=ray.LoggingConfig(encoding="TEXT", log_level="ERROR"),
    )


def node_id() -> str:
    """The Ray node this process runs on ("local" outside Ray), recorded in the stats of
    the work it commits: which machine of a cluster wrote what."""
    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"


def cluster_cpus() -> int:
    """CPUs of the whole cluster (at least 1)."""
    return max(1, int(ray.cluster_resources().get("CPU", 1)))
