"""The time limit and crash containment of stage tasks on a real local Ray."""

import os
import sys
import time

import pytest
from ray import cloudpickle

from lofipipe.workers.task_pool import TaskFailure, map_with_time_limit

pytestmark = pytest.mark.ray
# Ray workers cannot import this test module; ship the stage class by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


class FlakyStage:
    """Hangs on "hang", kills its worker on "crash", raises on "bug", else doubles."""

    name = "flaky"
    resources = {"num_cpus": 1}

    def process(self, item):
        if item == "hang":
            time.sleep(600)
        if item == "crash":
            os._exit(1)
        if item == "bug":
            raise ValueError("a bug in the stage")
        return item * 2


def test_hung_and_crashed_items_are_contained(ray_local):
    items = ["a", "hang", "b", "crash", "c", "bug", "d"]
    started = time.monotonic()
    results = dict(map_with_time_limit(FlakyStage(), items, timeout_s=3.0))
    assert time.monotonic() - started < 60
    assert sorted(results) == sorted(items)
    assert [results[i] for i in "abcd"] == ["aa", "bb", "cc", "dd"]
    assert results["hang"] == TaskFailure("timeout", "timed out after 3 s")
    assert results["crash"].reason == "worker_died"
    assert results["bug"].reason == "task_error"
    assert "a bug in the stage" in results["bug"].message
