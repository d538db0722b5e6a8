"""Integrity: a graph or engine swapped for another checkpoint's, truncated, flipped or missing
is refused at load with the file's name and the fix; ``teacache-export --check`` hashes every
file in full; the hash cache never vouches for changed bytes."""
from __future__ import annotations

import os
import shutil

import pytest

import teacache_trt
from teacache_trt import TeaCacheError, integrity
from teacache_trt.artifact import Artifact
from teacache_trt.export import cli
from teacache_trt.manifest import graph_names

from faults.helpers import edit_manifest, other_checkpoint


def content(art):
    return art / Artifact.open(art).manifest.content


def test_intact_artifact_checks_in_full(art, capsys):
    assert cli.main(["--check", str(art)]) == 0
    out = capsys.readouterr().out
    assert f"{len(Artifact.open(art).manifest.files)} files" in out and "match the manifest" in out


def test_head_of_another_checkpoint_is_refused(art, tmp_path, capsys):
    """Same architecture, same size, other weights: only the hash tells them apart."""
    head = content(art) / "head.onnx"
    swapped = other_checkpoint(head, tmp_path / "head_b.onnx")
    assert swapped.stat().st_size == head.stat().st_size and swapped.read_bytes() != head.read_bytes()
    shutil.copyfile(swapped, head)
    with pytest.raises(TeaCacheError, match=r"head.onnx does not match the manifest .*replaced or modified.*--force"):
        teacache_trt.load_transformer(art)
    assert cli.main(["--check", str(art)]) == 2
    assert "head.onnx does not match the manifest" in capsys.readouterr().err


def test_flipped_byte_with_mtime_restored_is_caught_after_a_cached_load(art):
    """A verified load caches the hash; a later in-place change (mtime set back) changes the
    ctime, so the cache does not vouch for it."""
    teacache_trt.load_transformer(art)  # hashes and caches
    blocks = content(art) / "blocks.onnx"
    st = blocks.stat()
    data = bytearray(blocks.read_bytes())
    data[len(data) // 2] ^= 0x01
    with open(blocks, "r+b") as f:
        f.write(data)
    os.utime(blocks, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert blocks.stat().st_mtime_ns == st.st_mtime_ns and blocks.stat().st_size == st.st_size
    with pytest.raises(TeaCacheError, match=r"blocks.onnx does not match the manifest"):
        teacache_trt.load_transformer(art)


def test_truncated_graph_fails_on_its_size_before_hashing(art, monkeypatch):
    blocks = content(art) / "blocks.onnx"
    blocks.write_bytes(blocks.read_bytes()[:1000])
    monkeypatch.setattr(integrity, "sha256_file", lambda *a: pytest.fail("hashed a file of the wrong size"))
    with pytest.raises(TeaCacheError, match=r"blocks.onnx has 1000 bytes but the manifest recorded \d+ \(truncated"):
        teacache_trt.load_transformer(art)


def test_graphs_of_two_exports_mixed_are_refused(art, exported, tmp_path):
    """The cogvideox head copied into the flux folder: caught by size (and by hash)."""
    shutil.copyfile(exported("cogvideox").graph("head"), content(art) / "head.onnx")
    with pytest.raises(TeaCacheError, match=r"head.onnx has \d+ bytes but the manifest recorded"):
        teacache_trt.load_transformer(art)


def test_manifest_pointing_at_an_unlisted_file_is_refused(art):
    edit_manifest(art, lambda d: d["graphs"]["head"].update(file="embed.trtexec.sh.bak"))
    with pytest.raises(TeaCacheError, match=r"head graph file 'embed.trtexec.sh.bak' is not among the manifest's files"):
        teacache_trt.load_transformer(art)


def test_warm_load_hashes_nothing(art, monkeypatch):
    teacache_trt.load_transformer(art)
    monkeypatch.setattr(integrity, "sha256_file", lambda *a: pytest.fail("a warm load re-hashed a file"))
    teacache_trt.load_transformer(art)


def test_cold_load_hashes_each_file_once(art, monkeypatch, tmp_path):
    """Another machine (an empty cache): every graph is hashed in full, once."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "fresh"))
    seen = []
    real = integrity.sha256_file
    monkeypatch.setattr(integrity, "sha256_file", lambda path, *a: (seen.append(path.name), real(path, *a))[1])
    teacache_trt.load_transformer(art)
    assert sorted(seen) == sorted(f"{g}.onnx" for g in graph_names(Artifact.open(art).manifest.graphs))
    seen.clear()
    teacache_trt.load_transformer(art)
    assert seen == []


def test_unwritable_cache_costs_time_not_correctness(art, monkeypatch, tmp_path):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "file"))  # a file: nothing can be cached
    teacache_trt.load_transformer(art)
    with open(content(art) / "head.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(TeaCacheError, match="head.onnx has"):
        teacache_trt.load_transformer(art)


def test_engine_swapped_for_another_is_refused(art):
    """Engines are checked like graphs: the manifest's record, not the size alone."""
    from teacache_trt.integrity import record

    engine = content(art) / "blocks.tensorrt-rtx.0123456789abcdef.0123456789ab.engine"
    engine.write_bytes(b"engine A" * 100)
    entry = {"file": engine.name, "key": "0123456789abcdef", "build_s": 1.0, "trt_version": "1",
             "device": {"gpu": None, "sm": ["8.6"]}}
    edit_manifest(art, lambda d: (d["engines"].update({"tensorrt-rtx": {g: entry for g in d["graphs"]}}),
                                  d["files"].update({engine.name: record(engine)})))
    manifest = Artifact.open(art).manifest
    assert Artifact(art, manifest).engine_path("tensorrt-rtx", "blocks") == engine.resolve()
    engine.write_bytes(b"engine B" * 100)  # same size, another build
    with pytest.raises(TeaCacheError, match=r"\.engine does not match the manifest.*--build tensorrt-rtx --force"):
        teacache_trt.load_transformer(art, backend="tensorrt-rtx", device="cpu")
