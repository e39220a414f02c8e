"""ApiClient without a daemon: finding it through HOME/api.json, and clear errors when it is not there."""

import json
import socket
import subprocess
import sys

import pytest

import flair_node.api
from flair_node.api import ApiClient
from flair_node.core.errors import FlairError, InvalidInput


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_from_home_without_api_file(tmp_path):
    with pytest.raises(FlairError) as info:
        ApiClient.from_home(tmp_path)
    assert info.value.message == f"no daemon API at {tmp_path}: start one with `flair-node run --home {tmp_path}`"
    assert info.value.data == {"home": str(tmp_path)}


@pytest.mark.parametrize("text", ["{", "[]", '{"url": "http://127.0.0.1:1/"}', '{"url": 1, "token": "t"}'])
def test_from_home_with_damaged_api_file(tmp_path, text):
    (tmp_path / "api.json").write_text(text)
    with pytest.raises(FlairError, match="api.json is not a flair-node API file"):
        ApiClient.from_home(tmp_path)


def test_daemon_not_running(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/"
    (tmp_path / "api.json").write_text(json.dumps({"url": url, "token": "t"}))
    with pytest.raises(FlairError) as info:
        ApiClient.from_home(tmp_path, timeout=5).call("node.whoami")
    assert info.value.message == \
        f"flair-node is not running at {url} (start it with `flair-node run --home {tmp_path}`)"
    with pytest.raises(FlairError, match="flair-node is not running at .* --home HOME"):
        ApiClient(url, "t", timeout=5).call("node.whoami")


@pytest.mark.parametrize("url", ["https://127.0.0.1:1/", "127.0.0.1:80", "http://127.0.0.1/", "http://h:port/"])
def test_bad_url(url):
    with pytest.raises(FlairError, match="http://HOST:PORT/"):
        ApiClient(url, "t")


def test_params_that_are_not_json(tmp_path):
    client = ApiClient(f"http://127.0.0.1:{free_port()}/", "t")
    with pytest.raises(InvalidInput, match="cannot be sent as JSON"):
        client.call("repo.commit", metrics={"acc": float("nan")})
    with pytest.raises(InvalidInput, match="cannot be sent as JSON"):
        client.call("repo.init", model_path=tmp_path)


def test_repr_hides_the_token():
    assert "s3cret" not in repr(ApiClient("http://127.0.0.1:1/", "s3cret"))


def test_exports():
    for name in flair_node.api.__all__:
        value = getattr(flair_node.api, name)
        assert isinstance(value, str) or value.__module__.startswith("flair_node.api."), name
    assert flair_node.api.ApiServer.__name__ == "ApiServer"
    with pytest.raises(AttributeError):
        flair_node.api.Nope  # noqa: B018


def test_client_import_does_not_load_trio():
    code = "import sys, flair_node.api.client; print(sorted({'trio', 'h11'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"
