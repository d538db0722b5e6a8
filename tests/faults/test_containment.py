"""Containment: no path a manifest names reaches outside the artifact folder, and nothing a
manifest names can make the loader, the exporter's reuse or its cleanup read, hang on, write
or delete a file outside it.  Every case ends in a TeaCacheError before anything is read, and
the files outside are byte for byte as they were."""
from __future__ import annotations

import json
import os

import pytest

import teacache_trt
from teacache_trt import TeaCacheError
from teacache_trt.artifact import Artifact
from teacache_trt.export import cli

from faults.helpers import edit_manifest


def _content(art):
    return art / json.loads((art / "manifest.json").read_text())["content"]


def _name(outside, kind):
    return {"dotdot": "../../outside/victim.txt", "absolute": str(outside.file)}[kind]


# Each case: (id, how the folder is tampered with, what the error says)
def graph_name(kind):
    def tamper(art, outside):
        name = _name(outside, kind)
        edit_manifest(art, lambda d: (d["graphs"]["blocks"].update(file=name),
                                      d["files"].update({name: d["files"]["blocks.onnx"]})))
    return tamper


def engine_name(kind):
    def tamper(art, outside):
        name = _name(outside, kind)
        entry = {"file": name, "key": "0" * 16, "build_s": 1.0, "trt_version": "1", "device": {"gpu": None}}
        edit_manifest(art, lambda d: (d["engines"].update({"tensorrt-rtx": {g: entry for g in d["graphs"]}}),
                                      d["files"].update({name: {"size": 20, "sha256": "0" * 64}})))
    return tamper


def content_name(value):
    def tamper(art, outside):
        edit_manifest(art, lambda d: d.update(content=value if value != "ABS" else str(outside.root)))
    return tamper


def replace_graph(make):
    def tamper(art, outside):
        path = _content(art) / "blocks.onnx"
        path.unlink()
        make(path, outside)
    return tamper


def content_symlink(art, outside):
    """The content folder swapped for a link to a folder outside (holding a copy of it)."""
    content = _content(art)
    copy = outside.root / "elsewhere"
    content.rename(copy)
    os.symlink(copy, content)
    outside.before = outside.snapshot()


def manifest_link(art, outside):
    target = outside.root / "manifest.json"
    (art / "manifest.json").rename(target)
    os.symlink(target, art / "manifest.json")
    outside.before = outside.snapshot()


CASES = [
    ("graph-dotdot", graph_name("dotdot"), r"points outside the artifact folder"),
    ("graph-absolute", graph_name("absolute"), r"points outside the artifact folder"),
    ("graph-symlink-out", replace_graph(lambda p, o: os.symlink(o.file, p)), r"outside .*a symlink leaving the folder"),
    ("graph-dev-zero", replace_graph(lambda p, o: os.symlink("/dev/zero", p)), r"outside .*a symlink leaving the folder"),
    ("graph-fifo", replace_graph(lambda p, o: os.mkfifo(p)), r"not a regular file \(a device, FIFO or folder\)"),
    ("graph-folder", replace_graph(lambda p, o: p.mkdir()), r"not a regular file"),
    ("engine-dotdot", engine_name("dotdot"), r"points outside the artifact folder"),
    ("engine-absolute", engine_name("absolute"), r"points outside the artifact folder"),
    ("content-dotdot", content_name(".."), r"content folder '\.\.' is not v-<12 hex digits>"),
    ("content-absolute", content_name("ABS"), r"is not v-<12 hex digits>"),
    ("content-symlink-out", content_symlink, r"resolves to .*outside"),
    ("manifest-symlink-out", manifest_link, r"resolves to .*outside"),
    ("files-dotdot", lambda a, o: edit_manifest(a, lambda d: d["files"].update({"../../outside/victim.txt": {"size": 20, "sha256": "0" * 64}})),
     r"points outside the artifact folder"),
]


@pytest.mark.parametrize("tamper, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_load_refuses_and_reads_nothing_outside(art, outside, tamper, message):
    tamper(art, outside)
    with pytest.raises(TeaCacheError, match=message):
        teacache_trt.load_transformer(art, backend="onnxruntime")
    assert outside.untouched()


@pytest.mark.parametrize("tamper, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_check_refuses_in_one_line(art, outside, tamper, message, capsys):
    tamper(art, outside)
    assert cli.main(["--check", str(art)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("teacache-export: error:") and err.count("\n") == 1 and "Traceback" not in err
    assert outside.untouched()


@pytest.mark.parametrize("case", ["engine-dotdot", "engine-absolute", "graph-symlink-out", "graph-dev-zero",
                                  "graph-fifo", "content-symlink-out"])
def test_reexport_replaces_the_artifact_and_touches_nothing_outside(art, outside, fast_export, case):
    """The old bug: a manifest engine file of ../victim.txt made a re-export delete it; /dev/zero
    as a graph made it hang.  Now the folder is simply exported again, and cleaned."""
    tamper = dict((c[0], c[1]) for c in CASES)[case]
    tamper(art, outside)
    manifest = fast_export(art)
    assert outside.untouched()
    assert Artifact.open(art).manifest.content == manifest.content
    assert Artifact(art, manifest).verify_all() > 0
    assert sorted(p.name for p in art.iterdir() if p.name not in ("manifest.json", ".lock")) == [manifest.content]


def test_external_data_outside_is_refused(art, outside, tmp_path):
    """External data named by the graph itself: absolute, '..', a link out, /dev/zero, unlisted.
    The graph and manifest are made consistent (hashes recorded), as a crafted artifact would be."""
    import onnx

    from teacache_trt.integrity import record

    content = _content(art)
    graph = content / "head.onnx"
    model = onnx.load(str(graph))
    onnx.save(model, str(graph), save_as_external_data=True, all_tensors_to_one_file=True,
              location="head.onnx.data", size_threshold=1024)
    (content / "leak.data").symlink_to(outside.file)
    files = json.loads((art / "manifest.json").read_text())["files"]
    for location, message in [(str(outside.file), "points outside the artifact folder"),
                              ("../../outside/victim.txt", "points outside the artifact folder"),
                              ("/dev/zero", "points outside the artifact folder"),
                              ("leak.data", "outside .*a symlink leaving the folder"),
                              ("unlisted.data", "is not among the manifest's files")]:
        model = onnx.load(str(graph), load_external_data=False)
        for init in model.graph.initializer:
            for entry in init.external_data:
                if entry.key == "location":
                    entry.value = location
        onnx.save(model, str(graph))
        names = {"head.onnx": record(graph), "head.onnx.data": record(content / "head.onnx.data"),
                 location: {"size": 20, "sha256": "0" * 64}}
        if location == "unlisted.data":
            names.pop(location)
        edit_manifest(art, lambda d: d.update(files={**files, **names}))
        with pytest.raises(TeaCacheError, match=message):
            teacache_trt.load_transformer(art)
    assert outside.untouched()


def test_intact_external_data_loads_and_is_checked(art, outside):
    """The same layout with a proper external-data file: loads, and a changed .data fails."""
    import onnx

    from teacache_trt.integrity import record

    content = _content(art)
    graph = content / "head.onnx"
    onnx.save(onnx.load(str(graph)), str(graph), save_as_external_data=True, all_tensors_to_one_file=True,
              location="head.onnx.data", size_threshold=1024)
    edit_manifest(art, lambda d: d["files"].update({"head.onnx": record(graph),
                                                   "head.onnx.data": record(content / "head.onnx.data")}))
    teacache_trt.load_transformer(art)
    data = bytearray((content / "head.onnx.data").read_bytes())
    data[8] ^= 0xFF
    (content / "head.onnx.data").write_bytes(bytes(data))
    with pytest.raises(TeaCacheError, match=r"head.onnx.data .*does not match the manifest"):
        teacache_trt.load_transformer(art)


def test_timing_cache_is_contained(art, outside):
    """A GPU build reads and saves the folder's timing cache: a link out is neither read nor
    written through; the cache is replaced atomically by a regular file of the folder."""
    from teacache_trt.engines.build import _timing_cache

    link = art / "timing.tensorrt-rtx.cache"
    link.symlink_to(outside.file)
    with _timing_cache(art, "tensorrt-rtx", {"gpu": "any"}) as cache:
        assert cache.read_bytes() == b""  # not seeded from the file outside
        cache.write_bytes(b"measured tactics")
    assert not link.is_symlink() and link.read_bytes() == b"measured tactics"
    with _timing_cache(art, "tensorrt-rtx", {"gpu": "any"}) as cache:
        assert cache.read_bytes() == b"measured tactics"  # a regular file of the folder is used
    assert outside.untouched()
    assert not [n for n in os.listdir(art) if n.startswith(".timing")]


def test_export_over_a_format_1_artifact_removes_only_what_it_named(flux, tmp_path, outside, fast_export):
    """Format 1 kept its files at the top level: the first format-2 commit removes the ones its
    manifest named, never a name outside the folder, never the user's other files."""
    old = tmp_path / "old"
    old.mkdir()
    for g in ("embed", "blocks"):
        (old / f"{g}.onnx").write_bytes(flux.graph(g).read_bytes())
        (old / f"{g}.trtexec.sh").write_text("trtexec ...")
    (old / "blocks.tensorrt-rtx.0123.engine").write_bytes(b"engine")
    (old / "notes.txt").write_text("mine")
    graphs = {"embed": {"file": "embed.onnx"}, "blocks": {"file": "blocks.onnx"},
              "head": {"file": "../outside/victim.txt"}}
    (old / "manifest.json").write_text(json.dumps({
        "format_version": 1, "export_key": "k", "graphs": graphs,
        "engines": {"tensorrt-rtx": {"blocks": {"file": "blocks.tensorrt-rtx.0123.engine"},
                                     "head": {"file": str(outside.file)}}}}))
    with pytest.raises(TeaCacheError, match="format_version 1; this teacache-trt reads format_version 2.*--force"):
        Artifact.open(old)
    manifest = fast_export(old)  # an artifact of this project: no --force needed
    assert sorted(os.listdir(old)) == sorted([".lock", "manifest.json", "notes.txt", manifest.content])
    assert outside.untouched()
