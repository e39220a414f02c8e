from pathlib import Path

import pytest

from flair_node.core.errors import InvalidInput
from flair_node.daemon.config import NodeConfig

ROOT = Path(__file__).resolve().parents[2]


def test_documented_config_is_the_default():
    assert NodeConfig.load(ROOT / "configs" / "node.toml") == NodeConfig()


@pytest.mark.parametrize("text, message", [
    ('[api]\nhost = "0.0.0.0"', "loopback"),
    ("[api]\nport = 70000", "port"),
    ("[api]\nprot = 1", "unknown key api.prot"),
    ("[gossip]\nx = 1", "unknown section"),
    ("[p2p]\nlisten = 4001", "p2p.listen"),
    ('[log]\nlevel = "loud"', "log.level"),
    ("[rounds]\naggregate = 1", "rounds.aggregate"),
    ('[proofs]\nsrs = "kzg12.srs"', "absolute path"),
    ("[proofs]\nmemory_mb = 10", "proofs.memory_mb"),
    ("[proofs]\nprove = 0", "proofs.prove"),
    ("[api\n", "not valid TOML"),
])
def test_bad_config_is_refused_with_a_reason(text, message):
    with pytest.raises(InvalidInput, match=message):
        NodeConfig.from_toml(text)


def test_sdk_exports():
    import flair_node.sdk

    assert flair_node.sdk.__all__ == ["ErrorFeedback", "Repo"]
    assert flair_node.sdk.Repo.__module__ == "flair_node.sdk._repo"
