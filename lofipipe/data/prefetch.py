"""Reading ahead: an iterator's next items made on a background thread while the consumer
works on the current one, never more than `depth` of them waiting, so memory stays bounded
by `depth + 1` items whatever the data's size."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

_END = object()


def prefetched(items: Iterable[T], depth: int) -> Iterator[T]:
    """`items` in order, each made up to `depth` items ahead (0: on the caller's thread).

    An exception raised making an item is raised here, at that item. Leaving the loop
    early stops the background thread after the item it is making.
    """
    if depth <= 0:
        yield from items
        return
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        ready.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
        except BaseException as error:  # handed to the consumer, raised there
            ready.put((_END, error))
            return
        ready.put((_END, None))

    thread = threading.Thread(target=produce, name="lofipipe-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, error = ready.get()
            if error is not None:
                raise error
            if item is _END:
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                ready.get(timeout=0.1)
            except queue.Empty:
                pass
        thread.join()
