"""A command line ``flair`` cannot parse: its usage on stderr and exit 2, or with ``--json`` (before or after the
verb) a JSON error object on stdout, as the daemon's errors are printed."""

import json

import pytest

from flair_node.cli.main import main
from flair_node.core.errors import InvalidInput


@pytest.mark.parametrize("argv", [["--json"], ["log", "--json"], ["--json", "log", "r", "--nope"],
                                  ["commit", "--json", "r"], ["--json", "frobnicate"]])
def test_a_command_line_that_does_not_parse_is_a_json_error_with_json(argv, capsys):
    assert main(argv) == 2
    out, err = capsys.readouterr()
    error = json.loads(out)["error"]
    assert error["code"] == InvalidInput.code and error["message"] and error["data"]["usage"].startswith("usage: flair")
    assert err == ""


def test_without_json_it_is_the_usage_and_the_reason_on_stderr(capsys):
    assert main(["log"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("usage: flair log")
    assert "flair: error: the following arguments are required" in err
