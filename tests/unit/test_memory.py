"""`memory`: what the machine has free, and the check's refusal when it is too little.

No TensorFlow: /proc and cgroup files are written under tmp_path. The refusal inside a
real export (nothing written, no check process left) is in
integration/test_memory_limits.py.
"""

import pytest

from export_archive import memory
from export_archive.errors import InputError

pytestmark = pytest.mark.unit

GIB = 1024 ** 3


def files(tmp_path, meminfo_kib=None, limit=None, usage=None):
    paths = {name: str(tmp_path / name) for name in ("meminfo", "max", "current")}
    if meminfo_kib is not None:
        (tmp_path / "meminfo").write_text(
            f"MemTotal:       24000000 kB\nMemFree:        1000 kB\n"
            f"MemAvailable:   {meminfo_kib} kB\nBuffers:        0 kB\n")
    if limit is not None:
        (tmp_path / "max").write_text(f"{limit}\n")
    if usage is not None:
        (tmp_path / "current").write_text(f"{usage}\n")
    return dict(meminfo=paths["meminfo"], cgroup_limit=paths["max"],
                cgroup_usage=paths["current"])


def test_mem_available_not_mem_free(tmp_path):
    # MemFree leaves out the page cache the kernel gives back: MemAvailable is the figure.
    assert memory.available_bytes(**files(tmp_path, meminfo_kib=8 * 1024 * 1024)) == 8 * GIB


def test_cgroup_headroom_when_smaller_than_the_host(tmp_path):
    paths = files(tmp_path, meminfo_kib=20 * 1024 * 1024, limit=4 * GIB, usage=GIB)
    assert memory.available_bytes(**paths) == 3 * GIB


def test_host_when_smaller_than_the_cgroup(tmp_path):
    paths = files(tmp_path, meminfo_kib=1024 * 1024, limit=16 * GIB, usage=GIB)
    assert memory.available_bytes(**paths) == GIB


def test_unlimited_cgroup_is_no_limit(tmp_path):
    paths = files(tmp_path, meminfo_kib=2 * 1024 * 1024, limit="max", usage=GIB)
    assert memory.available_bytes(**paths) == 2 * GIB


def test_cgroup_over_its_limit_has_nothing_free(tmp_path):
    paths = files(tmp_path, meminfo_kib=2 * 1024 * 1024, limit=GIB, usage=GIB + 5)
    assert memory.available_bytes(**paths) == 0


def test_machine_that_does_not_say(tmp_path):
    assert memory.available_bytes(**files(tmp_path)) is None


def test_this_machine_says():
    # The machines this project runs on are Linux: the figure must come back.
    free = memory.available_bytes()
    assert free is not None and free > 0


def test_check_that_fits_passes():
    memory.require_for_check(GIB, available=GIB)


def test_unknown_free_memory_does_not_refuse(monkeypatch):
    # A machine that does not say (not Linux) is not refused on a guess.
    monkeypatch.setattr(memory, "available_bytes", lambda: None)
    memory.require_for_check(1024 * GIB)


def test_check_that_does_not_fit_names_step_bytes_and_fixes():
    with pytest.raises(InputError) as info:
        memory.require_for_check(3 * GIB + 1, available=2 * GIB)
    error = info.value
    assert error.where == "check"
    text = str(error)
    assert str(3 * GIB + 1) in text and str(2 * GIB) in text
    assert "3.0 GiB" in text and "2.0 GiB" in text
    assert '"enabled": false' in error.fix and "--no-check" in error.fix
    assert "more memory" in error.fix


@pytest.mark.parametrize("n, shown", [(0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"),
                                      (5 * 1024 ** 2, "5.0 MiB"), (3 * GIB, "3.0 GiB"),
                                      (4096 * GIB, "4096.0 GiB")])
def test_format_bytes(n, shown):
    assert memory.format_bytes(n) == shown


def test_parity_workers_that_fit_pass():
    memory.require_for_parity(GIB, workers=2, available=4 * GIB)


def test_parity_workers_that_do_not_fit_suggest_how_many_do():
    with pytest.raises(InputError) as info:
        memory.require_for_parity(GIB, workers=4, available=5 * GIB)
    error = info.value
    assert error.where == "beam_pipeline_args"
    assert error.received == "--direct_num_workers=4"
    assert str(8 * GIB) in str(error) and str(5 * GIB) in str(error)
    # Each worker holds two copies (2 GiB): two of them fit in 5 GiB.
    assert "--direct_num_workers=2" in error.fix and "DataflowRunner" in error.fix


def test_parity_when_not_even_one_worker_fits_does_not_suggest_zero():
    with pytest.raises(InputError) as info:
        memory.require_for_parity(GIB, workers=1, available=GIB)
    assert "--direct_num_workers=" not in info.value.fix
    assert '"enabled": false' in info.value.fix
