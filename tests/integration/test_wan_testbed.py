"""The emulated internet (``flair_node.testing.wan``) is what it claims to be: a site's nodes dial out through
their router's NAT and cannot be dialled from outside, its link is shaped to its rate, a cut link passes nothing
until it is restored, and nothing of the testbed is left on the machine afterwards."""

from __future__ import annotations

import subprocess
import time

import pytest

from flair_node.testing.wan import Testbed, TestbedError, unavailable

pytestmark = pytest.mark.skipif(unavailable() is not None, reason=f"no testbed here: {unavailable()}")

#: A TCP server that accepts one connection, reads it to its end and prints the peer's address and the bytes.
SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(); print("listening", flush=True)
c, peer = s.accept(); total = 0
while chunk := c.recv(1 << 16):
    total += len(chunk)
print(peer[0], total, flush=True)
"""
#: A client that connects (3 s at most) and sends argv[3] bytes; exit 0 once all are sent, 1 if it cannot connect.
CLIENT = """
import socket, sys
try:
    c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
except OSError as exc:
    print(exc); sys.exit(1)
c.settimeout(60); c.sendall(b"x" * int(sys.argv[3])); c.close()
"""


def serve(net: Testbed, namespace: str, port: int) -> subprocess.Popen[bytes]:
    server = net.start(namespace, ["python3", "-c", SERVER, str(port)], stdout=subprocess.PIPE)
    assert server.stdout is not None and server.stdout.readline() == b"listening\n"
    return server


def send(net: Testbed, namespace: str, address: str, port: int, size: int = 1) -> subprocess.CompletedProcess[bytes]:
    return net.run(namespace, ["python3", "-c", CLIENT, address, str(port), str(size)], check=False, timeout=90)


def test_sites_dial_out_through_their_nat_and_cannot_be_dialled_in():
    with Testbed(sites_count=3) as net:
        server = serve(net, net.public, 7000)
        assert send(net, net.sites[0].host, net.public_address, 7000).returncode == 0
        seen = server.communicate(timeout=10)[0].split()
        assert seen == [net.sites[0].router_wan.encode(), b"1"]  # masqueraded: the router's address, not 10.0.1.2
        for site in net.sites:  # every site reaches the public node
            server = serve(net, net.public, 7001 + site.index)
            assert send(net, site.host, net.public_address, 7001 + site.index).returncode == 0
            server.communicate(timeout=10)
        inside = serve(net, net.sites[0].host, 7100)
        assert send(net, net.public, net.sites[0].address, 7100).returncode == 1  # no route in from outside
        for other in net.sites[1:]:  # nor from another site, at the address or at its router's
            assert send(net, other.host, net.sites[0].address, 7100).returncode == 1
            assert send(net, other.host, net.sites[0].router_wan, 7100).returncode == 1
        assert inside.poll() is None  # nothing ever reached it


def test_a_site_s_link_is_shaped_to_its_rate_and_a_cut_passes_nothing_until_restored():
    with Testbed(sites_count=1, rate_mbit=20) as net:
        site = net.sites[0]
        server = serve(net, net.public, 7000)
        size = 5_000_000
        started = time.monotonic()
        assert send(net, site.host, net.public_address, 7000, size).returncode == 0
        assert server.communicate(timeout=60)[0].split()[1] == str(size).encode()
        rate_mbit = size * 8 / (time.monotonic() - started) / 1e6
        assert rate_mbit < 20 * 1.15  # the shaper holds the link to its rate (the machine can only be slower)
        net.cut(site)
        server = serve(net, net.public, 7001)
        assert send(net, site.host, net.public_address, 7001).returncode == 1
        net.restore(site)
        assert send(net, site.host, net.public_address, 7001).returncode == 0
        server.communicate(timeout=10)


def test_nothing_is_left_behind_on_failure_too():
    net = Testbed(sites_count=2)
    with pytest.raises(RuntimeError, match="a test failing"), net:
        sleeper = net.start(net.sites[1].host, ["sleep", "600"])
        made = list(net._namespaces)
        raise RuntimeError("a test failing inside the block")
    assert sleeper.poll() is not None  # stopped, by its PID
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert made and not any(name in listed for name in made)
    with pytest.raises(TestbedError, match="1 to 200 sites"):
        Testbed(sites_count=0).__enter__()
