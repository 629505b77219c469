"""The facts about the machine a figure was measured on, as docs/benchmarks.md lists them."""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from pathlib import Path


def cpu_model() -> str:
    """The first "model name" of /proc/cpuinfo (what the kernel says the CPU is)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    found = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return found.group(1).strip() if found else "unknown"


def usable_cpus() -> int:
    """CPUs this process may run on (what `nproc` prints)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _first_line(argv: list[str]) -> str:
    if shutil.which(argv[0]) is None:
        return "not installed"
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    lines = [line.strip() for line in (done.stdout or done.stderr).splitlines() if line.strip()]
    return lines[0] if lines else "unknown"


def memory_total() -> str:
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        return "unknown"
    found = re.search(r"^MemTotal:\s*(\d+) kB", text, re.MULTILINE)
    return f"{int(found.group(1)) // 1024} MiB" if found else "unknown"


def group_pids(pgid: int) -> list[int]:
    """Pids of the live processes in process group `pgid` (a benchmark's subject started in
    a session of its own, its workers included)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            rest = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(rest[2]) == pgid:  # field 5, pgrp (proc(5))
            pids.append(int(entry.name))
    return pids


def machine_facts() -> dict[str, str]:
    """Name -> value, in the order docs/benchmarks.md shows them."""
    return {
        "CPUs (nproc)": str(usable_cpus()),
        "CPU model": cpu_model(),
        "memory": memory_total(),
        "kernel": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "sipp": _first_line(["sipp", "-v"]).rstrip("."),
        "kamailio": _first_line(["kamailio", "-v"]).removeprefix("version: "),
    }
