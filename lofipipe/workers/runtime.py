"""Starting or joining Ray."""

from __future__ import annotations

import logging
import os

import ray
import torch

from lofipipe.errors import ConfigError
from lofipipe.schemas.config import RayConfig

# Ray Train's preemption watcher follows node draining on clusters; one machine is never
# preempted, and the watcher's start prints a Ray error line (its constructor arguments
# lie in the object store while it may restart).
_LOCAL_ENVIRONMENT = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}


def ensure_ray(config: RayConfig) -> None:
    """Joins the cluster at `config.address` or RAY_ADDRESS, else starts a new local Ray.

    With no address the command gets a Ray of its own: it never joins the Ray of another
    command running on the machine, nor the latest `ray start` cluster there (Ray's own
    default when no address is given). An already initialised Ray (a test session, a
    notebook) is used as it is.

    A local Ray's workers inherit this process's environment (storage credentials
    included); a cluster's workers use the cluster's own, since credentials are never sent
    through Ray's runtime environment, which Ray logs.

    What workers write to stdout and stderr stays in Ray's session logs
    (`/tmp/ray/session_latest/logs` on each node) instead of this terminal: Ray's helper
    actors print tracebacks and error lines there that say nothing about the job (e.g.
    Ray Train's placement-group cleaner, which needs Ray's dashboard, not installed).
    Failures still reach this process as exceptions and are reported as lofipipe's own
    one-line errors.
    """
    if ray.is_initialized():
        return
    address = config.address or os.environ.get("RAY_ADDRESS") or None
    if address is None:
        for key, value in _LOCAL_ENVIRONMENT.items():
            os.environ.setdefault(key, value)
    ray.init(
        address=address or "local",
        num_cpus=None if address else config.num_cpus,
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=False,
        # Worker processes log at ERROR: Ray Train's helper actors otherwise warn every
        # few seconds that the state API is off (it needs the dashboard, not installed).
        logging_config=ray.LoggingConfig(encoding="TEXT", log_level="ERROR"),
    )


def node_id() -> str:
    """The Ray node this process runs on ("local" outside Ray), recorded in the stats of
    the work it commits: which machine of a cluster wrote what."""
    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"


def cluster_cpus() -> int:
    """CPUs of the whole cluster (at least 1)."""
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def cluster_gpus() -> int:
    """GPUs the cluster has, or more if its autoscaler can start them: the most its node
    types add up to (GPU workers that scale from zero count before they exist)."""
    present = int(ray.cluster_resources().get("GPU", 0))
    try:  # the autoscaler's config in the GCS; absent on a local Ray
        from ray._private.state import state

        most = (state.get_max_resources_from_cluster_config() or {}).get("GPU", 0)
    except Exception:  # noqa: BLE001 - a Ray without this (private) API: what is present
        most = 0
    return max(present, int(most))


def use_gpus(choice: str) -> bool:
    """Whether a job's workers take GPUs: `ray.gpus` (auto: when the cluster has or can
    start some)."""
    if choice == "off":
        return False
    gpus = cluster_gpus()
    if choice == "on" and not gpus:
        raise ConfigError(
            "ray.gpus is 'on', but the cluster has no GPUs and its autoscaler cannot start "
            "any (--gpus auto or off runs on CPUs)"
        )
    return gpus > 0


def assigned_device() -> torch.device:
    """The device of this Ray task or actor: a GPU that Ray assigned it (Ray makes it
    the only visible one), else the CPU, whatever else the node has."""
    return torch.device("cuda" if ray.is_initialized() and ray.get_gpu_ids() else "cpu")
