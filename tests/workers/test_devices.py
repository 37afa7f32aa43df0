"""Which device a job computes on: GPUs chosen from what the cluster has or can start
(`ray.gpus`), and in each Ray task or actor the device Ray assigned it."""

import subprocess
import sys
import textwrap

import pytest

from lofipipe.errors import ConfigError
from lofipipe.workers import runtime


def test_gpus_are_used_when_the_cluster_has_or_can_start_them(ray_local, monkeypatch):
    assert runtime.cluster_gpus() == 0  # the tests' local Ray has none
    assert not runtime.use_gpus("auto") and not runtime.use_gpus("off")
    with pytest.raises(ConfigError, match="cannot start any"):
        runtime.use_gpus("on")
    # An autoscaling cluster whose GPU nodes scale from zero: none now, 8 at most. Its
    # node types are in the autoscaler's config (there is no autoscaler here to ask).
    from ray._private.state import state

    monkeypatch.setattr(state, "get_max_resources_from_cluster_config", lambda: {"GPU": 8.0})
    assert runtime.cluster_gpus() == 8
    assert runtime.use_gpus("auto") and runtime.use_gpus("on")
    assert not runtime.use_gpus("off")


def test_a_task_computes_on_the_gpu_ray_gave_it_and_only_then():
    # A Ray of its own that claims one GPU (Ray schedules logical resources; no task
    # here touches CUDA): the task that holds it gets it, one beside it does not.
    script = textwrap.dedent(
        """
        import ray
        from lofipipe.workers.runtime import assigned_device

        ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False,
                 logging_level="ERROR", log_to_driver=False)
        where = ray.remote(lambda: str(assigned_device()))
        print(ray.get(where.options(num_gpus=1).remote()), ray.get(where.remote()))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.split() == ["cuda", "cpu"]
