"""The CPU engine sizes its threads by the CPUs its container is given (the cgroup quota and the
affinity mask), not by the node's core count."""

import os
from pathlib import Path

import pytest
from genai_triton.cpus import available_cpus, cgroup_quota


def _v2(root: Path, text: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "cpu.max").write_text(text)
    return root


def _v1(root: Path, quota: str, period: str) -> Path:
    (root / "cpu").mkdir(parents=True)
    (root / "cpu" / "cpu.cfs_quota_us").write_text(quota)
    (root / "cpu" / "cpu.cfs_period_us").write_text(period)
    return root


def test_a_cgroup_v2_quota_is_read_in_cpus(tmp_path: Path) -> None:
    assert cgroup_quota(_v2(tmp_path / "a", "250000 100000\n")) == 2.5
    assert cgroup_quota(_v2(tmp_path / "b", "max 100000\n")) is None


def test_a_cgroup_v1_quota_is_read_in_cpus(tmp_path: Path) -> None:
    assert cgroup_quota(_v1(tmp_path / "a", "400000", "100000")) == 4.0
    assert cgroup_quota(_v1(tmp_path / "b", "-1", "100000")) is None


def test_no_cgroup_files_mean_no_quota(tmp_path: Path) -> None:
    assert cgroup_quota(tmp_path) is None


def test_the_quota_caps_the_affinity_rounded_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(32)))
    assert available_cpus(_v2(tmp_path / "a", "250000 100000")) == 3
    assert available_cpus(_v2(tmp_path / "b", "max 100000")) == 32
    assert available_cpus(_v2(tmp_path / "c", "10000 100000")) == 1  # never below one
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert available_cpus(_v2(tmp_path / "d", "800000 100000")) == 2  # the mask is smaller
