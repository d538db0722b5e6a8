"""``teacache-render JOBS.jsonl --out OUT_DIR``: render a job file, resumably.

Exit status: 0 every job ok, 1 some job failed (recorded in results.jsonl), 2 bad invocation
(nothing rendered), 130 interrupted (re-run the same command to resume).
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import signal
import sys
import time
from pathlib import Path

from ... import policies
from ...errors import TeaCacheError
from ...manifest import load_manifest
from ...runtime.backends import BACKENDS
from .. import policy_options
from ..drivers import default_render_model, render_driver_for
from .artifacts import default_cache_dir, ensure_artifacts
from .batching import batch_key, make_batches, pending
from .jobs import BadJob, Job, JobReader
from .output import OutputDir
from .progress import Progress, Summary
from .sheet import contact_sheet
from .worker import DECISIONS, Outcome, WorkerSpec

EXIT_FAILED_JOBS, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="teacache-render", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Render a JSONL job file with TeaCache; re-running the same command resumes.",
        epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("jobs", type=Path, help="job file: one JSON object per line")
    p.add_argument("--out", type=Path, required=True,
                   help="output folder: <id>.png / <id>.mp4, results.jsonl, summary.json")
    p.add_argument("--model", type=Path, help="a diffusers pipeline folder (default: the bundled digits model)")
    p.add_argument("--artifacts", type=Path,
                   help="exported artifacts of the model (default: export on first use into --cache-dir)")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help=f"where exports on first use go (default: {default_cache_dir()})")
    p.add_argument("--backend", choices=BACKENDS, default="onnxruntime")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--batch-size", type=int, default=8, help="jobs per pipeline call (default 8)")
    p.add_argument("--decisions", choices=DECISIONS, default="sample",
                   help="sample: each job decides its own steps (batching never changes a result); "
                        "batch: one decision per batch (upstream TeaCache)")
    p.add_argument("--threshold", type=float,
                   help="threshold of jobs that give none (default: the artifact's); alone, TeaCache's shorthand "
                        "(--policy teacache --policy-param threshold=X)")
    policy_options.add_arguments(p, " of jobs that name none (a job's \"policy\": NAME or "
                                    "{\"name\": ..., \"params\": {...}})")
    p.add_argument("--ray", metavar="ADDRESS",
                   help="run batches on Ray actors: a cluster address, or 'local' to start one here")
    p.add_argument("--workers", type=int, default=1,
                   help="CPU actors with --ray (with --device cuda: one actor per GPU of the cluster)")
    p.add_argument("--contact-sheet", action="store_true",
                   help="also write OUT_DIR/contact_sheet.png: every image labelled with prompt, threshold, steps")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def check_args(args) -> None:
    """Everything cheap to check, before any lock, export or model load."""
    if args.batch_size < 1:
        raise TeaCacheError(f"--batch-size {args.batch_size} must be >= 1")
    if args.workers < 1:
        raise TeaCacheError(f"--workers {args.workers} must be >= 1")
    if args.workers > 1 and not args.ray:
        raise TeaCacheError(f"--workers {args.workers} runs Ray actors: add --ray local (or a cluster address)")
    if args.threshold is not None and not args.threshold >= 0:
        raise TeaCacheError(f"--threshold {args.threshold} must be a number >= 0 (0 never skips)")
    run_policy(args)  # the policy's parameters, checked before any export
    if not args.jobs.is_file():
        raise TeaCacheError(f"job file {args.jobs} does not exist: give a JSONL file, one job per line")
    if args.ray:
        from .ray_pool import import_ray

        import_ray()


def run_policy(args, artifact: policies.ArtifactPolicies | None = None) -> policies.Policy:
    """The policy of jobs that name none: ``--policy`` (with ``--threshold`` as its threshold),
    else TeaCache at ``--threshold``, else the artifact's default (None before it is known)."""
    given = policy_options.from_args(args)
    if given is None:
        if args.threshold is not None:
            return policies.TeaCache(threshold=args.threshold)
        return None if artifact is None else policies.make(artifact.name, **artifact.params)
    if args.threshold is not None:
        if not given.has_threshold:
            raise TeaCacheError(f"--threshold {args.threshold:g}: the policy {given!r} has no threshold; leave it out")
        given = given.replace(threshold=args.threshold)
    return given


def check_batch_size(manifest, art_dir: Path, batch_size: int) -> None:
    lo, opt, hi = manifest.axes.get("batch", (1, batch_size, batch_size))
    if batch_size > hi:
        raise TeaCacheError(
            f"--batch-size {batch_size} exceeds the batch profile [{lo}, {hi}] of {art_dir}: use "
            f"--batch-size {hi} or less, or re-export with --axis batch={lo}:{opt}:{batch_size}"
        )


@contextlib.contextmanager
def stop_on_signals(note):
    """SIGINT / SIGTERM: finish the batch in flight, then stop; a second one stops at once."""
    stop = []

    def handler(signum, frame):
        if stop:
            raise KeyboardInterrupt
        stop.append(signum)
        note(f"[render] {signal.Signals(signum).name}: stopping after the batch in flight "
             f"(send it again to stop at once)")

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield lambda: bool(stop)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def result_line(job: Job | BadJob, outcome: Outcome | None, out: OutputDir) -> dict:
    """The results.jsonl record of a finished job (its output written first)."""
    record = {"id": job.id, "line": job.line}
    if isinstance(job, Job):
        record.update(threshold=job.threshold, steps=job.steps, policy=dict(job.policy))
    if outcome is not None and outcome.ok:
        name = f"{job.id}.{outcome.suffix}"
        return {**record, "status": "ok", "output": name, "sha256": out.write_output(name, outcome.data),
                "computed_steps": outcome.computed_steps, "skipped_steps": outcome.skipped_steps,
                "seconds": round(outcome.seconds, 4)}
    error = job.error if isinstance(job, BadJob) else outcome.error
    return {**record, "status": "failed", "output": None, "sha256": None, "computed_steps": [],
            "skipped_steps": [], "seconds": round(outcome.seconds, 4) if outcome else 0.0, "error": error}


def make_pool(args, spec: WorkerSpec):
    if args.ray:
        from .ray_pool import RayPool

        return RayPool(spec, args.ray, args.workers)
    from .pool import LocalPool

    return LocalPool(spec)


def render(args, log=None) -> Summary:
    log = log or functools.partial(print, file=sys.stderr)
    t0 = time.perf_counter()
    check_args(args)
    model_dir = (args.model or default_render_model()).resolve()
    if not model_dir.is_dir():
        raise TeaCacheError(f"--model {model_dir} is not a folder: give a diffusers pipeline folder")
    driver = render_driver_for(model_dir)
    with OutputDir(args.out) as out:
        art = args.artifacts or ensure_artifacts(driver, model_dir, batch_size=args.batch_size, backend=args.backend,
                                                 cache_dir=args.cache_dir or default_cache_dir(), log=log)
        manifest = load_manifest(art)
        check_batch_size(manifest, art, args.batch_size)
        artifact = policies.artifact_policies(manifest, str(Path(art) / "manifest.json"))
        policy = run_policy(args, artifact)
        policy.bind(artifact)  # the run's policy fits the artifact: checked before any job
        reader = JobReader(driver.job_fields(model_dir), driver.defaults(model_dir), policy,
                           functools.partial(driver.check_job, model_dir), bind=lambda p: p.bind(artifact))
        parsed = list(reader.read(args.jobs))
        good = [j for j in parsed if isinstance(j, Job)]
        # Finished: the last result of the id is ok, its output intact, and made with the job's policy.
        results = out.results()
        finished = out.finished(results)
        done = {j.id for j in good if j.id in finished and results[j.id].get("policy") == j.policy}
        summary = Summary(jobs=len(parsed), already_done=len(done))
        bad = [j for j in parsed if isinstance(j, BadJob)]
        out.append(result_line(j, None, out) for j in bad)
        summary.failed += len(bad)
        for j in bad:
            log(f"[render] failed: {j.error}")
        batches = pending(make_batches(good, batch_key(driver.batch_key, args.decisions), args.batch_size), done)
        todo = sum(len(b) for b in batches)
        log(f"[render] {len(parsed)} jobs: {len(done)} already done, {len(bad)} bad, {todo} to render "
            f"in {len(batches)} batches ({args.decisions} decisions, {driver.name} model, {art})")
        spec = WorkerSpec(driver.name, str(model_dir), str(Path(art).resolve()), args.backend, args.device,
                          args.decisions)
        pool = make_pool(args, spec) if batches else None
        summary.load_s = time.perf_counter() - t0
        t_render = time.perf_counter()
        progress = Progress(todo, summary, enabled=not args.no_progress and todo > 0)
        idle: set[str] = set()
        try:
            with stop_on_signals(progress.note) as stopping:
                for batch, outcomes in (pool.run(batches, stopping) if pool else ()):
                    out.append(result_line(job, o, out) for job, o in zip(batch, outcomes))
                    summary.add(outcomes)
                    progress.update(outcomes)
                    for o in outcomes:
                        if not o.ok:
                            progress.note(f"[render] {o.id} failed: {o.error}")
                        elif o.never_skipped and o.never_skipped.split(":")[0] not in idle:
                            idle.add(o.never_skipped.split(":")[0])  # once per policy setting, not per job
                            progress.note(f"[render] {o.id}: {o.never_skipped}")
                summary.left = todo - summary.rendered - (summary.failed - len(bad))
                summary.interrupted = stopping() and summary.left > 0
        finally:
            progress.close()
            if pool is not None:
                pool.close()
        summary.render_s = time.perf_counter() - t_render
        summary.wall_s = time.perf_counter() - t0
        out.write_summary(summary.to_dict())
        if args.contact_sheet:
            name = contact_sheet(out, good, out.results())
            if name:
                log(f"[render] contact sheet: {out.path / name}")
    return summary


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        summary = render(args)
    except TeaCacheError as exc:
        print(f"teacache-render: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("teacache-render: stopped at once; finished jobs are recorded, the batch in flight is lost: "
              "re-run the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(json.dumps(summary.to_dict()) if args.json else summary.text())
    if summary.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_FAILED_JOBS if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
