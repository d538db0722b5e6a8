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

from ... import options, quiet
from ...errors import TeaCacheError
from ...export.cli import parse_axis
from .. import policy_options
from .artifacts import default_cache_dir
from .batching import DECISIONS
from .output import RESULTS

EXIT_FAILED_JOBS, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130
MAX_BATCH = 1024  # jobs per pipeline call: far beyond a GPU's memory, short of an export's overflow
MAX_WORKERS = 4096


def build_parser() -> argparse.ArgumentParser:
    p = options.Parser(
        prog="teacache-render", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Render a JSONL job file with TeaCache; re-running the same command resumes.",
        epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("jobs", type=Path, help="job file: one JSON object per line")
    p.add_argument("--out", type=options.output_folder, required=True,
                   help="output folder: <id>.png / <id>.mp4 (+ <id>.gif preview; the GIF alone without "
                        "imageio-ffmpeg), results.jsonl, summary.json")
    p.add_argument("--model", type=Path, help="a diffusers pipeline folder, or a bundled model by name: digits (the "
                                              "default) or video (the moving-digits Wan model)")
    p.add_argument("--artifacts", type=Path,
                   help="exported artifacts of the model's transformer (default: export on first use into "
                        "--cache-dir)")
    p.add_argument("--artifacts-2", type=Path,
                   help="a two-expert pipeline's (Wan2.2 A14B) transformer_2 artifacts, the low-noise expert (default: "
                        "exported on first use with the first's; with --artifacts alone it runs in PyTorch)")
    p.add_argument("--axis", type=parse_axis, action="append", default=[], metavar="NAME=MIN:OPT:MAX",
                   help="the first-use export's profile range of an axis (repeatable; teacache-export --family NAME "
                        "--list-axes lists them), over the profile the job file's sizes give")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help=f"where exports on first use go (default: {default_cache_dir()})")
    p.add_argument("--backend", choices=options.BACKEND_NAMES, default="onnxruntime", help="default: onnxruntime")
    p.add_argument("--device", default="cpu", type=options.device, help="cpu, cuda or cuda:N (default: cpu)")
    p.add_argument("--batch-size", type=options.integer(1, MAX_BATCH), default=8,
                   help="jobs per pipeline call (default 8; capped to the artifact's batch profile)")
    p.add_argument("--decisions", choices=DECISIONS, default="sample",
                   help="sample (default): each job decides its own steps (batching never changes a result); "
                        "batch: one decision per batch (upstream TeaCache)")
    p.add_argument("--threshold", type=options.number(0.0),
                   help="threshold of jobs that give none (default: the artifact's); alone, TeaCache's shorthand "
                        "(--policy teacache --policy-param threshold=X)")
    p.add_argument("--coefficients", choices=("artifact", "upstream"),
                   help="TeaCache coefficient set of jobs that give none: artifact (default: what the artifact "
                        "records; for the bundled digits model its calibration) or upstream (the variant's own, "
                        "e.g. FLUX.1's)")
    policy_options.add_arguments(p, " of jobs that name none (a job's \"policy\": NAME or "
                                    "{\"name\": ..., \"params\": {...}})")
    p.add_argument("--fps", type=options.number(0.0),
                   help="frames per second of video jobs that give no \"fps\" (default: the pipeline's)")
    p.add_argument("--ray", metavar="ADDRESS",
                   help="run batches on Ray actors: a cluster address, or 'local' to start one here")
    p.add_argument("--workers", type=options.integer(1, MAX_WORKERS), default=1,
                   help="CPU actors with --ray (default 1; with --device cuda: one actor per GPU of the cluster)")
    p.add_argument("--contact-sheet", action="store_true",
                   help="also write OUT_DIR/contact_sheet.png: every image (a strip of frames per video) labelled "
                        "with prompt, policy and threshold, coefficient set and computed steps")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def check_args(args) -> None:
    """Everything cheap to check, before any lock, export or model load."""
    if args.workers > 1 and not args.ray:
        raise TeaCacheError(f"--workers {args.workers} runs Ray actors: add --ray local (or a cluster address)")
    if args.fps is not None:
        from .encode import check_fps

        check_fps(args.fps)
    if args.axis and args.artifacts:
        raise TeaCacheError("--axis shapes the first-use export; --artifacts are exported already (re-export them "
                            "with teacache-export --axis)")
    if args.artifacts_2 is not None and args.artifacts is None:
        raise TeaCacheError(f"--artifacts-2 {args.artifacts_2} goes with --artifacts (the first expert's); leave both "
                            f"out to export the two experts on first use")
    policy = run_policy(args)  # the policy's parameters, checked before any export
    if args.coefficients and policy is not None and "coefficients" not in policy.param_names():
        raise TeaCacheError(f"--coefficients {args.coefficients}: the policy {policy!r} takes no coefficients; "
                            f"leave it out")
    if not args.jobs.is_file():
        raise TeaCacheError(f"job file {args.jobs} does not exist: give a JSONL file, one job per line")
    if args.jobs.resolve() == (args.out / RESULTS).resolve():
        raise TeaCacheError(f"the job file {args.jobs} is --out's {RESULTS}, the renderer's record of results: give "
                            f"the job file the jobs came from")
    if args.ray:
        from .ray_pool import import_ray

        import_ray()


def check_out_place(out: Path, model_dir: Path) -> None:
    """--out outside the model's folder: files written there would join the model's content
    hash, and every run would export the model again."""
    out, model = out.resolve(), model_dir.resolve()
    if out == model or model in out.parents:
        raise TeaCacheError(f"--out {out} is inside the model folder {model}: the render's files would change the "
                            f"model's content hash (a new export every run); choose a folder outside it")


def run_policy(args, artifact=None, settings=None):
    """The policy of jobs that name none: ``--policy`` (with ``--threshold`` as its threshold),
    else TeaCache at ``--threshold``, else the artifact's default (None before it is known);
    with ``--coefficients NAME``, that coefficient set (once ``settings`` knows the artifact)."""
    from ... import policies

    given = policy_options.from_args(args)
    if given is None:
        if args.threshold is not None or args.coefficients:
            given = policies.TeaCache(threshold=args.threshold)
        elif artifact is not None:
            given = policies.make(artifact.name, **artifact.params)
    elif args.threshold is not None:
        if not given.has_threshold:
            raise TeaCacheError(f"--threshold {args.threshold:g}: the policy {given!r} has no threshold; leave it out")
        given = given.replace(threshold=args.threshold)
    if given is not None and args.coefficients and settings is not None:
        given = settings.with_set(given, args.coefficients)
    return given


def fit_batch_size(manifest, art_dir: Path, batch_size: int, log) -> int:
    """``batch_size``, capped to the artifact's batch profile (with a note)."""
    lo, opt, hi = manifest.axes.get("batch", (1, batch_size, batch_size))
    if batch_size > hi:
        log(f"[render] --batch-size {batch_size} is above the batch profile [{lo}, {hi}] of {art_dir}: batches of "
            f"{hi} (for larger ones, re-export with --axis batch={lo}:{opt}:{batch_size})")
        return hi
    return batch_size


def run_settings(jobs) -> list[dict]:
    """The caching settings of ``jobs`` for the summary: per policy (its parameters other than
    the threshold and coefficients) and coefficient set, the thresholds and the job count."""
    groups: dict[str, dict] = {}
    for job in jobs:
        params = {k: v for k, v in job.policy.get("params", {}).items() if k not in ("threshold", "coefficients")}
        entry = {"policy": job.policy.get("name"), "params": params, "coefficients": job.coefficients}
        group = groups.setdefault(json.dumps(entry, sort_keys=True), {**entry, "thresholds": set(), "jobs": 0})
        group["jobs"] += 1
        if job.threshold is not None:
            group["thresholds"].add(job.threshold)
    return [{**g, "thresholds": sorted(g["thresholds"])} for g in groups.values()]


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


def result_line(job, outcome, out) -> dict:
    """The results.jsonl record of a finished job (its output files written first): what it
    was made with (policy, threshold, coefficient set, the key of everything that determines
    it), its status, files and steps."""
    from .jobs import BadJob, Job

    record = {"id": job.id, "line": job.line}
    if isinstance(job, Job):
        record.update(threshold=job.threshold, steps=job.steps, policy=dict(job.policy),
                      coefficients=job.coefficients, key=job.key)
    error = job.error if isinstance(job, BadJob) else outcome.error
    if outcome is not None and outcome.ok:
        name = f"{job.id}.{outcome.suffix}"
        preview = f"{job.id}.gif" if outcome.preview is not None else None
        try:  # a symlink, FIFO or folder in an output's place fails this job, never the run
            for n in filter(None, (name, preview)):
                out.own_file(n)
        except TeaCacheError as exc:
            error = str(exc)
        else:
            files = {"preview": preview, "preview_sha256": out.write_output(preview, outcome.preview)} if preview else {}
            return {**record, "status": "ok", "output": name, "sha256": out.write_output(name, outcome.data), **files,
                    "computed_steps": outcome.computed_steps, "skipped_steps": outcome.skipped_steps,
                    "seconds": round(outcome.seconds, 4)}
    return {**record, "status": "failed", "output": None, "sha256": None, "computed_steps": [],
            "skipped_steps": [], "seconds": round(outcome.seconds, 4) if outcome else 0.0,
            "error": cut(error)}


MAX_ERROR = 2000  # characters of an error kept in results.jsonl and printed


def cut(text: str) -> str:
    return text if len(text) <= MAX_ERROR else f"{text[:MAX_ERROR]}... ({len(text)} characters)"


def make_pool(args, spec):
    if args.ray:
        from .ray_pool import RayPool

        return RayPool(spec, args.ray, args.workers)
    from .pool import LocalPool

    return LocalPool(spec)


def experts_artifacts(args, driver, model_dir: Path, first_use: dict) -> Path | None:
    """The second expert's artifacts of a two-expert pipeline: ``--artifacts-2``, else exported on
    first use (unless ``--artifacts`` names the first expert's only: the second then runs in PyTorch)."""
    two = driver.export_plan(model_dir, args.batch_size).transformer_2_dir is not None
    if args.artifacts_2 is not None:
        if not two:
            raise TeaCacheError(f"--artifacts-2 {args.artifacts_2}: the pipeline at {model_dir} has no transformer_2 "
                                f"(a two-expert pipeline such as Wan2.2 A14B has)")
        return args.artifacts_2
    if not two or args.artifacts:
        return None
    from .artifacts import ensure_artifacts

    return ensure_artifacts(driver, model_dir, component="transformer_2", **first_use)


def one_coefficient_set(job):
    """A job of a two-expert pipeline that names coefficients: refused (they would reach both
    experts, whose schedules differ); each expert keeps its own artifact's."""
    from .jobs import BadJob, Job

    if isinstance(job, Job) and "coefficients" in job.policy.get("params", {}):
        return BadJob(job.id, job.line, f"job {job.id}: coefficients in its policy would reach both experts of this "
                                        f"two-expert pipeline; leave them out (each expert uses its artifact's: set "
                                        f"them with teacache-export --coefficients or teacache-calibrate --pipeline)")
    return job


def render(args, log=None):
    from ... import policies
    from ...artifact import Artifact
    from ..drivers import model_folder, render_driver_for
    from .artifacts import check_model_matches, ensure_artifacts, job_sizes
    from .batching import batch_key, make_batches, pending
    from .jobs import BadJob, Job, JobReader
    from .output import OutputDir
    from .progress import Progress, Summary
    from .settings import RunSettings
    from .sheet import contact_sheet
    from .worker import WorkerSpec

    log = log or functools.partial(print, file=sys.stderr)
    t0 = time.perf_counter()
    check_args(args)
    model_dir = model_folder(args.model).resolve()
    if not model_dir.is_dir():
        raise TeaCacheError(f"--model {model_dir} is not a folder: give a diffusers pipeline folder")
    driver = render_driver_for(model_dir)
    check_out_place(args.out, model_dir)
    fields, defaults = driver.job_fields(model_dir), dict(driver.defaults(model_dir))
    if args.fps is not None:
        if "fps" not in fields:
            raise TeaCacheError(f"--fps {args.fps:g}: the model at {model_dir} renders images, not videos; leave it out")
        defaults["fps"] = args.fps
    two_experts = driver.export_plan(model_dir, args.batch_size).transformer_2_dir is not None
    if args.coefficients and two_experts and not (args.artifacts and args.artifacts_2 is None):
        raise TeaCacheError(f"--coefficients {args.coefficients}: each expert of a two-expert pipeline keeps its own "
                            f"artifact's coefficients; set them at export (teacache-export --coefficients) or fit them "
                            f"(teacache-calibrate --pipeline --expert)")
    with OutputDir(args.out) as out:
        # The first-use export's profile covers the job file's sizes (--axis over them).
        sizes = job_sizes(args.jobs, driver, model_dir) if args.artifacts is None else []
        first_use = dict(batch_size=args.batch_size, backend=args.backend, log=log, axes=dict(args.axis),
                         sizes=sizes, cache_dir=args.cache_dir or default_cache_dir())
        art = args.artifacts or ensure_artifacts(driver, model_dir, **first_use)
        art_2 = experts_artifacts(args, driver, model_dir, first_use)
        manifest = Artifact.open(art).manifest
        if args.artifacts:
            check_model_matches(manifest, art, driver, model_dir)
            if art_2 is not None:
                check_model_matches(Artifact.open(art_2).manifest, art_2, driver, model_dir, component="transformer_2")
        batch_size = fit_batch_size(manifest, art, args.batch_size, log)
        if art_2 is not None:
            batch_size = fit_batch_size(Artifact.open(art_2).manifest, art_2, batch_size, log)
        artifact = policies.artifact_policies(manifest, str(Path(art) / "manifest.json"))
        settings = RunSettings.for_artifact(manifest, artifact, {
            "model": str(model_dir), "weights": manifest.weights_hash, "graphs": manifest.content,
            "precision": manifest.precision, "backend": args.backend, "device": args.device.split(":")[0],
            "decisions": args.decisions, **({"graphs_2": Artifact.open(art_2).manifest.content} if art_2 is not None else {})})
        policy = run_policy(args, artifact, settings)
        policy.bind(artifact)  # the run's policy fits the artifact: checked before any job
        reader = JobReader(fields, defaults, policy, functools.partial(driver.check_job, model_dir), settings)
        parsed = list(reader.read(args.jobs))
        if art_2 is not None:
            parsed = [one_coefficient_set(j) for j in parsed]
        good = [j for j in parsed if isinstance(j, Job)]
        # Finished: the last result of the id is ok, its output intact, and made for the same
        # key (prompt, seed, steps, guidance, policy with its threshold and coefficients, model,
        # graphs, backend, decision mode): an edited job or another setting renders again.
        results = out.results()
        finished = out.finished(results)
        done = {j.id for j in good if j.id in finished and results[j.id].get("key") == j.key}
        # One decision per batch: a batch cut by a kill between its result lines decides again whole.
        batches = pending(make_batches(good, batch_key(driver.batch_key, args.decisions), batch_size), done,
                          whole=args.decisions == "batch")
        done -= {j.id for b in batches for j in b}
        summary = Summary(jobs=len(parsed), already_done=len(done), settings=run_settings(good))
        bad = [j for j in parsed if isinstance(j, BadJob)]
        out.append(result_line(j, None, out) for j in bad)
        summary.failed += len(bad)
        for j in bad:
            log(f"[render] failed: {cut(j.error)}")
        todo = sum(len(b) for b in batches)
        log(f"[render] {len(parsed)} jobs: {len(done)} already done, {len(bad)} bad, {todo} to render "
            f"in {len(batches)} batches ({args.decisions} decisions, {driver.name} model, {art})")
        spec = WorkerSpec(driver.name, str(model_dir), str(Path(art).resolve()), args.backend, args.device,
                          args.decisions, str(Path(art_2).resolve()) if art_2 is not None else None)
        pool = make_pool(args, spec) if batches else None
        summary.load_s = time.perf_counter() - t0
        t_render = time.perf_counter()
        progress = Progress(todo, summary, enabled=not args.no_progress and todo > 0)
        idle: set[str] = set()
        try:
            with stop_on_signals(progress.note) as stopping:
                for batch, outcomes in (pool.run(batches, stopping) if pool else ()):
                    for job, o in zip(batch, outcomes):
                        record = result_line(job, o, out)
                        out.append([record])
                        if o.ok and record["status"] != "ok":  # its output could not be written
                            o.error = record["error"]
                    summary.add(outcomes)
                    progress.update(outcomes)
                    for o in outcomes:
                        if not o.ok:
                            progress.note(f"[render] {o.id} failed: {cut(o.error)}")
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
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, or a bad option (one line, already printed)
        return exc.code
    quiet.install()
    try:
        summary = render(args)
        options.emit(json.dumps(summary.to_dict(), allow_nan=False) if args.json else summary.text(), "the summary")
    except TeaCacheError as exc:
        print(f"teacache-render: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("teacache-render: stopped at once; finished jobs are recorded, the batch in flight is lost: "
              "re-run the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    if summary.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_FAILED_JOBS if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
