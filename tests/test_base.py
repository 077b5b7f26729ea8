"""imgvec.base: name globs as Spark reads them, places that overlap, one-line text, and the settings objects."""

import argparse

import pytest

from imgvec.base import defaults
from imgvec.base.paths import fixed_prefix, overlaps
from imgvec.base.settings import FeatureSettings, RunOptions
from imgvec.base.storage import name_matches
from imgvec.base.text import LIMIT, one_line


@pytest.mark.parametrize("name,pattern,matches", [
    ("a.jpg", "*.jpg", True), ("a.JPG", "*.jpg", False), ("a.png", "*.{jpg,png}", True),
    ("a.gif", "*.{jpg,png}", False), ("photo1.jpg", "photo?.jpg", True), ("x.jpeg", "*.jp*g", True)])
def test_name_globs_as_spark_reads_them(name, pattern, matches):
    assert name_matches(name, pattern) is matches


def test_places_that_overlap(tmp_path):
    (tmp_path / "photos" / "2024").mkdir(parents=True)
    photos = str(tmp_path / "photos")
    assert overlaps(photos, photos) and overlaps(f"{photos}/vectors", photos) and overlaps(photos, f"{photos}/2024")
    assert overlaps(f"file://{photos}/out", photos) and overlaps(f"{photos}/out", f"{photos}/*/x?.jpg")
    assert not overlaps(str(tmp_path / "vectors"), photos) and not overlaps(f"{photos}-vectors", photos)
    assert overlaps("s3a://bucket/photos/", "s3://bucket/photos/out") and not overlaps("s3://a/x", "gs://a/x")
    assert fixed_prefix("photos/*/x?.jpg") == "photos" and fixed_prefix("*.jpg") == "."


def test_one_line_is_one_line_of_at_most_its_limit():
    error = OSError("connection reset\n  by peer\tafter   3 tries " + "x" * 500)
    assert one_line(error) == "connection reset by peer after 3 tries " + "x" * (LIMIT - 39)
    assert len(one_line(error)) == LIMIT and "\n" not in one_line(error) and one_line("a\nb", 2) == "a "


def test_the_settings_objects_hold_the_defaults_and_read_a_command_lines_arguments():
    d = defaults
    assert FeatureSettings() == FeatureSettings(d.MODEL, d.WEIGHTS, d.DEVICE, d.BATCH_SIZE, d.PRECISION, d.MAX_PIXELS,
                                                d.DRAFT, d.ENGINE)
    args = argparse.Namespace(**{**vars(FeatureSettings()), "model": "resnet18", "batch_size": 4, "inputs": ["x"]})
    assert FeatureSettings.of(args) == FeatureSettings(model="resnet18", batch_size=4)
    assert RunOptions().master == defaults.MASTER and RunOptions().conf == {} and not RunOptions().quiet
    assert RunOptions(conf={"a": "1"}, spark=object()) == RunOptions(conf={"a": "1"})  # a session is no setting



def _machine(root, meminfo_kb: int, cgroup: str, files: dict) -> str:
    """A folder laid out as /proc and /sys are: this process's cgroup lines and the cgroup files' contents."""
    (root / "proc" / "self").mkdir(parents=True)
    (root / "proc" / "meminfo").write_text(f"MemTotal: {2 * meminfo_kb} kB\nMemAvailable: {meminfo_kb} kB\n")
    (root / "proc" / "self" / "cgroup").write_text(cgroup)
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return str(root)


GB = 1 << 30


@pytest.mark.parametrize("cgroup, files, expected", [
    # v2, a 4 GB limit on a host with 64 GB free, 1 GB used: the container's 3 GB
    ("0::/kubepods/pod1/c1\n", {"sys/fs/cgroup/kubepods/pod1/c1/memory.max": f"{4 * GB}\n",
                                "sys/fs/cgroup/kubepods/pod1/c1/memory.current": f"{GB}\n"}, 3 * GB),
    # v2 inside the container: its own cgroup mounted as the root, the path's folders absent; a parent's limit counts
    ("0::/kubepods/pod1/c1\n", {"sys/fs/cgroup/memory.max": f"{2 * GB}\n", "sys/fs/cgroup/memory.current": "0\n"},
     2 * GB),
    ("0::/\n", {"sys/fs/cgroup/memory.max": "max\n", "sys/fs/cgroup/memory.current": f"{GB}\n"}, 64 * GB),
    # v1: a limit, and "no limit" written as a number near 2^63
    ("4:memory:/docker/abc\n0::/\n", {"sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes": f"{8 * GB}\n",
                                      "sys/fs/cgroup/memory/docker/abc/memory.usage_in_bytes": f"{2 * GB}\n"}, 6 * GB),
    ("4:memory:/\n", {"sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712\n"}, 64 * GB),
    # a limit larger than the host has free: the host's
    ("0::/\n", {"sys/fs/cgroup/memory.max": f"{512 * GB}\n", "sys/fs/cgroup/memory.current": "0\n"}, 64 * GB),
    ("", {}, 64 * GB),  # no cgroup at all
])
def test_the_memory_available_is_the_tighter_of_the_hosts_and_the_containers(tmp_path, cgroup, files, expected):
    from imgvec.base.memory import available_memory

    assert available_memory(_machine(tmp_path, 64 * GB // 1024, cgroup, files)) == expected


def test_the_memory_available_here_is_at_most_the_hosts():
    from imgvec.base.memory import _host_available, available_memory

    assert 0 < available_memory() <= _host_available("/")
