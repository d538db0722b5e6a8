"""Batches on Ray actors: one per GPU (``--device cuda``) or ``--workers`` CPU actors, each
holding a loaded :class:`~.worker.Worker`.  Outcomes (encoded bytes and step records) stream
back as batches finish; the renderer alone writes the output folder.

The actors import teacache-trt and read the model and artifact folders by path: on a
multi-machine cluster, install the package on every node and put both folders on a shared
filesystem.
"""
from __future__ import annotations

from collections import deque
from typing import Callable, Iterator, Sequence

from ...errors import TeaCacheError
from .jobs import Job
from .pool import Finished
from .worker import Outcome, Worker, WorkerSpec

INSTALL_HINT = "pip install 'teacache-trt[ray]' (or pip install -e \".[ray]\" in a checkout)"


def import_ray():
    try:
        import ray
    except ImportError:
        raise TeaCacheError(f"--ray needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


class _RayWorker:
    """The actor: a worker that lives as long as the pool."""

    def __init__(self, spec: WorkerSpec):
        self.worker = Worker(spec)

    def ready(self) -> bool:
        return True

    def render(self, batch: list[Job]) -> list[Outcome]:
        return self.worker.render(batch)


class RayPool:
    def __init__(self, spec: WorkerSpec, address: str, workers: int):
        ray = self.ray = import_ray()
        self.started_here = address == "local"
        try:
            if self.started_here:
                # A private cluster on this machine, sized for the actors; no dashboard to serve.
                ray.init(num_cpus=workers, include_dashboard=False, object_store_memory=128 * 2**20 * workers)
            else:
                ray.init(address=address)
        except Exception as exc:
            raise TeaCacheError(f"cannot connect to the Ray cluster at {address!r} ({exc}): give the address "
                                f"of a running cluster (`ray start --head` prints it) or `local`") from exc
        try:
            self.actors = self._start(spec, workers)
        except BaseException:
            self.close()
            raise
        self.workers = len(self.actors)

    def _start(self, spec: WorkerSpec, workers: int) -> list:
        ray = self.ray
        if spec.device.startswith("cuda"):
            gpus = int(ray.cluster_resources().get("GPU", 0))
            if gpus == 0:
                raise TeaCacheError("--device cuda with --ray: the cluster has no GPU; use --device cpu --workers N")
            count, resources = gpus, {"num_gpus": 1}
        else:
            count, resources = workers, {"num_cpus": 1}
        actor = ray.remote(_RayWorker)
        actors = [actor.options(**resources).remote(spec) for _ in range(count)]
        try:
            ray.get([a.ready.remote() for a in actors])
        except ray.exceptions.RayError as exc:
            raise TeaCacheError(f"a Ray worker could not load the model: {_cause(exc)}") from exc
        return actors

    def run(self, batches: Sequence[list[Job]], stopping: Callable[[], bool]) -> Iterator[Finished]:
        """One batch in flight per actor; the next goes to whichever actor finishes first."""
        ray = self.ray
        queue, idle, in_flight = deque(batches), list(self.actors), {}
        while queue or in_flight:
            while idle and queue and not stopping():
                actor, batch = idle.pop(), queue.popleft()
                in_flight[actor.render.remote(batch)] = (actor, batch)
            if not in_flight:
                if queue and not stopping():
                    raise TeaCacheError("every Ray worker died: re-run the same command to resume")
                return
            (ref,), _ = ray.wait(list(in_flight), num_returns=1)
            actor, batch = in_flight.pop(ref)
            try:
                outcomes = ray.get(ref)
                idle.append(actor)
            except ray.exceptions.RayError as exc:  # the actor died (e.g. out of memory): fail its batch
                outcomes = [Outcome(job.id, error=f"the Ray worker died: {_cause(exc)}") for job in batch]
            yield batch, outcomes

    def close(self) -> None:
        for actor in getattr(self, "actors", []):
            self.ray.kill(actor)
        if self.started_here:
            self.ray.shutdown()


def _cause(exc: Exception) -> str:
    """The worker's own error where Ray wraps one (a TeaCacheError's message), else Ray's."""
    cause = getattr(exc, "cause", None)
    return str(cause) if cause is not None else str(exc).strip().splitlines()[-1]
