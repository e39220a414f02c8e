"""The method registry: params checked by name and by position, schemas checked at registration, OpenRPC out."""

import json

import pytest

from flair_node.api.dispatch import DISCOVER, Method, Param, Registry, json_type, openrpc_document
from flair_node.api.errors import MethodNotFound
from flair_node.core.errors import InvalidInput


def make_registry() -> Registry:
    registry = Registry()

    @registry.method(
        "repo.commit", "Commit weights on a branch.",
        params=(Param("repo", {"type": "string", "maxLength": 8}, "repository"),
                Param("branch", {"type": "string", "minLength": 1}, "branch", required=False, default="main"),
                Param("examples", {"type": "integer", "minimum": 0, "maximum": 100}, "examples", required=False,
                      default=0),
                Param("metrics", {"type": "object", "additionalProperties": {"type": "number"}}, "metrics",
                      required=False),
                Param("tags", {"type": "array", "items": {"type": "string"}, "maxItems": 3}, "tags",
                      required=False, default=[]),
                Param("strategy", {"type": "string", "enum": ["average", "task-arithmetic"]}, "strategy",
                      required=False, default="average"),
                Param("force", {"type": "boolean"}, "force", required=False, default=False)),
        result={"type": "object"})
    async def commit(**kwargs):
        return kwargs

    @registry.method("node.whoami", "Who am I.")
    async def whoami():
        return {}

    return registry


def test_by_name_fills_defaults_and_copies_mutable_ones():
    registry = make_registry()
    kwargs = registry.validate("repo.commit", {"repo": "r"})
    assert kwargs == {"repo": "r", "branch": "main", "examples": 0, "metrics": None, "tags": [],
                      "strategy": "average", "force": False}
    kwargs["tags"].append("changed")
    assert registry.validate("repo.commit", {"repo": "r"})["tags"] == []


def test_by_position_and_absent_params():
    registry = make_registry()
    kwargs = registry.validate(registry.lookup("repo.commit"), ["r", "dev", 3])
    assert (kwargs["repo"], kwargs["branch"], kwargs["examples"], kwargs["force"]) == ("r", "dev", 3, False)
    assert registry.validate("node.whoami", None) == {}
    assert registry.validate("node.whoami", []) == {}
    with pytest.raises(InvalidInput, match="takes at most 7 params"):
        registry.validate("repo.commit", ["r"] * 8)
    with pytest.raises(InvalidInput, match="takes no params"):
        registry.validate("node.whoami", {"x": 1})


def test_null_means_default_for_optional_params_only():
    registry = make_registry()
    assert registry.validate("repo.commit", {"repo": "r", "branch": None})["branch"] == "main"
    with pytest.raises(InvalidInput, match="param 'repo' must be a string, got null"):
        registry.validate("repo.commit", {"repo": None})


@pytest.mark.parametrize("params, message", [
    ({"repo": "r", "branch": 5}, "param 'branch' must be a string, got integer"),
    ({"repo": "r", "examples": True}, "param 'examples' must be an integer, got boolean"),
    ({"repo": "r", "examples": 1.5}, "param 'examples' must be an integer, got number"),
    ({"repo": "r", "examples": -1}, "param 'examples' must be at least 0, got -1"),
    ({"repo": "r", "examples": 101}, "param 'examples' must be at most 100, got 101"),
    ({"repo": "r" * 9}, "param 'repo' is 9 characters long, the most allowed is 8"),
    ({"repo": "r", "branch": ""}, "param 'branch' is 0 characters long, the fewest allowed is 1"),
    ({"repo": "r", "metrics": {"acc": "high"}}, "param 'metrics' key \"acc\" must be a number, got string"),
    ({"repo": "r", "metrics": [1]}, "param 'metrics' must be an object, got array"),
    ({"repo": "r", "tags": ["a", 2]}, "param 'tags' item 1 must be a string, got integer"),
    ({"repo": "r", "tags": ["a"] * 4}, "param 'tags' has 4 items, the most allowed is 3"),
    ({"repo": "r", "strategy": "median"}, "param 'strategy' must be one of \"average\", \"task-arithmetic\", "
                                          "got \"median\""),
    ({"repo": "r", "force": 1}, "param 'force' must be a boolean, got integer"),
    ({"repo": "r", "brnch": "dev"}, "unknown param 'brnch' for repo.commit \\(did you mean 'branch'\\?\\)"),
    ({"branch": "dev"}, "missing required param 'repo' for repo.commit"),
])
def test_bad_params_are_named(params, message):
    with pytest.raises(InvalidInput, match=f"^{message}") as info:
        make_registry().validate("repo.commit", params)
    assert info.value.code == -32602
    assert info.value.data["method"] == "repo.commit"


def test_numbers_accept_integers_and_data_names_the_param():
    registry = Registry()

    @registry.method("m", "m", params=(Param("x", {"type": "number"}, "x"),))
    async def m(x):
        return x

    assert registry.validate("m", {"x": 3}) == {"x": 3}
    with pytest.raises(InvalidInput) as info:
        registry.validate("m", {"x": "3"})
    assert info.value.data == {"method": "m", "param": "x"}


def test_params_must_be_structured():
    with pytest.raises(InvalidInput, match="params of node.whoami must be an object or an array, got string"):
        make_registry().validate("node.whoami", "x")


def test_unknown_method_suggests_discover():
    registry = make_registry()
    with pytest.raises(MethodNotFound, match="no method 'repo.comit': did you mean repo.commit") as info:
        registry.validate("repo.comit", {})
    assert DISCOVER in info.value.message and info.value.code == -32601
    assert registry.get("repo.comit") is None and "repo.commit" in registry and len(registry) == 2
    assert [m.name for m in registry] == ["repo.commit", "node.whoami"]


async def _noop(**kwargs):
    return None


@pytest.mark.parametrize("build, error, message", [
    (lambda r: r.add(Method("rpc.mine", "", (), {}, _noop)), ValueError, "reserved"),
    (lambda r: r.add(Method("node.whoami", "", (), {}, _noop)), ValueError, "already registered"),
    (lambda r: Param("x", {"type": "string", "maxLenght": 3}, ""), ValueError, "maxLenght"),
    (lambda r: Param("x", {"type": "integer", "maxLength": 3}, ""), ValueError, "maxLength"),
    (lambda r: Param("x", {"type": "tuple"}, ""), ValueError, "tuple"),
    (lambda r: Param("x", {"type": "array", "items": {"type": "string", "bad": 1}}, ""), ValueError, "bad"),
    (lambda r: Param("x", {"type": "string", "enum": []}, ""), ValueError, "enum"),
    (lambda r: Param("class", {"type": "string"}, ""), ValueError, "identifier"),
    (lambda r: Param("x", {"type": "integer", "minimum": 1}, "", required=False, default=0), ValueError,
     "at least 1"),
    (lambda r: Param("x", {"type": "integer"}, "", default=3), ValueError, "never be used"),
    (lambda r: Method("m", "", (Param("x", {}, ""), Param("x", {}, "")), {}, _noop), ValueError, "duplicate"),
])
def test_mistakes_are_caught_at_registration(build, error, message):
    with pytest.raises(error, match=message):
        build(make_registry())


def test_handlers_must_be_async_and_take_their_params():
    registry = Registry()
    with pytest.raises(TypeError, match="async function"):
        registry.method("sync", "")(lambda: None)

    async def takes_a(a):
        return a

    with pytest.raises(TypeError, match="cannot be called with its params"):
        registry.method("m", "", params=(Param("b", {"type": "string"}, ""),))(takes_a)
    assert len(registry) == 0


def test_json_type_names():
    assert [json_type(v) for v in (None, True, 1, 1.5, "s", [], {})] == \
        ["null", "boolean", "integer", "number", "string", "array", "object"]


def test_openrpc_document_lists_every_method_with_params():
    doc = openrpc_document(make_registry(), "flair-node", "9.9")
    json.dumps(doc)  # plain JSON
    assert doc["openrpc"] == "1.2.6" and doc["info"] == {"title": "flair-node", "version": "9.9"}
    methods = {m["name"]: m for m in doc["methods"]}
    assert list(methods) == ["repo.commit", "node.whoami", "rpc.discover"]
    for m in doc["methods"]:
        assert {"name", "summary", "params", "result", "paramStructure"} <= set(m)
        assert {"name", "schema"} <= set(m["result"])
        for p in m["params"]:
            assert set(p) == {"name", "description", "required", "schema"}
    commit = methods["repo.commit"]
    assert [p["name"] for p in commit["params"]] == ["repo", "branch", "examples", "metrics", "tags", "strategy",
                                                    "force"]
    assert commit["params"][0] == {"name": "repo", "description": "repository", "required": True,
                                   "schema": {"type": "string", "maxLength": 8}}
    assert commit["params"][1]["required"] is False and commit["params"][1]["schema"]["default"] == "main"
    assert "default" not in commit["params"][3]["schema"]
    assert commit["result"] == {"name": "result", "schema": {"type": "object"}}
    assert methods["rpc.discover"]["params"] == []


def test_daemon_methods_register_and_document():
    from flair_node.api.methods import build_registry

    registry = build_registry(None)  # registration only: the handlers are never called here
    doc = openrpc_document(registry, "flair-node", "0")
    assert len(doc["methods"]) == len(registry) + 1
    json.dumps(doc)
