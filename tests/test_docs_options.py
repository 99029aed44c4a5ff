"""docs/usage.md's "Commands and their options" names every option of every command of the `lathadapter` command
line, under that command's heading, and no option the command does not take: the command line read from typer's
click tree, the document from its headings and the `--flags` of its text."""

import re
from pathlib import Path

import typer

from lathadapter import cli

USAGE = Path(__file__).resolve().parents[1] / "docs" / "usage.md"
SECTION = "## Commands and their options"
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def commands(group, path: tuple[str, ...] = ()) -> dict[str, set[str]]:  # typer's own click's Group
    """Each leaf command's name (`cache build`, `fit`) and its option flags, `--help` left out."""
    found = {}
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            found.update(commands(command, (*path, name)))
        else:
            found[" ".join((*path, name))] = option_flags(command)
    return found


def option_flags(command) -> set[str]:
    return {flag for p in command.params if p.param_type_name == "option"
            for flag in (*p.opts, *p.secondary_opts)} - {"--help"}


def subsections(text: str) -> tuple[str, dict[tuple[str, ...], str]]:
    """The section's text before its first `###`, and per `###` heading the command names its code spans give
    (`lathadapter cache build` and `cache verify` alike) with the text under it."""
    assert SECTION in text, f"usage.md has no section {SECTION!r}"
    body = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    intro, *parts = re.split(r"^### ", body, flags=re.M)
    found = {}
    for part in parts:
        heading, _, content = part.partition("\n")
        names = tuple(span.removeprefix("lathadapter ") for span in re.findall(r"`([^`]+)`", heading))
        found[names] = content
    return intro, found


def test_every_command_and_option_is_documented_under_its_heading() -> None:
    root = typer.main.get_command(cli.app)
    expected = commands(root)
    intro, documented = subsections(USAGE.read_text())
    named = {name for names in documented for name in names}
    assert named == set(expected), f"headings name {sorted(named)}; the commands are {sorted(expected)}"
    for names, content in documented.items():
        flags = set(FLAG.findall(content))
        takes = set().union(*(expected[name] for name in names))
        for name in names:
            missing = expected[name] - flags
            assert not missing, f"usage.md, {name}: options not documented: {sorted(missing)}"
        assert flags <= takes, f"usage.md, {' / '.join(names)}: no such option: {sorted(flags - takes)}"
    top = option_flags(root) - {"--install-completion", "--show-completion"}
    assert top and top <= set(FLAG.findall(intro)), f"usage.md: top-level options not documented: {sorted(top)}"


def test_the_reader_finds_a_missing_and_a_foreign_option() -> None:
    text = (f"{SECTION}\n\nintro `--version`\n\n### `lathadapter fit`\n\n`--cache`, `--method`\n\n"
            "### `lathadapter cache info`, `cache verify`\n\n`--out`\n\n## Next\n\n`--never`\n")
    intro, documented = subsections(text)
    assert FLAG.findall(intro) == ["--version"]
    assert documented == {("fit",): "\n`--cache`, `--method`\n\n", ("cache info", "cache verify"): "\n`--out`\n"}
    assert "--never" not in "".join(documented.values())
