"""A libp2p host that stops lets go of everything it listened with (py-libp2p 0.8.1 defect).

py-libp2p's swarm closes its TCP listener as its service stops, but inside the cancelled scope that stops it, so
the close ends at its first await: after ``async with host.run(...)`` the port still accepted connections, the
listener's serve tasks ran on as system tasks, and each start and stop of a host left one file descriptor open
(a daemon's tests and benchmarks start hundreds). ``running_host`` closes the listeners itself, shielded."""

import os

import pytest
import trio

from flair_node.core.identity import Identity
from flair_node.network.host import full_addrs, running_host

pytestmark = pytest.mark.integration

CYCLES = 5


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def listener_tasks() -> list[str]:
    """The tasks of py-libp2p's TCP listeners still running anywhere in this trio run (they are system tasks,
    children of the root task, not of any test's nursery)."""
    names: list[str] = []

    def walk(task: trio.lowlevel.Task) -> None:
        for nursery in task.child_nurseries:
            for child in nursery.child_tasks:
                if child.name.rsplit(".", 1)[-1] in {"serve_tcp", "_serve_one_listener", "_run_server"}:
                    names.append(child.name)
                walk(child)

    walk(trio.lowlevel.current_root_task())
    return names


async def accepts(port: int) -> bool:
    """Whether something on 127.0.0.1 accepts a TCP connection on ``port``."""
    try:
        with trio.fail_after(2):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
    except OSError:  # refused: nobody listens
        return False
    await stream.aclose()
    return True


async def start_and_stop() -> int:
    """Run a host, check that it accepts connections, stop it; its port."""
    async with running_host(Identity.generate()) as host:
        port = int(full_addrs(host)[0].split("/tcp/")[1].split("/")[0])
        assert await accepts(port)  # while it runs, it listens
        assert listener_tasks()
    return port


async def test_a_stopped_host_listens_no_more_and_leaves_no_descriptor_or_task_behind():
    await start_and_stop()  # the first host opens what this process keeps for good (trio's and libp2p's own)
    before = open_descriptors()

    for _ in range(CYCLES):
        port = await start_and_stop()
        assert not await accepts(port)
        assert listener_tasks() == []

    assert open_descriptors() == before  # py-libp2p alone leaves one more per cycle
