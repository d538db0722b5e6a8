"""Files an artifact is made of: names that stay inside their folder, atomic writes that honour
the umask, and OS errors turned into messages a user can act on.

Every path read from a manifest goes through :func:`inside` before anything opens, writes or
deletes it: a manifest is data, and data must not steer the program outside its folder.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path, PurePosixPath

from . import faults
from .errors import TeaCacheError


# --- names ------------------------------------------------------------------------------------
def check_name(name: object, what: str) -> str:
    """A relative POSIX path with no ``..``, no absolute root, no empty or special parts."""
    if not isinstance(name, str) or not name or "\0" in name or "\\" in name:
        raise TeaCacheError(f"{what} {name!r} is not a file name: the manifest is damaged; re-export with --force")
    parts = PurePosixPath(name).parts
    if name.startswith("/") or any(p in ("", ".", "..") for p in parts) or name != "/".join(parts):
        raise TeaCacheError(
            f"{what} {name!r} points outside the artifact folder (absolute, '..' or '.' parts): "
            f"the manifest was edited or damaged; re-export with --force"
        )
    return name


def inside(root: Path, name: str, what: str) -> Path:
    """``root/name`` resolved, refused unless it stays inside ``root`` (symlinks followed)."""
    check_name(name, what)
    root_real = Path(os.path.realpath(root))
    real = Path(os.path.realpath(root_real / name))
    if real == root_real or root_real not in real.parents:
        raise TeaCacheError(
            f"{what} {name!r} resolves to {real}, outside {root_real} (a symlink leaving the folder): "
            f"replace it with the file itself, or re-export with --force"
        )
    return real


def regular_file(root: Path, name: str, what: str) -> Path:
    """:func:`inside`, and a regular file: never a device, FIFO or folder (they hang or lie)."""
    path = inside(root, name, what)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise TeaCacheError(f"{what} {path} named by the manifest is missing: re-run teacache-export "
                            f"for {root} (it rebuilds what is missing)") from None
    if not stat.S_ISREG(mode):
        raise TeaCacheError(f"{what} {path} is not a regular file (a device, FIFO or folder): "
                            f"replace it with the exported file, or re-export with --force")
    return path


def remove(root: Path, name: str) -> None:
    """Delete ``root/name`` (a file, or a folder with everything in it) if it is ours to delete.

    Only a name whose parent folder resolves inside ``root`` is touched; a symlink is unlinked
    itself, never its target.  Anything else is left alone: cleanup never escalates.
    """
    try:
        check_name(name, "file")
    except TeaCacheError:
        return
    root_real = Path(os.path.realpath(root))
    parent = Path(os.path.realpath(root_real / PurePosixPath(name).parent))
    if parent != root_real and root_real not in parent.parents:
        return
    path = parent / PurePosixPath(name).name
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        if stat.S_ISDIR(os.lstat(path).st_mode):
            shutil.rmtree(path)  # never follows a link inside the folder
        else:
            os.unlink(path)


# --- modes and writes -------------------------------------------------------------------------
def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def share(path: Path, folder: bool = False) -> None:
    """Give a file made by ``tempfile`` (0600 / 0700) the mode ``open`` would have given it."""
    os.chmod(path, (0o777 if folder else 0o666) & ~current_umask())


def atomic_write_bytes(path: Path, data: bytes, mode: int | None = None, tag: str = "") -> None:
    """Write via a temporary file in the same folder and rename: never a half-written file.

    The file gets the umask's mode (or ``mode`` & ~umask); a full disk or a read-only folder is
    a :class:`TeaCacheError` naming the path, and the previous file is kept.  The temporary
    file is ``.<name>.<tag><random>.tmp``: a ``tag`` lets its writer tell its own leftovers
    from other files of that name pattern (``temp_name``).
    """
    path = Path(path)
    with os_errors(f"writing {path}"):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{tag}", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, (0o666 if mode is None else mode) & ~current_umask())
            faults.point(f"write:{path.name}")
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise


def temp_name(name: str, tag: str) -> re.Pattern:
    """The names ``atomic_write_bytes(folder / name, ..., tag=tag)`` gives its temporary files
    (``mkstemp``'s random part: 8 letters, digits or '_')."""
    return re.compile(rf"\.{re.escape(name)}\.{re.escape(tag)}[a-z0-9_]{{8}}\.tmp")


STREAMS = ("/dev/stdout", "/dev/stderr", "/dev/fd/", "/proc/")


def write_output(path: Path, data: bytes) -> None:
    """Write a file the user named (``--json FILE``, a report): the node they gave is honoured.

    A new name or a regular file is written atomically (``atomic_write_bytes``); a FIFO,
    character device or socket (a pipe, ``/dev/stdout``, ``/dev/null``) is written through, so
    the node stays what it was, as with a shell redirection; a symlink is followed and what it
    names is treated the same way (the link stays); a folder is refused.  The standard streams
    (``/dev/stdout``, ``/dev/fd/N``, ``/proc/...``) are always written through: stdout
    redirected to a file must not have that file swapped for a new one under the shell's feet.
    """
    path = Path(path)
    with os_errors(f"writing {path}"):
        try:
            mode = os.stat(path).st_mode  # follows symlinks: what a write would reach
        except FileNotFoundError:
            mode = None
        if mode is not None and stat.S_ISDIR(mode):
            raise TeaCacheError(f"{path} is a folder: give a file name")
        special = mode is not None and not stat.S_ISREG(mode)
        if special or str(path.absolute()).startswith(STREAMS):
            if mode is None:
                raise TeaCacheError(f"{path} does not exist: give a file name, or a stream that is open")
            _write_through(path, data)
            return
        atomic_write_bytes(Path(os.path.realpath(path)) if path.is_symlink() else path, data)


def _write_through(path: Path, data: bytes) -> None:
    """Write into an existing node without replacing it (appending where it is a regular file)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (a crash right after must not undo it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_HINTS = {
    errno.ENOSPC: "free some space, or write to another folder",
    errno.EDQUOT: "free some space, or write to another folder",
    errno.EROFS: "the file system is read-only: choose a writable folder",
    errno.EACCES: "choose a folder you can write to, or fix its permissions",
    errno.EPERM: "choose a folder you can write to, or fix its permissions",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "the path is a folder: give a file name",
    errno.ENAMETOOLONG: "a name in the path is too long (at most 255 bytes per name): choose a shorter one",
    errno.ELOOP: "the path is a symlink (or a loop of them): give the file itself",
}


@contextlib.contextmanager
def os_errors(doing: str):
    """OSError (full disk, permissions, read-only file systems) -> one-line TeaCacheError."""
    try:
        yield
    except OSError as exc:
        hint = _HINTS.get(exc.errno, "check the path and try again")
        where = f" ({exc.filename})" if exc.filename else ""
        raise TeaCacheError(f"{doing} failed: {exc.strerror or exc}{where}: {hint}") from exc
