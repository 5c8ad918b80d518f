"""Shared by the benchmark scripts (standard library only: it also runs under other interpreters)."""

from __future__ import annotations


def memory_mib(field: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process, in MiB.

    Not `ru_maxrss`: Linux carries that across exec, so a child started by a parent that once
    used more memory would report the parent's peak. VmHWM starts afresh with each program.
    """
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")
