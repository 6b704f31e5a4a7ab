"""The README's configuration reference cannot fall behind the code: every command, every flag of
`meshplane serve`, every annotation and every file it links to is checked here."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from meshplane.cli import _parser
from meshplane.discovery import kubernetes_annotations

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    return dict(action.choices)


def test_every_command_is_in_the_reference() -> None:
    missing = [name for name in _subcommands(_parser()) if f"`meshplane {name}" not in README]
    assert missing == []


def test_every_serve_flag_is_in_the_reference() -> None:
    serve = _subcommands(_parser())["serve"]
    flags = {flag for action in serve._actions for flag in action.option_strings if flag.startswith("--")}
    flags = {flag for flag in flags if not flag.startswith("--no-")} - {"--help"}  # --no-X: the negation of --X
    missing = sorted(flag for flag in flags if f"`{flag}`" not in README)
    assert missing == []


def test_every_annotation_is_in_the_reference() -> None:
    known = {
        value
        for value in vars(kubernetes_annotations).values()
        if isinstance(value, str) and value.startswith(kubernetes_annotations.PREFIX) and value[-1] != "/"
    }
    assert len(known) >= 10
    assert sorted(name for name in known if f"`{name}`" not in README) == []


@pytest.mark.parametrize("target", sorted(set(re.findall(r"\]\(((?!https?:|#)[^)#]+)", README))))
def test_every_linked_file_exists(target: str) -> None:
    assert (ROOT / target).exists(), target


def test_the_two_commands_exist() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^run:", makefile, re.MULTILINE)
    assert re.search(r"^test:", makefile, re.MULTILINE)
    assert "make run" in README
    assert "make test" in README
