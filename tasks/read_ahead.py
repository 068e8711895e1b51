"""A producer thread ahead of its consumer: the converter's inflate, the merge's decode."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Generator
from typing import Any, TypeVar

T = TypeVar("T")


def read_ahead(read_next: Callable[[], T], depth: int = 2, name: str = "read-ahead") -> Generator[T, None, None]:
    """Call `read_next` in a background thread, keeping up to `depth` results ready.

    The heavy work of both sides (ISA-L inflate, numba kernels, pyarrow decode and encode)
    releases the GIL, so on two cores the producer and the consumer overlap; memory stays
    bounded by `depth` + 2 results. `read_next` ends with StopIteration; its other
    exceptions are re-raised here, in the consumer. Closing the generator stops the thread and waits
    for it, so the source may be closed right after.
    """
    results: queue.Queue[tuple[bool, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: tuple[bool, Any]) -> None:
        while not stop.is_set():
            try:
                results.put(item, timeout=0.05)
                return
            except queue.Full:
                continue

    def work() -> None:
        while not stop.is_set():
            try:
                item = read_next()
            except BaseException as exc:  # StopIteration included: handed over to the consumer
                put((False, exc))
                return
            put((True, item))

    thread = threading.Thread(target=work, name=name, daemon=True)
    thread.start()
    try:
        while True:
            ok, value = results.get()
            if not ok:
                if isinstance(value, StopIteration):
                    return
                raise value
            yield value
    finally:
        stop.set()
        thread.join()
