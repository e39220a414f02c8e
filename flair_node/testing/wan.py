"""An emulated internet on one machine, built from Linux network namespaces: a public segment and sites behind NAT.

    with Testbed(sites_count=3, rate_mbit=20) as net:
        server = net.start(net.public, ["python", "-m", "http.server", "8000"])
        net.run(net.sites[0].host, ["curl", f"http://{net.public_address}:8000/"])

The layout, every name carrying this testbed's prefix (so that two testbeds, or a crashed one's leftovers, never
collide with each other or with anything else on the machine):

- **public** (``net.public``): the internet. It routes between the sites' routers and holds the public node's
  address (``public_address``, 100.64.0.1): a bootstrap or relay node runs there.
- **site i** (``net.sites[i]``): a **router** namespace whose ``wan`` side (100.64.i.2) faces the public segment and
  whose ``lan`` side (10.0.i.1) faces the site's **host** namespace (10.0.i.2), where the site's nodes run. The
  router masquerades what leaves through ``wan`` (nftables) and forwards inward only what answers a connection made
  from inside, so a site's nodes can dial out and cannot be dialled from outside, as behind a home or corporate NAT.
  A connection attempt addressed to the router itself is dropped, as most home NATs do (``unsolicited="drop"``),
  or answered with a reset (``"reject"``, as some firewalls do): hole punching works through the first only.
- **links**: each site's link is shaped with ``tc tbf`` to ``rate_mbit`` in each direction (its router's ``wan``
  egress, and the public side's egress towards it); ``cut`` and ``restore`` take a site's link down and up.

Addresses are from 100.64.0.0/10 (shared address space) and 10.0.0.0/8, inside the namespaces only: nothing on
the machine's own network is reachable from them or addressed by them. Building one needs root and the ``ip``,
``tc`` and ``nft`` commands (``./scripts/bootstrap`` installs nftables); ``unavailable`` says why not. Everything
the testbed made is removed when the block ends, on failure too: the processes it started (by their PIDs, killed
with their process groups) and then its namespaces, which takes their interfaces, routes and rules with them.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import shutil
import signal
import subprocess
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

PUBLIC_ADDRESS = "100.64.0.1"
MAX_SITES = 200
COMMAND_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
_CLONE_NEWNET = 0x40000000  # setns(2): the namespace is a network namespace

_NAT_RULES = """\
table ip nat {
  chain outward {
    type nat hook postrouting priority srcnat; policy accept;
    oifname "wan" masquerade
  }
}
table ip filter {
  chain guard {
    type filter hook forward priority filter; policy drop;
    ct state established,related accept
    iifname "lan" oifname "wan" accept
  }
}
"""
#: What a router does with a connection attempt from outside addressed to itself (not forwarded, so not in
#: ``guard``): "drop" ignores it, as most home NATs do, so that two sites' simultaneous SYNs can cross (hole
#: punching); "reject" answers it with a reset, as some corporate firewalls do, so hole punching fails.
_UNSOLICITED = {"drop": """\
table ip inbound {
  chain unsolicited {
    type filter hook input priority filter; policy accept;
    iifname "wan" ct state new meta l4proto tcp drop
  }
}
""", "reject": ""}


class TestbedError(RuntimeError):
    """Building or driving the testbed failed: the message names the command and what it printed."""

    __test__ = False  # not a test class, whatever pytest guesses from its name


@dataclass(frozen=True)
class Site:
    """One site behind NAT: its router's and host's namespaces and addresses."""

    index: int
    router: str
    host: str
    address: str  # the host's, inside the site
    router_wan: str  # what the public segment sees a site's connections come from
    public_side: str  # the public namespace's interface towards this site


@dataclass
class Testbed:
    """An emulated internet (see the module docstring); a context manager."""

    sites_count: int = 3
    rate_mbit: float = 20.0
    unsolicited: str = "drop"  # what routers do with connection attempts from outside (``_UNSOLICITED``)
    prefix: str = field(default_factory=lambda: f"fl{os.getpid() % 100_000}")
    public: str = ""
    sites: list[Site] = field(default_factory=list)
    _namespaces: list[str] = field(default_factory=list)
    _processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    public_address = PUBLIC_ADDRESS
    __test__ = False  # not a test class, whatever pytest guesses from its name

    def __enter__(self) -> Testbed:
        why = unavailable()
        if why:
            raise TestbedError(f"cannot build a testbed here: {why}")
        if not 1 <= self.sites_count <= MAX_SITES or not self.rate_mbit > 0:
            raise TestbedError(f"a testbed has 1 to {MAX_SITES} sites and links faster than 0 Mbit/s")
        if self.unsolicited not in _UNSOLICITED:
            raise TestbedError(f"routers drop or reject unsolicited connections, not {self.unsolicited!r}")
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    # -- driving it -----------------------------------------------------------------------------------------

    def start(self, namespace: str, argv: Sequence[str], **popen: Any) -> subprocess.Popen[bytes]:
        """``argv`` started inside ``namespace``, in a process group of its own, stopped when the testbed closes."""
        process = subprocess.Popen(["ip", "netns", "exec", namespace, *argv], start_new_session=True, **popen)
        self._processes.append(process)
        return process

    def run(self, namespace: str, argv: Sequence[str], *, timeout: float = COMMAND_TIMEOUT_S,
            check: bool = True, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        """``argv`` run to its end inside ``namespace`` (at most ``timeout`` seconds)."""
        return _command(["ip", "netns", "exec", namespace, *argv], timeout=timeout, check=check, input=input)

    def cut(self, site: Site) -> None:
        """Take ``site``'s link to the public segment down: nothing crosses it until ``restore``."""
        _command(["ip", "-n", self.public, "link", "set", site.public_side, "down"])

    def restore(self, site: Site) -> None:
        _command(["ip", "-n", self.public, "link", "set", site.public_side, "up"])

    def close(self) -> None:
        """Stop every process this testbed started (by PID, with its group), then delete its namespaces."""
        for process in self._processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        for process in self._processes:
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            for stream in (process.stdin, process.stdout, process.stderr):
                if stream is not None:
                    stream.close()
        self._processes.clear()
        for namespace in reversed(self._namespaces):
            _command(["ip", "netns", "delete", namespace], check=False)
        self._namespaces.clear()

    # -- building it ----------------------------------------------------------------------------------------

    def _build(self) -> None:
        self.public = self._namespace("pub")
        _command(["ip", "-n", self.public, "addr", "add", f"{PUBLIC_ADDRESS}/32", "dev", "lo"])
        self._forwarding(self.public)
        for i in range(1, self.sites_count + 1):
            self.sites.append(self._site(i))

    def _site(self, i: int) -> Site:
        router, host = self._namespace(f"r{i}"), self._namespace(f"s{i}")
        public_side = f"site{i}"
        wan, gateway = f"100.64.{i}.2", f"100.64.{i}.1"
        lan, address = f"10.0.{i}.1", f"10.0.{i}.2"
        _command(["ip", "link", "add", public_side, "netns", self.public, "type", "veth", "peer", "name", "wan",
                  "netns", router])
        _command(["ip", "link", "add", "lan", "netns", router, "type", "veth", "peer", "name", "eth0", "netns", host])
        for namespace, device, cidr in ((self.public, public_side, f"{gateway}/24"), (router, "wan", f"{wan}/24"),
                                        (router, "lan", f"{lan}/24"), (host, "eth0", f"{address}/24")):
            _command(["ip", "-n", namespace, "addr", "add", cidr, "dev", device])
            _command(["ip", "-n", namespace, "link", "set", device, "up"])
        _command(["ip", "-n", router, "route", "add", "default", "via", gateway])
        _command(["ip", "-n", host, "route", "add", "default", "via", lan])
        self._forwarding(router)
        _command(["ip", "netns", "exec", router, "nft", "-f", "-"],
                 input=(_NAT_RULES + _UNSOLICITED[self.unsolicited]).encode())
        for namespace, device in ((router, "wan"), (self.public, public_side)):
            _command(["tc", "-n", namespace, "qdisc", "add", "dev", device, "root", "tbf", "rate",
                      f"{self.rate_mbit}mbit", "burst", "64kb", "latency", "100ms"])
        return Site(i, router, host, address, wan, public_side)

    def _namespace(self, tag: str) -> str:
        name = f"{self.prefix}-{tag}"
        _command(["ip", "netns", "add", name])
        self._namespaces.append(name)
        _command(["ip", "-n", name, "link", "set", "lo", "up"])
        return name

    @staticmethod
    def _forwarding(namespace: str) -> None:
        _command(["ip", "netns", "exec", namespace, "sysctl", "-qw", "net.ipv4.ip_forward=1"])


def in_namespace(namespace: str, threads: int = 8) -> ThreadPoolExecutor:
    """An executor whose threads live in ``namespace``'s network: a network namespace is a property of each Linux
    thread, so the sockets they open are the namespace's (a daemon there serves its API on the namespace's own
    127.0.0.1). ``threads`` calls run at once, as from as many clients. Shut it down when done."""

    def enter() -> None:
        fd = os.open(f"/run/netns/{namespace}", os.O_RDONLY)
        try:
            if _libc().setns(fd, _CLONE_NEWNET) != 0:
                raise TestbedError(f"cannot enter namespace {namespace}: {os.strerror(ctypes.get_errno())}")
        finally:
            os.close(fd)

    return ThreadPoolExecutor(max_workers=threads, initializer=enter, thread_name_prefix=f"netns-{namespace}")


def _libc() -> Any:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def unavailable() -> str | None:
    """Why no testbed can be built here (not root, a command missing), or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    missing = [c for c in ("ip", "tc", "nft") if shutil.which(c) is None]
    if missing:
        return f"{', '.join(missing)} not on PATH (./scripts/bootstrap installs nftables)"
    return None


def _command(argv: Sequence[str], *, timeout: float = COMMAND_TIMEOUT_S, check: bool = True,
             input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    try:
        done = subprocess.run(list(argv), input=input, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise TestbedError(f"{' '.join(argv)} took more than {timeout} s") from None
    if check and done.returncode != 0:
        raise TestbedError(f"{' '.join(argv)} failed ({done.returncode}): "
                           f"{done.stderr.decode(errors='replace').strip()[-400:]}")
    return done
