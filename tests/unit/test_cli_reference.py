"""The generated CLI reference names every verb and option, and the parser built from the verbs keeps its promises."""

import argparse
from pathlib import Path

from flair_node.cli import reference_markdown
from flair_node.cli.parser import build_parser
from flair_node.cli.verbs import VERBS


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_verb_once_in_the_parser():
    names = [v.name for v in VERBS]
    assert len(names) == len(set(names))
    assert list(_subparsers(build_parser())) == names


def test_reference_lists_every_verb_with_its_description_and_usage():
    text = reference_markdown()
    headings = [line.removeprefix("## `flair ").removesuffix("`") for line in text.splitlines()
                if line.startswith("## `flair ")]
    assert headings == [v.name for v in VERBS]
    for verb in VERBS:
        section = text.split(f"## `flair {verb.name}`\n", 1)[1].split("\n## ", 1)[0]
        assert verb.help in section
        assert f"\nflair {verb.name} [-h] [--home HOME] [--json]" in section


def test_reference_lists_every_option_with_its_help_and_default():
    text = reference_markdown()
    for name, sub in _subparsers(build_parser()).items():
        section = text.split(f"## `flair {name}`\n", 1)[1].split("\n## ", 1)[0]
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction) or {"--home", "--json"} & set(action.option_strings):
                continue
            row = next(line for line in section.splitlines()
                       if line.startswith(f"| `{(action.option_strings or [action.metavar or action.dest])[0]}"))
            assert (action.help or "") in row
    commit = text.split("## `flair commit`\n", 1)[1].split("\n## ", 1)[0]
    assert "| `--branch BRANCH` |  | `main` |" in commit
    assert "| `--weights WEIGHTS` | new weights (.safetensors, or a sharded checkpoint's folder; a PEFT adapter " \
           "folder in a repository of adapters) | required |" in commit
    assert "--home HOME" in text.split("## ", 1)[0]  # the options every verb takes, once, before the verbs


def test_reference_does_not_depend_on_the_terminal(monkeypatch):
    monkeypatch.setenv("COLUMNS", "40")
    narrow = reference_markdown()
    monkeypatch.setenv("COLUMNS", "300")
    assert reference_markdown() == narrow


def test_home_and_json_before_or_after_the_verb():
    parse = build_parser().parse_args
    assert vars(parse(["--home", "/a", "--json", "log", "r"])) == vars(parse(["log", "r", "--home", "/a", "--json"]))
    # given before the verb only, the verb's own copy of the options must not reset them to a default
    before = parse(["--home", "/a", "--json", "whoami"])
    assert before.home == Path("/a") and before.json is True
    assert not hasattr(parse(["whoami"]), "home") and not hasattr(parse(["whoami"]), "json")  # main fills them in
