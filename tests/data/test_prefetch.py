"""Reading ahead on a background thread: order, errors, bounded memory, early exit."""

import threading
import time

import pytest

from lofipipe.data.prefetch import prefetched


def _counted(count, made, fail_at=None):
    for index in range(count):
        if index == fail_at:
            raise ValueError(f"bad item {index}")
        made.append(index)
        yield index


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_items_come_in_order(depth):
    assert list(prefetched(_counted(20, []), depth)) == list(range(20))


def test_an_error_is_raised_at_its_item():
    seen = []
    with pytest.raises(ValueError, match="bad item 3"):
        for item in prefetched(_counted(10, [], fail_at=3), 2):
            seen.append(item)
    assert seen == [0, 1, 2]


def test_no_more_than_depth_items_wait():
    made = []
    items = prefetched(_counted(100, made), 2)
    assert next(items) == 0
    deadline = time.monotonic() + 5
    while len(made) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    # item 0 is with the caller, 1 and 2 wait in the queue, 3 is made and waits to go in
    assert len(made) == 4
    items.close()


def test_leaving_early_stops_the_thread():
    before = threading.active_count()
    for item in prefetched(_counted(1000, []), 2):
        if item == 5:
            break
    deadline = time.monotonic() + 5
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert threading.active_count() == before
