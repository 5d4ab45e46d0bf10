"""The README is the catalogue: every CLI command and every screen rule is documented there."""
from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from inbox_bot import screen
from inbox_bot.cli import main

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def command_paths(group: click.Group, prefix: tuple[str, ...] = ()) -> list[str]:
    """'run', 'cases list', 'cases show' ...: every command, subgroups walked."""
    paths: list[str] = []
    for name, command in sorted(group.commands.items()):
        path = (*prefix, name)
        if isinstance(command, click.Group):
            paths += command_paths(command, path)
        else:
            paths.append(" ".join(path))
    return paths


def test_the_command_walk_finds_subcommands():
    assert {"run", "cases list", "cases show", "messages list"} <= set(command_paths(main))


@pytest.mark.parametrize("command", command_paths(main))
def test_every_cli_command_is_documented_in_the_readme(command):
    assert re.search(rf"`inbox-bot {re.escape(command)}\b", README), f"README lacks `inbox-bot {command}`"


@pytest.mark.parametrize("rule", [r.name for r in screen.RULES] + ["duplicate"])
def test_every_screen_rule_is_documented_in_the_readme(rule):
    assert f"| `{rule}` |" in README, f"README's screen-rule table lacks `{rule}`"
