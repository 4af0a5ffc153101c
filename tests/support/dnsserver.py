"""A real DNS server for tests: Debian's ``dnsmasq`` on 127.0.0.1 and a free high port.

The zone it serves (everything under ``test.`` is local: unknown names are NXDOMAIN):

==========================  ======  ================================================
name                        type    data
==========================  ======  ================================================
ok.test                     A       192.0.2.10
ok.test                     AAAA    2001:db8::10
ok.test                     MX      10 mail.ok.test
v4only.test                 A       192.0.2.20 (and no AAAA: a NOERROR, empty answer)
multi.test                  A       192.0.2.30 and 192.0.2.31
txt.test                    TXT     "v=spf1 -all" and "hello world"
www.test                    CNAME   ok.test
_http._tcp.ok.test          SRV     0 5 80 ok.test
10.2.0.192.in-addr.arpa     PTR     ok.test
==========================  ======  ================================================

Names outside ``test.`` are REFUSED (the server has no upstream).
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import pytest

ZONE_FLAGS = (
    "--local=/test/",
    "--host-record=ok.test,192.0.2.10,2001:db8::10",
    "--host-record=v4only.test,192.0.2.20",
    "--address=/multi.test/192.0.2.30",
    "--address=/multi.test/192.0.2.31",
    "--txt-record=txt.test,v=spf1 -all",
    "--txt-record=txt.test,hello world",
    "--mx-host=ok.test,mail.ok.test,10",
    "--cname=www.test,ok.test",
    "--srv-host=_http._tcp.ok.test,ok.test,80,0,5",
)
"""The records of the zone described in the module docstring."""


@dataclass(frozen=True)
class DnsServer:
    """A running dnsmasq: where to send queries."""

    host: str
    port: int

    @property
    def address(self) -> str:
        """``host:port``, as ``DnsProbeSpec.server`` takes it."""
        return f"{self.host}:{self.port}"


def dnsmasq_binary() -> str:
    """The dnsmasq executable, or a skip saying how to get it."""
    found = shutil.which("dnsmasq") or next(
        (str(p) for p in (Path("/usr/sbin/dnsmasq"), Path("/sbin/dnsmasq")) if p.exists()), None
    )
    if found is None:
        pytest.skip("dnsmasq not installed: run `make test` as root to install it from Debian's packages")
    return found


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 right now."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = int(udp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no port free for both UDP and TCP on 127.0.0.1")


@contextlib.contextmanager
def running_dnsmasq(log_file: Path) -> Iterator[DnsServer]:
    """Start dnsmasq serving the test zone; stop it on exit. Its log goes to ``log_file``."""
    binary = dnsmasq_binary()
    for _ in range(3):  # another process may take the port between choosing and binding it
        port = free_port()
        command = [
            binary,
            "--keep-in-foreground",
            "--log-facility=-",
            f"--port={port}",
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            "--no-resolv",
            "--no-hosts",
            "--conf-file=/dev/null",
            "--pid-file=",
            *ZONE_FLAGS,
        ]
        with log_file.open("ab") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            if _wait_ready(process, port):
                yield DnsServer("127.0.0.1", port)
                return
        finally:
            _stop(process)
    raise RuntimeError(f"dnsmasq did not start; its log:\n{log_file.read_text(errors='replace')}")


def _wait_ready(process: subprocess.Popen[bytes], port: int, *, within: float = 10.0) -> bool:
    """True once dnsmasq answers a query; False if it exited (e.g. the port was taken)."""
    deadline = time.monotonic() + within
    query = dns.message.make_query("ok.test", "A")
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        with contextlib.suppress(OSError, dns.exception.Timeout):
            dns.query.udp(query, "127.0.0.1", port=port, timeout=0.2)
            return True
    raise RuntimeError(f"dnsmasq on port {port} did not answer within {within:g}s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass(frozen=True)
class SilentUdp:
    """A bound UDP port that never answers: queries to it time out."""

    host: str
    port: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@contextlib.contextmanager
def silent_udp_port() -> Iterator[SilentUdp]:
    """A UDP socket on 127.0.0.1 that receives and never replies, closed on exit."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield SilentUdp("127.0.0.1", int(sock.getsockname()[1]))
