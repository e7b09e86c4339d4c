"""Memory a step needs against memory the machine has: refuse before the work starts.

The serving check loads the written SavedModel again, in its own process (TF1 loader,
as TF Serving does), while the exporting process still holds the model. That second
process holds at least every weight once. On a machine (or container, or Vertex custom
job) without that much memory free, the kernel would kill the check half-way; instead
the export refuses up front, naming the step, the bytes needed and the bytes free.

Only the standard library, so its unit tests and callers import no TensorFlow.
"""

from __future__ import annotations

import os
import sys
from typing import Optional

from export_archive.errors import InputError

# TensorFlow's switch for oneDNN, read once when TensorFlow is imported.
ONEDNN_ENV = "TF_ENABLE_ONEDNN_OPTS"
MEMINFO = "/proc/meminfo"
# cgroup v2 (containers, Kubernetes pods, Vertex custom jobs): the limit and the usage.
CGROUP_LIMIT = "/sys/fs/cgroup/memory.max"
CGROUP_USAGE = "/sys/fs/cgroup/memory.current"


def available_bytes(meminfo: str = MEMINFO, cgroup_limit: str = CGROUP_LIMIT,
                    cgroup_usage: str = CGROUP_USAGE) -> Optional[int]:
    """Bytes a new allocation can take without swapping or an OOM kill, or None if
    this machine does not say (not Linux).

    The smaller of the kernel's `MemAvailable` and the cgroup's headroom (its
    `memory.max` less `memory.current`): inside a container the host's free memory
    is not ours to take.
    """
    candidates = []
    kib = _meminfo_field(meminfo, "MemAvailable")
    if kib is not None:
        candidates.append(kib * 1024)
    limit, usage = _read_int(cgroup_limit), _read_int(cgroup_usage)
    if limit is not None and usage is not None:
        candidates.append(max(limit - usage, 0))
    return min(candidates) if candidates else None


def require_for_check(weight_bytes: int, available: Optional[int] = None) -> None:
    """Raises `InputError` (field `check`) if the serving check's process cannot hold
    the model's `weight_bytes` in what is `available` (default: `available_bytes()`)."""
    if available is None:
        available = available_bytes()
    if available is None or weight_bytes <= available:
        return
    raise InputError(
        "check", "the serving check loads the export again in its own process, which "
        f"needs at least {format_bytes(weight_bytes)} ({weight_bytes} bytes: every weight "
        f"once) on top of this process's copy; this machine has "
        f"{format_bytes(available)} ({available} bytes) available. Nothing was written",
        allowed=f"a check needs free memory of at least the weights, {format_bytes(weight_bytes)}",
        fix='turn the check off ("check": {"enabled": false} in the config, or --no-check) and '
            "run `export-archive check` on the published export on a bigger machine; or run "
            "on a machine (or custom-job machine type) with more memory; or stop what else "
            "holds memory here")


def require_for_parity(weight_bytes: int, workers: int, available: Optional[int] = None) -> None:
    """Raises `InputError` (field `beam_pipeline_args`) if `workers` local Beam workers
    of split parity cannot each hold the model twice (each loads the in-memory model
    and the served SavedModel) in what is `available` (default: `available_bytes()`)."""
    if available is None:
        available = available_bytes()
    needed = 2 * weight_bytes * workers
    if available is None or needed <= available:
        return
    fitting = available // (2 * weight_bytes) if weight_bytes else workers
    fewer = (f"pass --direct_num_workers={fitting} (fits here); or "
             if 0 < fitting < workers else "")
    raise InputError(
        "beam_pipeline_args", f"split parity on the local Beam runner runs {workers} "
        "worker(s), and each loads the model twice (the in-memory model and the served "
        f"SavedModel): it needs at least {format_bytes(needed)} ({needed} bytes), this "
        f"machine has {format_bytes(available)} ({available} bytes) available. Nothing "
        "was written", received=f"--direct_num_workers={workers}",
        allowed=f"at most {max(fitting, 0)} worker(s) of {format_bytes(2 * weight_bytes)} each",
        fix=f"{fewer}run split parity on Dataflow (--runner=DataflowRunner in "
            "beam_pipeline_args), whose workers have their own memory; or use a machine "
            'with more memory; or turn the check off ("check": {"enabled": false}), which '
            "also skips split parity")


def format_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _meminfo_field(path: str, field: str) -> Optional[int]:
    try:
        with open(path) as f:
            for line in f:
                name, _, rest = line.partition(":")
                if name == field:
                    return int(rest.split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _read_int(path: str) -> Optional[int]:
    # memory.max is the word "max" when the cgroup has no limit: not a number, no limit.
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def give_freed_memory_back() -> bool:
    """Makes TensorFlow, imported after this, return the memory it frees to the system.
    True if it will; False if the user set TF_ENABLE_ONEDNN_OPTS or TensorFlow is loaded.

    With oneDNN on (TF's default on x86 CPUs), TF's CPU allocator is a pool (BFC) that
    keeps every buffer it frees for the life of the process: the load's temporaries and
    the weights the export frees before the serving check (writer._release_weights)
    would stay resident while the check's process loads the served copy, and a machine
    for the export would need both. An export does almost no arithmetic, so the
    processes that run one (the CLI, the KFP step) run TensorFlow without oneDNN unless
    the user chose otherwise.
    """
    if "tensorflow" in sys.modules or ONEDNN_ENV in os.environ:
        return False
    os.environ[ONEDNN_ENV] = "0"
    return True

