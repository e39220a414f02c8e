"""The generated API reference lists every method with its params, and the method tables keep their promises:
every method declared once, built without a node, the repository param defined once."""

import pytest

from flair_node.api import reference_markdown
from flair_node.api.dispatch import openrpc_document
from flair_node.api.methods import TABLES, build_registry
from flair_node.api.params import REPO
from flair_node.core.errors import FlairError


def _document():
    return openrpc_document(build_registry(None), "flair-node", "0")


def test_reference_lists_every_method_under_its_namespace():
    text = reference_markdown()
    methods = _document()["methods"]
    assert len(methods) == sum(len(t) for t in TABLES) + 1  # and rpc.discover
    headings = [line.removeprefix("### `").removesuffix("`") for line in text.splitlines() if line.startswith("### `")]
    assert sorted(headings) == sorted(m["name"] for m in methods)
    for method in methods:
        namespace = method["name"].split(".", 1)[0]
        before = text.split(f"### `{method['name']}`\n", 1)[0]
        assert before.rfind("\n## `") == before.rfind(f"\n## `{namespace}`"), method["name"]
        section = text.split(f"### `{method['name']}`\n", 1)[1].split("\n### ", 1)[0].split("\n## ", 1)[0]
        for param in method["params"]:
            assert f"| `{param['name']}` |" in section, (method["name"], param["name"])
        assert "Result: " in section
    assert "&lt;peer id&gt;" in text  # prose escaped for Markdown, code spans left alone


def test_the_daemon_services_methods_are_in_the_one_registry():
    names = {m["name"] for m in _document()["methods"]}
    assert {"node.arrivals", "node.announced", "repo.verify", "repo.provenance", "repo.owner", "repo.handover",
            "repo.registry", "repo.commit", "round.merge", "rpc.discover"} <= names


def test_every_repository_param_is_the_shared_one():
    for method in _document()["methods"]:
        for param in method["params"]:
            if param["name"] == "repo":
                assert param["schema"] == REPO.schema, method["name"]


async def test_a_registry_bound_to_no_node_only_documents():
    method = build_registry(None).lookup("node.whoami")
    with pytest.raises(FlairError, match="not bound to a node"):
        await method.handler()


async def test_a_service_the_node_does_not_run_is_named():
    from flair_node.api.context import ApiContext
    from flair_node.core.errors import InvalidInput
    from flair_node.core.identity import Identity
    from flair_node.storage.repos import RepoSet

    identity = Identity.generate()
    registry = build_registry(ApiContext(identity, RepoSet.in_memory(identity)))
    assert await registry.lookup("node.whoami").handler() == {"public_key": identity.public_key}
    with pytest.raises(FlairError, match="runs no peer-to-peer services"):
        await registry.lookup("node.arrivals").handler(since_ms=0)
    with pytest.raises(InvalidInput, match="no chain.registry"):
        await registry.lookup("repo.registry").handler(repo="x")
    with pytest.raises(InvalidInput, match="no chain.cluster"):
        await registry.lookup("repo.handover").handler(repo="x", member="k", claim=None)
