"""Peak resident memory per process (``bench/common.py``), what the weight-sync benchmarks
report for the learner rank, each engine and the driver: read from /proc against a child
process that touches a known number of bytes, and the copy baseline of ``bench/lora_sync.py``
on arrays of known size."""

import subprocess
import sys

import numpy as np
import pytest

from bench.common import peak_mib, peak_rss
from bench.lora_sync import copy_baseline

MIB = 2**20


def test_a_child_that_touched_256_mib_peaks_above_it_and_is_found_under_its_parent():
    # 256 MiB written (every page touched), freed, then the child waits on its stdin
    code = "b = bytearray(256 * 2**20); b[::4096] = b'x' * (256 * 256); del b; input()"
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE)
    try:
        for _ in range(200):  # until the allocation has come and gone (VmHWM keeps it)
            me = peak_rss()
            (kid,) = [c for c in me["children"] if c["pid"] == child.pid]
            if kid["peak_rss_mib"] >= 256 and kid["rss_mib"] < 200:
                break
            subprocess.run(["sleep", "0.05"])
        assert 256 <= kid["peak_rss_mib"] < 256 + 100  # the interpreter itself: tens of MiB
        assert kid["rss_mib"] < kid["peak_rss_mib"]  # freed: the peak stays
        assert kid["name"].startswith("python")
        alone = peak_rss(children=False)
        assert "children" not in alone and alone["pid"] == me["pid"]
        assert peak_mib(me) == pytest.approx(
            me["peak_rss_mib"] + sum(c["peak_rss_mib"] for c in me["children"])
        )
    finally:
        child.communicate(b"\n", timeout=30)


def test_peak_mib_adds_the_childrens_peaks():
    p = {"peak_rss_mib": 100.0, "children": [{"peak_rss_mib": 20.5}, {"peak_rss_mib": 3.0}]}
    assert peak_mib(p) == 123.5
    assert peak_mib({"peak_rss_mib": 7.0}) == 7.0


def test_the_copy_baseline_copies_the_bytes_it_was_given():
    arrays = [np.ones((4, 8), np.float32), np.ones(10, np.int16)]  # 128 + 20 bytes
    out = copy_baseline(arrays, threads=1, repeats=3)
    assert out["bytes"] == 148 and out["tensors"] == 2
    assert len(out["seconds"]) == 3 and out["median_s"] > 0
