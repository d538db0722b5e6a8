"""Files a user names for output (``teacache-calibrate --json FILE``, ``teacache-bench --report``)
are honoured as the node they are: a regular file or a new name is replaced atomically, a FIFO
or device (stdout, /dev/null, /dev/full) is written through and stays what it was, a symlink is
followed and stays a symlink; never is a special file renamed over.  Names the file system
cannot take fail before the work, not after it."""
from __future__ import annotations

import os
import stat
import threading

import pytest

from teacache_trt import TeaCacheError
from teacache_trt.files import write_output
from teacache_trt.tools import calibrate


def char_device(path, minor: int):
    """A node like /dev/null (minor 3) or /dev/full (minor 7), made here: the real ones are
    never put at risk by a test."""
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, minor))
    except PermissionError:
        pytest.skip("making a character device needs root (CAP_MKNOD)")
    return path


def test_a_regular_file_or_new_name_is_replaced_atomically(tmp_path):
    write_output(tmp_path / "new.json", b"one")
    (tmp_path / "old.json").write_bytes(b"before")
    write_output(tmp_path / "old.json", b"two")
    assert (tmp_path / "new.json").read_bytes() == b"one" and (tmp_path / "old.json").read_bytes() == b"two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.json", "old.json"]  # no temporary left


def test_a_symlink_is_followed_and_stays(tmp_path):
    (tmp_path / "real.json").write_bytes(b"before")
    os.symlink(tmp_path / "real.json", tmp_path / "link.json")
    write_output(tmp_path / "link.json", b"after")
    assert os.path.islink(tmp_path / "link.json") and (tmp_path / "real.json").read_bytes() == b"after"


def test_a_fifo_is_written_through(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(open(fifo, "rb").read()))
    reader.start()
    write_output(fifo, b'{"r2": 0.9}')
    reader.join(30)
    assert got == [b'{"r2": 0.9}'] and stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_a_character_device_stays_a_device(tmp_path):
    null = char_device(tmp_path / "null", 3)
    write_output(null, b"discarded")
    assert stat.S_ISCHR(os.lstat(null).st_mode)
    full = char_device(tmp_path / "full", 7)
    with pytest.raises(TeaCacheError, match=r"writing .*full failed: No space left on device"):
        write_output(full, b"x")
    assert stat.S_ISCHR(os.lstat(full).st_mode)


def test_a_folder_is_refused(tmp_path):
    with pytest.raises(TeaCacheError, match="is a folder: give a file name"):
        write_output(tmp_path, b"x")


def test_calibrate_json_onto_a_device_or_symlink_keeps_the_node(flux, tmp_path, capsys):
    """The probe's case: --json onto a symlink or a character device replaced the node."""
    null = char_device(tmp_path / "null", 3)
    (tmp_path / "real.json").write_text("")
    os.symlink(tmp_path / "real.json", tmp_path / "link.json")
    common = [str(flux.art_dir), "--driver", "synthetic", "--seeds", "1", "--holdout", "0", "--steps", "3",
              "--order", "1"]
    assert calibrate.main([*common, "--json", str(null)]) == 0
    assert stat.S_ISCHR(os.lstat(null).st_mode)
    assert calibrate.main([*common, "--json", str(tmp_path / "link.json")]) == 0
    assert os.path.islink(tmp_path / "link.json") and '"coefficients"' in (tmp_path / "real.json").read_text()
    full = char_device(tmp_path / "full", 7)
    assert calibrate.main([*common, "--json", str(full)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("teacache-calibrate: error: writing") and "No space left on device" in err[-1]
    assert stat.S_ISCHR(os.lstat(full).st_mode)
