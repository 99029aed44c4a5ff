"""Class prompts (the dataset's CoOp template plus open_clip's 7-template ensemble) and the attribute vocabulary."""

from __future__ import annotations

from pathlib import Path

from open_clip import SIMPLE_IMAGENET_TEMPLATES

from lathadapter.cache.text import read_text

ATTRIBUTES_FILE = Path(__file__).with_name("attributes.txt")


def ensemble_templates(coop_template: str) -> list[str]:
    """The templates stored in a cache: the dataset's CoOp template first, then open_clip's 7 simple templates."""
    simple = [t("{}") for t in SIMPLE_IMAGENET_TEMPLATES]
    return [coop_template] + [t for t in simple if t != coop_template]


def prompt(template: str, class_name: str) -> str:
    """One class prompt; CoOp's class names use `_` for spaces."""
    return template.format(class_name.replace("_", " "))


def load_attributes(path: Path | None = None) -> list[str]:
    """Attribute phrases, one per line (blank lines and `#` comments skipped); the shipped list when `path` is None."""
    source = ATTRIBUTES_FILE if path is None else Path(path)
    try:
        text = read_text(source, f"--attributes {source}")
    except OSError as error:
        raise ValueError(f"--attributes {source} cannot be read ({error}); pass a text file with one phrase "
                         "per line") from error
    phrases: list[str] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        phrase = line.split("#", 1)[0].strip()
        if not phrase:
            continue
        if phrase in seen:
            raise ValueError(f"--attributes {source}:{number}: {phrase!r} repeats line {seen[phrase]}")
        seen[phrase] = number
        phrases.append(phrase)
    if not phrases:
        raise ValueError(f"--attributes {source} has no phrases; write one attribute phrase per line")
    return phrases
