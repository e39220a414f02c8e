"""A discovery pass publishes and looks up several locators at a time, each isolated from the others' failures
(the DHT's own behaviour is tested on real hosts in ``tests/integration/test_discovery_daemons.py``)."""

import trio

from flair_node.core.identity import Identity
from flair_node.daemon import discovery_service
from flair_node.daemon.discovery_service import AT_ONCE, DiscoveryService
from flair_node.network.discovery import Kademlia
from flair_node.network.host import running_host
from flair_node.storage.repos import RepoSet
from flair_node.testing.commit_graph import tiny_state


class SlowDHT(Kademlia):
    """Publications and lookups that take a while (the first of each fails); records how many run at once."""

    def __init__(self, host):
        super().__init__(host, server=False)
        self.running = self.most = 0
        self.calls = {"provide": 0, "find": 0}

    async def _slowly(self, what):
        self.calls[what] += 1
        first = self.calls[what] == 1
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            await trio.sleep(0.3)
            if first:
                raise RuntimeError(f"the first {what} breaks")
        finally:
            self.running -= 1

    async def provide(self, locator):
        await self._slowly("provide")
        return True

    async def find(self, locator, *, count=20):
        await self._slowly("find")
        return []


async def test_a_pass_works_on_several_locators_at_once_and_one_failing_stops_none(caplog):
    repositories = 2 * AT_ONCE
    repos = RepoSet.in_memory(Identity.generate())
    for i in range(repositories):
        repos.create(f"r{i}", tiny_state(i))
    async with running_host(Identity.generate()) as host:
        dht = SlowDHT(host)
        service = DiscoveryService(host, dht, repos, member_peers=lambda repo: 0)
        with trio.fail_after(30):
            await service.step()
        assert dht.calls == {"provide": repositories, "find": repositories}  # every one, the failed ones too
        assert dht.most == AT_ONCE
        assert service.status()["published"] == repositories - 1  # the one that failed is tried again soon
        assert service._due and min(service._due.values()) - trio.current_time() <= discovery_service.RETRY_PROVIDE
        assert "publishing a locator" in caplog.text and "looking up peers" in caplog.text
