from dataclasses import fields, replace
from pathlib import Path

import pytest

from flair_node.core.errors import InvalidInput
from flair_node.daemon.config import NodeConfig, default_toml, reference_markdown

ROOT = Path(__file__).resolve().parents[2]


def test_documented_config_is_the_default():
    assert NodeConfig.load(ROOT / "configs" / "node.toml") == NodeConfig()


def test_documented_config_is_generated_from_the_dataclasses():
    assert (ROOT / "configs" / "node.toml").read_text() == default_toml(), \
        "configs/node.toml is generated: run `python -m flair_node.daemon.config > configs/node.toml`"


def test_reference_names_every_key():
    reference = reference_markdown()
    for section in fields(NodeConfig):
        assert f"## [{section.name}]" in reference
        for key in fields(getattr(NodeConfig(), section.name)):
            assert f"| `{section.name}.{key.name}` |" in reference


def test_values_take_the_field_types():
    config = NodeConfig.from_toml('[p2p]\nbootstrap = ["/ip4/127.0.0.1/tcp/4001/p2p/Qm"]\nsync_interval = 5\n'
                                  '[api]\nport = 8080\n[chain]\ncluster = "devnet"')
    assert config.p2p.bootstrap == ("/ip4/127.0.0.1/tcp/4001/p2p/Qm",)
    assert config.p2p.sync_interval == 5.0 and isinstance(config.p2p.sync_interval, float)
    assert config.api.port == 8080 and config.chain.cluster == "devnet"
    assert config.rounds == NodeConfig().rounds


def test_overridden_value_is_checked():
    config = NodeConfig()
    with pytest.raises(InvalidInput, match="--port: api.port must be an integer from 0 to 65535"):
        replace(config, api=replace(config.api, port=-1)).check("--port")


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
    ("[api]\nport = true", "config: api.port must be an integer from 0 to 65535"),
    ("[api]\nmax_request_bytes = 512", "api.max_request_bytes"),
    ("api = 1", r"unknown section \[api\] \(known: api, log, p2p, rounds, tensors, ipfs, proofs, chain\)"),
    ('[p2p]\nbootstrap = "/ip4/1.2.3.4/tcp/1/p2p/Qm"', "p2p.bootstrap"),
    ('[p2p]\nbootstrap = ["/ip4/1.2.3.4/tcp/1"]', "p2p.bootstrap"),
    ("[p2p]\nsync_interval = 0.01", "p2p.sync_interval"),
    ("[p2p]\nmdns = 1", "p2p.mdns"),
    ('[ipfs]\nkubo_api = "localhost:5001"', "ipfs.kubo_api"),
    ('[chain]\ncluster = "ftp://x"', "config: chain.cluster"),
    ('[chain]\ncommitment = "processed"', "chain.commitment"),
    ('[chain]\ncluster = "devnet"\nregistry = "not-base58!"', "chain.registry"),
    ('[chain]\nregistry = "11111111111111111111111111111111"', "chain.registry needs chain.cluster"),
])
def test_bad_config_is_refused_with_a_reason(text, message):
    with pytest.raises(InvalidInput, match=message):
        NodeConfig.from_toml(text)


def test_sdk_exports():
    import flair_node.sdk

    assert flair_node.sdk.__all__ == ["ErrorFeedback", "Repo"]
    assert flair_node.sdk.Repo.__module__ == "flair_node.sdk._repo"
