"""Knot DNS (Debian `knot`) serving a zone directory on a loopback port, for the tests that
compare our locator's answers and the benchmark that sets our server beside it.

knotd runs in a temporary directory with a generated knot.conf, one worker per kind, the
zones loaded whole with semantic checks on; it is stopped (SIGTERM, then SIGKILL) on exit.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from types import TracebackType

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode

from bench import BenchError, ToolMissing
from bench.sipp import free_udp_tcp_port

KNOT_HINT = "install the Debian package knot (apt-get install knot)"


def find_knotd() -> str:
    path = shutil.which("knotd") or (
        "/usr/sbin/knotd" if Path("/usr/sbin/knotd").exists() else None
    )
    if path is None:
        raise ToolMissing("knotd", KNOT_HINT)
    return path


def wait_authoritative(
    process: subprocess.Popen[bytes], port: int, zones: Path, within: float, what: str
) -> None:
    """Until the server on 127.0.0.1:port answers the SOA of the first zone of `zones`
    authoritatively; BenchError when `process` exits first or `within` seconds pass."""
    deadline = time.monotonic() + within
    first_zone = next(iter(sorted(zones.glob("*.zone"))), None)
    name = first_zone.name.removesuffix(".zone") + "." if first_zone else "."
    query = dns.message.make_query(name, "SOA")
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchError(f"{what} exited at start (status {process.returncode})")
        try:
            response = dns.query.udp(query, "127.0.0.1", port=port, timeout=0.3)
            if response.rcode() == dns.rcode.NOERROR and response.flags & dns.flags.AA:
                return
        except (TimeoutError, OSError, dns.exception.DNSException):
            pass
        time.sleep(0.1)
    raise BenchError(f"{what} did not answer within {within} s")


class KnotServer:
    """`with KnotServer(zones, workdir) as knot:` knotd answers on 127.0.0.1:knot.port."""

    def __init__(self, zones: Path, workdir: Path, *, ready_within: float = 10.0) -> None:
        self.zones = zones
        self.workdir = workdir
        self.ready_within = ready_within
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> str:
        path = self.workdir / "knotd.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def __enter__(self) -> KnotServer:
        knotd = find_knotd()
        self.port = free_udp_tcp_port()
        (self.workdir / "db").mkdir(parents=True, exist_ok=True)
        zone_lines = "\n".join(
            f"  - domain: {p.name.removesuffix('.zone')}\n    file: {p.name}"
            for p in sorted(self.zones.glob("*.zone"))
        )
        conf = self.workdir / "knot.conf"
        conf.write_text(
            "server:\n"
            f'    rundir: "{self.workdir}"\n'
            f"    listen: 127.0.0.1@{self.port}\n"
            "    udp-workers: 1\n    tcp-workers: 1\n    background-workers: 1\n"
            f'database:\n    storage: "{self.workdir / "db"}"\n'
            "log:\n  - target: stderr\n    any: warning\n"
            "template:\n  - id: default\n"
            f'    storage: "{self.zones}"\n'
            "    semantic-checks: on\n    zonefile-sync: -1\n    zonefile-load: whole\n"
            "    journal-content: none\n"
            f"zone:\n{zone_lines}\n"
        )
        with (self.workdir / "knotd.log").open("wb") as log:
            self._process = subprocess.Popen(
                [knotd, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _wait_ready(self) -> None:
        assert self._process is not None
        wait_authoritative(self._process, self.port, self.zones, self.ready_within, "knotd")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
