"""How much memory this process may still use: the tighter of the machine's and its container's (cgroup) limits.

A driver in a container (Kubernetes, most managed Spark) sees the host's /proc/meminfo: 256 GB free on the host
means nothing under a 4 GB limit, where the kernel kills the process that goes past it.
"""

from __future__ import annotations

import os

UNLIMITED = "max"  # cgroup v2's word for no limit; v1 writes a huge number instead


def available_memory(root: str = "/") -> int:
    """Bytes this process can still take without swapping or being killed: the host's MemAvailable (which counts the
    page cache it can drop), or the container's limit less what the container uses, whichever is smaller.
    `root`: where /proc and /sys are (tests give a folder of their own)."""
    host = _host_available(root)
    container = _container_available(root)
    return host if container is None else min(host, container)


def _host_available(root: str) -> int:
    try:
        with open(os.path.join(root, "proc/meminfo")) as meminfo:
            return next(int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError, IndexError):
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _container_available(root: str) -> int | None:
    """The limit of this process's cgroup less its usage (v2: memory.max, memory.current; v1: memory.limit_in_bytes,
    memory.usage_in_bytes), the tightest along its path up to the root; None without a limit."""
    found = []
    for folder, limit_name, usage_name in _cgroup_folders(root):
        limit = _number(os.path.join(folder, limit_name))
        if limit is None or limit >= 1 << 60:  # v1 says "no limit" as a number near 2^63
            continue
        usage = _number(os.path.join(folder, usage_name)) or 0
        found.append(max(0, limit - usage))
    return min(found) if found else None


def _cgroup_folders(root: str):
    """(folder, limit file, usage file) of this process's memory cgroup and its parents, v2 or v1."""
    try:
        with open(os.path.join(root, "proc/self/cgroup")) as f:
            lines = f.read().splitlines()
    except OSError:
        return
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2: one unified hierarchy
            mount, names = os.path.join(root, "sys/fs/cgroup"), ("memory.max", "memory.current")
        elif "memory" in controllers.split(","):
            mount, names = os.path.join(root, "sys/fs/cgroup/memory"), ("memory.limit_in_bytes",
                                                                        "memory.usage_in_bytes")
        else:
            continue
        parts = [p for p in path.split("/") if p]
        # inside a container the cgroup's own folder is usually mounted as the root: the path's folders may be absent
        for depth in range(len(parts), -1, -1):
            folder = os.path.join(mount, *parts[:depth])
            if os.path.isdir(folder):
                yield folder, *names


def _number(path: str) -> int | None:
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    if text == UNLIMITED:
        return None
    try:
        return int(text)
    except ValueError:
        return None
