"""Starting or joining Ray."""

from __future__ import annotations

import logging
import os

import ray

from lofipipe.schemas.config import RayConfig

# Storage settings read from the environment (credentials, endpoints); workers on other
# nodes get them through the job's runtime environment rather than through task arguments.
_FORWARDED_ENV_PREFIXES = ("AWS_", "GOOGLE_", "AZURE_STORAGE_", "FSSPEC_")


def ensure_ray(config: RayConfig) -> None:
    """Joins the cluster at `config.address` or RAY_ADDRESS, else starts a local Ray.

    An already initialised Ray (a test session, a notebook) is used as it is.
    """
    if ray.is_initialized():
        return
    address = config.address or os.environ.get("RAY_ADDRESS") or None
    env_vars = {name: value for name, value in os.environ.items()
                if name.startswith(_FORWARDED_ENV_PREFIXES)}
    ray.init(
        address=address,
        num_cpus=None if address else config.num_cpus,
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=True,
        runtime_env={"env_vars": env_vars} if env_vars else None,
    )


def cluster_cpus() -> int:
    """CPUs of the whole cluster (at least 1)."""
    return max(1, int(ray.cluster_resources().get("CPU", 1)))
