"""Where batches run: in this process (:class:`LocalPool`) or on Ray actors (``ray_pool``).

A pool's ``run(batches, stopping)`` yields ``(batch, outcomes)`` as batches finish and starts
no new batch once ``stopping()`` is true, so an interrupted run ends after the batches in
flight and loses nothing.
"""
from __future__ import annotations

from typing import Callable, Iterator, Sequence

from .jobs import Job
from .worker import Outcome, Worker, WorkerSpec

Finished = tuple[list[Job], list[Outcome]]


class LocalPool:
    def __init__(self, spec: WorkerSpec):
        self.worker = Worker(spec)
        self.workers = 1

    def run(self, batches: Sequence[list[Job]], stopping: Callable[[], bool]) -> Iterator[Finished]:
        for batch in batches:
            if stopping():
                return
            yield batch, self.worker.render(batch)

    def close(self) -> None:
        pass
