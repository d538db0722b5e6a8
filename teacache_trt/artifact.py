"""An artifact folder: :class:`Artifact` opens one, and the functions below change one.

Opening (:meth:`Artifact.open`) trusts nothing it reads: ``manifest.json`` must be a regular
file of sane size inside the folder, its format is checked (:meth:`.manifest.Manifest.parse`),
and every file it names must lie inside the folder's content folder as a regular file of the
recorded size.  A file's contents are hashed before it is used (:meth:`Artifact.verified`,
:meth:`Artifact.graph_path`, :meth:`Artifact.engine_path`; hashes cached per file state by
:mod:`.integrity`).  No path read from the manifest reaches outside the folder.

How an artifact folder changes: one writer at a time, a new set written beside the old one,
the manifest's atomic rename as the single commit point, and the old set removed after it.

    ART/manifest.json      names the content folder and every file in it (the commit point)
    ART/v-<12 hex>/        graphs, external data, engines, trtexec command files
    ART/.staging-XXXXXX/   a set being written; a run that died leaves one, the next removes it
    ART/.lock              held (flock) by the one process writing to ART

A kill -9 at any moment leaves ``manifest.json`` naming either the old complete set or the new
one: the new set is complete before the manifest names it, and the old set is removed only
after.  A reader never sees a mixed set.  Cleanup removes only names this module creates (and,
once, the files an artifact of format 1 named): user files in a ``--force`` folder are kept.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import tempfile
from pathlib import Path
from typing import Any, Iterator

from . import faults, integrity
from .errors import TeaCacheError
from .external_data import onnx_external_data
from .files import atomic_write_bytes, check_name, fsync_dir, inside, os_errors, regular_file, remove, share
from .manifest import CONTENT_PATTERN, GRAPH_NAMES, MANIFEST_NAME, REEXPORT, Manifest

MAX_MANIFEST_BYTES = 64 << 20
STAGING_PREFIX = ".staging-"
LOCK_NAME = ".lock"
_OURS = (STAGING_PREFIX, f".{MANIFEST_NAME}.", ".timing.")  # temporary names at the top level


class Artifact:
    """An artifact folder and its manifest; every file the manifest names is reached through
    here (see the module doc)."""

    def __init__(self, folder: str | os.PathLike, manifest: Manifest):
        """``manifest``: checked already (by :meth:`open`, or an export that just wrote it)."""
        self.folder = Path(folder)
        self.manifest = manifest

    @classmethod
    def open(cls, folder: str | os.PathLike) -> "Artifact":
        """The folder with its checked manifest: format version, every field, and every file
        it names (inside the folder, a regular file of the recorded size).  Contents are hashed
        when a file is used."""
        folder = Path(folder)
        path = folder / MANIFEST_NAME
        with os_errors(f"reading {path}"):
            data = read_manifest_json(folder)
        art = cls(folder, Manifest.parse(data, str(path)))
        with os_errors(f"checking the files of {folder}"):
            for name, entry in art.manifest.files.items():
                size = os.stat(art._content_file(name)).st_size
                if size != entry["size"]:
                    raise TeaCacheError(
                        f"{folder / art.manifest.content / name} has {size} bytes but the manifest recorded "
                        f"{entry['size']} (truncated, replaced or still being copied): {REEXPORT}"
                    )
        return art

    def _content_file(self, name: str) -> Path:
        """``name`` in the content folder: inside the artifact folder and a regular file."""
        content = inside(self.folder, self.manifest.content, "content folder")
        return regular_file(content, name, f"file in {self.manifest.content}")

    def verified(self, name: str, fix: str = REEXPORT, full: bool = False) -> Path:
        """The path of ``name`` after checking its size and sha256 against the manifest."""
        self.manifest.check_listed(name, "the")
        path = self._content_file(name)
        with os_errors(f"reading {path}"):
            integrity.verify(path, self.manifest.files[name], fix, full)
        return path

    def graph_path(self, graph: str) -> Path:
        """A graph file, checked with its external data (names inside the content folder,
        listed by the manifest, contents as recorded)."""
        path = self.verified(self.manifest.graphs[graph].file)
        for name in integrity.remembered(path, "onnx_external_data", onnx_external_data):
            self.manifest.check_listed(name, f"external data of the {graph} graph")
            self.verified(name)
        return path

    def engine_path(self, flavour: str, graph: str) -> Path:
        entry = self.manifest.engines[flavour][graph]
        return self.verified(entry["file"], fix=f"rebuild it with `teacache-export ... --build {flavour} --force`")

    def verify_all(self) -> int:
        """``teacache-export --check``: every file hashed in full (cache ignored) and every
        graph's external data re-read from the graph; returns the bytes checked."""
        files = self.manifest.files
        for name in files:
            self.verified(name, full=True)
        for graph, spec in self.manifest.graphs.items():
            path = self._content_file(spec.file)
            for name in integrity.remembered(path, "onnx_external_data", onnx_external_data, fresh=True):
                self.manifest.check_listed(name, f"external data of the {graph} graph")
        return sum(e["size"] for e in files.values())


def read_manifest_json(art_dir: Path) -> Any:
    """The parsed ``manifest.json`` of ``art_dir`` (any format version), refusing anything but a
    regular file of sane size inside the folder."""
    path = Path(art_dir) / MANIFEST_NAME
    if not os.path.lexists(path):
        raise TeaCacheError(
            f"{path} does not exist: {art_dir} is not an exported artifact folder; "
            f"run `teacache-export MODEL_DIR --out {art_dir}` first"
        )
    real = regular_file(Path(art_dir), MANIFEST_NAME, "manifest")
    size = os.stat(real).st_size
    if size > MAX_MANIFEST_BYTES:
        raise TeaCacheError(f"{path} is {size} bytes, not a manifest: re-export with --force")
    try:
        return json.loads(real.read_bytes())
    except (ValueError, UnicodeDecodeError) as exc:
        raise TeaCacheError(f"{path} is not valid JSON ({exc}); re-run teacache-export with --force") from exc


def save_manifest(art_dir: Path, manifest: Manifest) -> Path:
    """Write ``manifest.json`` atomically: the one commit point of an artifact folder.  What
    the loader would refuse (a NaN coefficient from a degenerate fit, ...) is never written."""
    manifest.validate()
    path = Path(art_dir) / MANIFEST_NAME
    atomic_write_bytes(path, manifest.to_json().encode())
    return path


def is_artifact(folder: Path) -> bool:
    """``folder`` holds a manifest written by teacache-trt (any format version)."""
    try:
        data = read_manifest_json(folder)
    except (TeaCacheError, OSError):
        return False
    return isinstance(data, dict) and "format_version" in data and "export_key" in data


def _only_ours(folder: Path) -> bool:
    return all(n == LOCK_NAME or n.startswith(_OURS) or CONTENT_PATTERN.fullmatch(n) for n in os.listdir(folder))


def check_out_dir(out: Path, force: bool) -> None:
    """``--out``: a new or empty folder, an artifact folder of this project, or ``--force``;
    in every case a folder this process can write to.  Checked before any heavy work."""
    out = Path(out)
    if os.path.lexists(out) and not out.is_dir():
        raise TeaCacheError(f"--out {out} is a file, not a folder: give a folder path (it is created if missing)")
    with os_errors(f"using --out {out}"):
        if out.is_dir() and not force and not is_artifact(out) and not _only_ours(out):
            found = sorted(os.listdir(out))
            raise TeaCacheError(
                f"--out {out} is not empty and is not a teacache-trt artifact folder (it holds "
                f"{', '.join(found[:3])}{', ...' if len(found) > 3 else ''}): choose a new or empty folder, "
                f"or pass --force to write into it (other files are kept; manifest.json is replaced)"
            )
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=STAGING_PREFIX, dir=out)  # the real test, EROFS included
        os.close(fd)
        os.unlink(probe)


@contextlib.contextmanager
def writing(art: Path) -> Iterator[None]:
    """Hold the folder's writer lock: a second export or calibration into it fails at once."""
    with os_errors(f"locking {art}"):
        fd = os.open(Path(art) / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TeaCacheError(
                f"another process is writing to {art} (teacache-export or teacache-calibrate): "
                f"wait for it to finish, or use another --out"
            ) from None
        yield
    finally:
        os.close(fd)


def current(art: Path) -> Manifest | None:
    """The folder's committed manifest, or None where there is none this version can read."""
    try:
        return Artifact.open(art).manifest
    except TeaCacheError:
        return None


def new_staging(art: Path) -> Path:
    with os_errors(f"writing to {art}"):
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=art))
        share(staging, folder=True)
    return staging


def commit_staging(art: Path, staging: Path, manifest: Manifest) -> None:
    """Make the complete set in ``staging`` the artifact of ``art`` (``manifest.files`` filled)."""
    art = Path(art)
    legacy = _legacy_files(art)
    faults.point("export:staged")
    with os_errors(f"committing the export to {art}"):
        manifest.content = f"v-{secrets.token_hex(6)}"
        os.rename(staging, art / manifest.content)
        fsync_dir(art)
        faults.point("export:renamed")
        save_manifest(art, manifest)
        fsync_dir(art)
    faults.point("export:committed")
    for name in legacy:
        remove(art, name)
    clean(art, manifest)


def commit_manifest(art: Path, manifest: Manifest, stage: str) -> None:
    """Switch to ``manifest`` (new files already in its content folder), then clean up."""
    faults.point(f"{stage}:written")
    save_manifest(art, manifest)
    with os_errors(f"committing to {art}"):
        fsync_dir(art)
    faults.point(f"{stage}:committed")
    clean(art, manifest)


def clean(art: Path, manifest: Manifest | None) -> None:
    """Remove what the committed manifest does not name: staging folders and temporary files
    of runs that died, earlier content folders, superseded engines.  Without a readable
    manifest of this version only the temporary names go (a newer version's set is kept)."""
    art = Path(art)
    with contextlib.suppress(OSError):
        for name in os.listdir(art):
            if name.startswith(_OURS) or (manifest is not None and CONTENT_PATTERN.fullmatch(name)
                                          and name != manifest.content):
                remove(art, name)
        if manifest is not None:
            content = inside(art, manifest.content, "content folder")
            for name in os.listdir(content):
                if name not in manifest.files:
                    remove(content, name)


def _legacy_files(art: Path) -> list[str]:
    """Files an artifact of format 1 named at the top level: removed once format 2 commits."""
    try:
        data = read_manifest_json(art)
    except (TeaCacheError, OSError):
        return []
    if not isinstance(data, dict) or data.get("format_version") != 1:
        return []
    names = [f"{g}.trtexec.sh" for g in GRAPH_NAMES]
    for spec in (data.get("graphs") or {}).values():
        names.append(spec.get("file") if isinstance(spec, dict) else None)
        with contextlib.suppress(TeaCacheError, OSError):
            names += onnx_external_data(regular_file(art, names[-1], "graph"))
    for table in (data.get("engines") or {}).values():
        names += [e.get("file") for e in (table or {}).values() if isinstance(e, dict)]
    out = []
    for name in names:
        with contextlib.suppress(TeaCacheError):
            if "/" not in check_name(name, "file") and name != MANIFEST_NAME:
                out.append(name)
    return out
