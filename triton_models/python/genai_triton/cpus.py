"""How many CPUs this process may use: what a container is given, not the node's count.

`os.cpu_count()` is the node's: in a Kubernetes pod limited to 4 CPUs on a 32-core node, 32
torch threads would share 4 CPUs' worth of quota and be throttled in turns. The count here is
the CPU affinity mask, capped by the cgroup's CPU quota (cgroup v2 `cpu.max`, or v1
`cpu.cfs_quota_us` / `cpu.cfs_period_us`), rounded up.
"""

import math
import os
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")


def cgroup_quota(root: Path = CGROUP) -> float | None:
    """The CPU quota in CPUs (2.5 for `250000 100000`), or None when there is none."""
    try:
        fields = (root / "cpu.max").read_text().split()
    except OSError:
        fields = []
    if len(fields) == 2:
        return None if fields[0] == "max" else int(fields[0]) / int(fields[1])
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def available_cpus(root: Path = CGROUP) -> int:
    """CPUs to size thread pools by: the affinity mask capped by the cgroup quota, at least 1."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    quota = cgroup_quota(root)
    if quota is not None:
        count = min(count, math.ceil(quota))
    return max(1, count)
