"""Every relative markdown link of README.md and docs/*.md points to a file that exists and, with a `#anchor`, to a
heading of that file, by GitHub's rule for heading anchors (restated here, not read from any code of the package).
Every `lathadapter …` command the documents show (shell code blocks, code spans) names a command that exists, only
flags of that command, and in its `--set`/`--tune` options of its methods at values they accept; so does every
`--set NAME=V` code span of their prose."""

import re
import shlex
from collections import Counter
from pathlib import Path

import pytest
import typer

from lathadapter import cli
from lathadapter.adapter.catalog import make_options, method_names
from lathadapter.adapter.options import OptionError
from lathadapter.experiments.protocols import PROTOCOLS

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^\s*(```|~~~)")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
LINK = re.compile(r"\[[^\]]*\]\(([^()\s]+)(?:\s+\"[^\"]*\")?\)")  # [text](target) and ![alt](target)
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: the rendered text lowercased, every character other than a letter, a digit, a
    space, `-` or `_` dropped, each space a `-`."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading renders as its text
    text = text.replace("`", "").replace("*", "").lower()
    text = "".join(c for c in text if c.isalnum() or c in " -_")
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading's anchor; the second heading with a slug gets `-1`, the third `-2`, …"""
    seen: Counter[str] = Counter()
    found = set()
    for line in prose_lines(path.read_text()):
        match = HEADING.match(line)
        if match is None:
            continue
        base = slug(match.group(2))
        found.add(base if seen[base] == 0 else f"{base}-{seen[base]}")
        seen[base] += 1
    return found


def relative_links(path: Path) -> list[str]:
    targets = []
    for line in prose_lines(path.read_text()):
        line = CODE_SPAN.sub("", line)
        targets += [t for t in LINK.findall(line) if not re.match(r"[a-z][a-z0-9+.-]*:", t)]
    return targets


def broken_links(path: Path) -> list[str]:
    broken = []
    for target in relative_links(path):
        file_part, _, anchor = target.partition("#")
        destination = (path.parent / file_part).resolve() if file_part else path
        if not destination.exists():
            broken.append(f"{target}: no such file")
        elif anchor and (destination.suffix != ".md" or anchor not in anchors(destination)):
            broken.append(f"{target}: no heading with that anchor")
    return broken


def test_the_slug_rule_on_hand_written_cases() -> None:
    assert slug("CLAP (`clap`)") == "clap-clap"
    assert slug("experiments/: one job a module") == "experiments-one-job-a-module"
    assert slug("The `split_zhou_<Name>.json` format") == "the-split_zhou_namejson-format"
    assert slug("Poincaré ball of curvature −c") == "poincaré-ball-of-curvature-c"
    assert slug("LP++ (`lp++`)") == "lp-lp"


def test_a_repeated_heading_gets_a_numbered_anchor(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# Notes\n\n## Notes\n\n```\n# Notes\n```\n\n### Notes\n")
    assert anchors(page) == {"notes", "notes-1", "notes-2"}


def test_a_broken_link_is_found(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other page\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n[ok](other.md#other-page) [self](#page) [gone](missing.md) [bad anchor](other.md#nowhere)\n"
        "`[in code](missing.md)` [web](https://example.org/x)\n\n```\n[fenced](missing.md)\n```\n"
    )
    assert broken_links(page) == ["missing.md: no such file", "other.md#nowhere: no heading with that anchor"]


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(document: Path) -> None:
    assert broken_links(document) == []


SHELL_FENCE = re.compile(r"^\s*(```|~~~)(bash|sh|shell)?\s*$")
OPTION_FLAGS = ("--set", "--tune")  # flags whose value is [METHOD.]NAME=V1[,V2...]
PLACEHOLDER = re.compile(r"[A-Z…]|\.\.\.|^name$|^value$|^$")  # NAME=V, METHOD, `name=value`, `prototype.alpha=…`


def documented_commands(path: Path) -> list[tuple[int, str]]:
    """(line, command) of each `lathadapter …` command in `path`: the lines of its unlabelled and shell code blocks
    (a line ending in `\\` joined to the next) and its prose code spans that start with `lathadapter `."""
    found, fence, pending = [], None, []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if FENCE.match(line):
            fence = None if fence is not None else bool(SHELL_FENCE.match(line))
        elif fence is None:
            found += [(number, span) for _, span in CODE_SPAN.findall(line) if span.startswith("lathadapter ")]
        elif fence:
            pending.append(line.strip().removesuffix("\\").strip())
            if not line.rstrip().endswith("\\"):
                if pending[0].startswith("lathadapter "):
                    found.append((number, " ".join(pending)))
                pending = []
    return found


def prose_assignments(path: Path) -> list[tuple[int, str, str]]:
    """(line, flag, assignment) of each `--set X` or `--tune X` inside a prose code span of `path`."""
    found = []
    for number, line in enumerate(prose_lines_numbered(path), 1):
        for _, span in CODE_SPAN.findall(line):
            if span.startswith("lathadapter "):
                continue  # checked with its command
            found += [(number, flag, value) for flag, value in re.findall(r"(--set|--tune)[ =](\S+)", span)]
    return found


def prose_lines_numbered(path: Path) -> list[str]:
    """The file's lines with those inside fenced code blocks blanked, so that indices stay line numbers."""
    lines, fenced = [], False
    for line in path.read_text().splitlines():
        if FENCE.match(line):
            fenced = not fenced
            lines.append("")
            continue
        lines.append("" if fenced else line)
    return lines


def assignment_problems(flag: str, assignment: str, methods: list[str], one_value: bool) -> list[str]:
    """What is wrong with `flag assignment` for a command over `methods`: a name no such method has (scoped or not),
    a scope that is not one of them, a value its method refuses. Placeholders (`NAME=V1,V2`, `…`) pass."""
    name, _, values = assignment.partition("=")
    if PLACEHOLDER.search(name) or PLACEHOLDER.search(values):
        return []
    scope, _, option = name.rpartition(".")
    if scope and scope not in methods:
        return [f"{flag} {assignment}: {scope} is not a method of the command ({', '.join(methods)})"]
    owners = [m for m in ([scope] if scope else methods) if option in make_options(m).__dataclass_fields__]
    if not owners:
        return [f"{flag} {assignment}: no option {option} in {', '.join([scope] if scope else methods)}"]
    problems = []
    for value in [values] if one_value else values.split(","):
        for method in owners:
            try:
                make_options(method, {option: value})
            except OptionError as error:
                problems.append(f"{flag} {assignment}: {error}")
    return problems


def command_problems(command: str) -> list[str]:
    """What is wrong with a documented `lathadapter …` command line: an unknown (sub)command, list or protocol
    name, a flag its command does not take, an unknown method, or a `--set`/`--tune` its methods refuse."""
    tokens = [t for t in (t.strip("[]") for t in shlex.split(command, comments=True)) if t][1:]
    current, path = typer.main.get_command(cli.app), ["lathadapter"]
    while hasattr(current, "commands") and tokens and tokens[0] in current.commands:  # typer's own click's Group
        path.append(tokens[0])
        current = current.commands[tokens.pop(0)]
    name = " ".join(path)
    if hasattr(current, "commands"):
        return [f"{name}: no command {tokens[0] if tokens else '(none)'}"]
    options = {flag: p for p in current.params if p.param_type_name == "option"
               for flag in (*p.opts, *p.secondary_opts)}
    positional, assignments, problems = [], [], []
    methods = [str(options["--method"].default)] if "--method" in options else []  # fit's and grid's default
    if name == "lathadapter protocol":
        methods = method_names()  # its default: every method
    while tokens:
        token = tokens.pop(0)
        if not token.startswith("--"):
            positional.append(token)
            continue
        flag, equals, value = token.partition("=")
        if flag not in options:
            problems.append(f"{name}: no option {flag}")
            continue
        if not options[flag].is_flag and not equals and tokens:
            value = tokens.pop(0)
        if flag == "--method" and not PLACEHOLDER.search(value):
            methods = value.split(",")
            problems += [f"{name} --method {m}: no such method" for m in methods if m not in method_names()]
        if flag in OPTION_FLAGS:
            assignments.append((flag, value))
    for flag, value in assignments:
        problems += assignment_problems(flag, value, methods, one_value=name == "lathadapter fit")
    choices = {"lathadapter list": cli.LISTS, "lathadapter protocol": PROTOCOLS}.get(name)
    if choices and positional and not PLACEHOLDER.search(positional[0]) and positional[0] not in choices:
        problems.append(f"{name} {positional[0]}: choose one of {', '.join(choices)}")
    if name == "lathadapter list" and positional[1:] and not PLACEHOLDER.search(positional[1]) \
            and positional[1] not in method_names():
        problems.append(f"{name} {' '.join(positional)}: no method {positional[1]}")
    return problems


def test_the_command_checker_finds_wrong_commands_flags_and_options() -> None:
    assert command_problems("lathadapter fit --shots 4 --set lambda_hier=0.1 --set cone_k=0.3") == []
    assert command_problems("lathadapter fit --shot 4") == ["lathadapter fit: no option --shot"]
    assert command_problems("lathadapter report grids/hier --shots 4") == ["lathadapter report: no option --shots"]
    assert command_problems("lathadapter cache make x.h5") == ["lathadapter cache: no command make"]
    assert command_problems("lathadapter list option") == ["lathadapter list option: choose one of methods, "
                                                           "datasets, models, options"]
    assert command_problems("lathadapter list options METHOD") == []
    assert command_problems("lathadapter fit --set lambda_hierr=0.1")[0].startswith("--set lambda_hierr=0.1: no option")
    assert command_problems("lathadapter fit --method clip-adapter --set cone_k=0.3") != []  # not clip-adapter's
    assert command_problems("lathadapter fit --set hier=cones") != []  # not a valid value
    assert command_problems("lathadapter grid --method lathadapter,gda --set lathadapter.lambda_hier=0,-1") != []
    assert command_problems("lathadapter grid --method gda --set lathadapter.lambda_hier=0") != []  # scope not in grid
    assert command_problems("lathadapter grid --method gda,lathadapter --set search=true") == []
    assert command_problems("lathadapter inspect RUN_DIR [--cache PATH] [--targets PATH ...]") == [
        "lathadapter inspect: no option --targets"]


def test_the_command_finder_reads_shell_blocks_and_code_spans(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("Run `lathadapter fit --shots 4` or `lathadapter`.\n\n```bash\nlathadapter grid --cache a.h5 \\\n"
                    "    --shots 1   # a comment\nmake test\n```\n\n```python\nlathadapter fit\n```\n")
    assert documented_commands(page) == [(1, "lathadapter fit --shots 4"),
                                         (5, "lathadapter grid --cache a.h5 --shots 1   # a comment")]


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_documented_command_exists_with_its_flags_and_options(document: Path) -> None:
    problems = [f"{document.name}:{line}: {problem}" for line, command in documented_commands(document)
                for problem in command_problems(command)]
    problems += [f"{document.name}:{line}: {problem}" for line, flag, assignment in prose_assignments(document)
                 for problem in assignment_problems(flag, assignment, method_names(), one_value=False)]
    assert problems == []
