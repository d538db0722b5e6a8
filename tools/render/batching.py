"""Batches of compatible jobs, formed the same way on every run.

Batches are cut from the whole job file (in file order within each group of compatible jobs)
before finished jobs are dropped, so a resumed run renders the batch it lost with the same
composition, hence the same bytes, as the run that was killed.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Hashable, Sequence

if TYPE_CHECKING:
    from .jobs import Job

# sample: a decision per job (batching never changes a result); batch: one per batch (upstream)
DECISIONS = ("sample", "batch")


def make_batches(jobs: Sequence[Job], key: Callable[[Job], Hashable], size: int) -> list[list[Job]]:
    """Groups of equal ``key(job)`` in order of first appearance, each ordered by threshold
    (stable: file order among equals) and cut into ``size`` jobs.  Jobs with close thresholds
    tend to skip the same steps, so the blocks graph runs on fuller sub-batches; with one
    decision per job the order changes no result."""
    groups: dict[Hashable, list[Job]] = {}
    for job in jobs:
        groups.setdefault(key(job), []).append(job)
    ordered = [sorted(group, key=_by_threshold) for group in groups.values()]
    return [group[i:i + size] for group in ordered for i in range(0, len(group), size)]


def _by_threshold(job: Job) -> tuple:
    return (job.threshold is None, job.threshold or 0.0)


def batch_key(driver_key: Callable[[Job], Hashable], decisions: str) -> Callable[[Job], Hashable]:
    """The driver's compatibility key (size, steps, guidance, ...) and the policy: in ``sample``
    decisions every job keeps its own threshold, so the policy without it joins the key; in
    ``batch`` decisions one policy decides for the whole batch, threshold included."""
    with_threshold = decisions == "batch"
    return lambda job: (driver_key(job), job.policy_key(with_threshold))


def pending(batches: Sequence[Sequence[Job]], done: set[str], whole: bool = False) -> list[list[Job]]:
    """The batches with finished jobs removed (a batch left empty disappears).

    ``whole``: a batch with any unfinished job is rendered again whole.  With one decision per
    batch a job's steps depend on its batch neighbours, so a batch a kill cut between its
    result lines must decide again with all its members, as it did the first time."""
    if whole:
        return [list(batch) for batch in batches if any(job.id not in done for job in batch)]
    left = ([job for job in batch if job.id not in done] for batch in batches)
    return [batch for batch in left if batch]
