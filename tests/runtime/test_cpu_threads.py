"""The blocks graph's thread count on a CPU: one per physical core, set explicitly (unpinned)."""
from __future__ import annotations

import os

from teacache_trt.runtime.backends import physical_cores


def test_physical_cores_counts_the_cpus_this_process_may_use():
    n = physical_cores()
    assert 1 <= n <= len(os.sched_getaffinity(0))


def test_smt_siblings_count_once(monkeypatch, tmp_path):
    """Four logical CPUs on two cores (siblings 0,2 and 1,3) are two cores."""
    import builtins

    siblings = {0: "0,2", 1: "1,3", 2: "0,2", 3: "1,3"}
    real_open = builtins.open

    def fake_open(path, *args, **kwargs):
        path = str(path)
        if path.startswith("/sys/devices/system/cpu/cpu") and path.endswith("core_cpus_list"):
            cpu = int(path.split("/cpu/cpu")[1].split("/")[0])
            target = tmp_path / f"cpu{cpu}"
            target.write_text(siblings[cpu] + "\n")
            return real_open(target, *args, **kwargs)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(builtins, "open", fake_open)
    assert physical_cores() == 2
