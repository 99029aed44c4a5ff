"""Every name of the code that README.md and docs/*.md (but the log of changes) cite in a code span exists in the
repository: a repository path (`adapter/recipes.py`, `tests/test_grid.py::test_x`, `adapter/methods/`) names a file
(and a test function) or a folder that exists, a dotted name whose first part is a module of the package
(`recipes.unread_options`, `lathadapter.experiments.launch.launch`) or a class of it (`Method.unread`) resolves, and
`file.py`'s `NAME` is defined in that file; so does every import of a fenced Python block. The package is read as
source with `ast`, never imported, by the rules restated here:

- A path is a repository path when its first folder is one of `TOP_FOLDERS`; a bare file name (`main.py`, an
  official repository's file; `config.json`, a run's) and a path under any other folder (`runs/`, `grids/`,
  `caches/`, `demo-output/`: written by a command at run time; `datasets/`, `trainers/`: an official repository's)
  is not one, nor one through a hidden folder (`benchmarks/.data/`, written by a benchmark). A path with a
  placeholder (`<`, `*`, `{`, `…`) is a pattern, not a path.
- A module is a `.py` file outside `tests/` or a folder with `__init__.py`, known by its basename (a basename that
  several modules share resolves when any of them defines the name) and, from `lathadapter.`, by its full path. A
  module defines its top-level functions, classes, assignments, imported names and the strings of its `__all__`
  (also under a top-level `if`/`try`); a class its methods, properties, class attributes, dataclass fields, nested
  classes, `self.NAME` assignments in its methods and what its bases in the package define.
- Not code names, left alone: a dotted name whose last part is a file suffix (`cache.h5`, `launch.py`), one followed
  by `=` (an option value, `--set lathadapter.lambda_hier=0`), a span that is a command (`lathadapter …`,
  `python …`), and a name whose first part is neither a module nor a class of the package (columns such as
  `opt.lr`, `acc.base`, `tune.set`; official code such as `utils.clip_classifier`), with the narrow exceptions of
  `NOT_CODE`. A variable of the docs' examples named as a module (`run.targets`) resolves in either (`INSTANCES`).
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# docs/changes.md is left out: a log of each stop, it names the code as it was then (a name since renamed stays
# there as written).
DOCUMENTS = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").glob("*.md") if p.name != "changes.md")]
TOP_FOLDERS = ("adapter", "cache", "experiments", "kernels", "demo", "benchmarks", "tests", "docs", ".ci")
SUFFIXES = ("py", "sh", "md", "txt", "json", "png", "toml", "yaml", "csv")
FILE_SUFFIXES = (*SUFFIXES, "h5", "pt", "tex", "lock", "gif", "pgm", "ppm", "bin", "html")  # `cache.h5` is a file
COMMANDS = ("lathadapter ", "python ", "bash ", "make ", "pip ", "pytest ")
NOT_CODE = {  # span → why it is no name of this package's code, though it reads as one
    "dataset.val": "Dassl's dataset object in official code",
    "experiments/experiment_CLAP.txt": "a file of CLAP's official repository",
    "clap.alpha_min": "a key of a run's `chosen` record",
    "clap.alpha_mean": "a key of a run's `chosen` record",
    "clap.alpha_max": "a key of a run's `chosen` record",
}
INSTANCES = {  # a variable of the docs' examples that is also a module's basename → the class of what it holds
    "run": "TrainedRun",  # README: `run = lathadapter.load(...)`
    "execution": "Execution",  # `execution.stacks(device)`: the `Execution` a command parsed
}

FENCE = re.compile(r"^\s*(```|~~~)\s*(\w*)")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
PLACEHOLDER = re.compile(r"[<>*{}…]")
TOP = "|".join(re.escape(folder) for folder in TOP_FOLDERS)
PART = r"[\w-][\w.-]*"  # a folder or file name; a hidden one (`benchmarks/.data/`) is written at run time
FOLDER = re.compile(rf"(?:{TOP})/(?:{PART}/)*")
PATH = re.compile(rf"(?<![\w./-])((?:{TOP})/(?:{PART}/)*[\w-][\w.-]*?\.(?:{'|'.join(SUFFIXES)}))"
                  r"(?:::(\w+))?(?![\w/.-])")  # `tests/test_x.py::test_y` names a test function too
DOTTED = re.compile(r"(?<![\w./-])([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+)(?![\w/-])(?!\s*=)")
OWNED = re.compile(r"`([\w./-]+\.py)`'s `([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)(?:\(.*?\))?`")


@dataclass
class Scope:
    """The names a module or class defines, and (a class) its bases' names."""

    names: set[str] = field(default_factory=set)
    bases: list[str] = field(default_factory=list)


@dataclass
class Package:
    """The package read with `ast`: each module's dotted path (`cache.store`; `` the root) and scope, each class's
    scopes by name (classes of one name in several modules are all kept)."""

    modules: dict[str, Scope]
    classes: dict[str, list[Scope]]
    files: dict[str, Path]


def module_path(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def targets(node: ast.AST) -> list[str]:
    """The names an assignment target binds: `x`, `a, b`, `self.x` (as `self.x`)."""
    if isinstance(node, ast.Name):
        return [node.id]
    if isinstance(node, (ast.Tuple, ast.List)):
        return [n for e in node.elts for n in targets(e)]
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
        return [f"self.{node.attr}"]
    return []


def bound_names(statements: list[ast.stmt], classes: dict[str, list[Scope]]) -> set[str]:
    """What a body of statements binds, descending into `if`/`try`/`with` blocks; its classes go into `classes`."""
    names: set[str] = set()
    for node in statements:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef):
            names.add(node.name)
            classes.setdefault(node.name, []).append(class_scope(node, classes))
        elif isinstance(node, ast.Assign):
            names.update(n for t in node.targets for n in targets(t))
            if any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
                names.update(e.value for e in getattr(node.value, "elts", []) if isinstance(e, ast.Constant))
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
            names.update(targets(node.target))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.If, ast.Try, ast.With)):
            for block in ("body", "orelse", "finalbody", "handlers"):
                for part in getattr(node, block, []):
                    names |= bound_names(part.body if isinstance(part, ast.ExceptHandler) else [part], classes)
    return names


def class_scope(node: ast.ClassDef, classes: dict[str, list[Scope]]) -> Scope:
    """A class's names: its body's, and the `self.NAME` its methods assign."""
    names = {n for n in bound_names(node.body, classes) if not n.startswith("self.")}
    for method in node.body:
        if isinstance(method, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for inner in ast.walk(method):
                if isinstance(inner, (ast.Assign, ast.AnnAssign)):
                    for t in inner.targets if isinstance(inner, ast.Assign) else [inner.target]:
                        names.update(n.removeprefix("self.") for n in targets(t) if n.startswith("self."))
    bases = [b.id if isinstance(b, ast.Name) else b.attr for b in node.bases
             if isinstance(b, (ast.Name, ast.Attribute))]
    return Scope(names, bases)


def read_package(root: Path) -> Package:
    modules: dict[str, Scope] = {}
    classes: dict[str, list[Scope]] = {}
    files: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        if relative.parts[0] == "tests" or any(p.startswith(".") or p in ("build", "node_modules") for p in
                                               relative.parts[:-1]):
            continue
        name = module_path(path, root)
        modules[name] = Scope(bound_names(ast.parse(path.read_text(), str(path)).body, classes))
        files[name] = path
    return Package(modules, classes, files)


@cache
def package() -> Package:
    return read_package(ROOT)


def class_defines(package: Package, scope: Scope, name: str, seen: frozenset[str] = frozenset()) -> bool:
    """Whether a class or one of its bases in the package defines `name`."""
    if name in scope.names:
        return True
    return any(class_defines(package, base, name, seen | {b}) for b in scope.bases if b not in seen
               for base in package.classes.get(b, []))


def resolves_in_class(package: Package, scope: Scope, rest: list[str]) -> bool:
    if not rest:
        return True
    if not class_defines(package, scope, rest[0]):
        return False
    return len(rest) == 1 or any(resolves_in_class(package, inner, rest[1:]) for inner in
                                 package.classes.get(rest[0], []))


def resolves_in_module(package: Package, module: str, rest: list[str]) -> bool:
    if not rest:
        return True
    head, tail = rest[0], rest[1:]
    child = f"{module}.{head}" if module else head
    if child in package.modules and resolves_in_module(package, child, tail):
        return True
    if head not in package.modules[module].names:
        return False
    return not tail or any(resolves_in_class(package, scope, tail) for scope in package.classes.get(head, []))


def starts(package: Package, first: str) -> tuple[list[str], list[Scope]]:
    """The modules (by basename; `lathadapter` also the root) and classes (`INSTANCES` too) that a name's first part
    can be."""
    modules = [m for m in package.modules if m.rpartition(".")[2] == first] + ([""] if first == "lathadapter" else [])
    classes = package.classes.get(first, []) + package.classes.get(INSTANCES.get(first, ""), [])
    return modules, classes


def is_code_name(package: Package, name: str) -> bool:
    """Whether a dotted name is one the check resolves: its first part a module or class of the package, its last
    not a file suffix."""
    modules, classes = starts(package, name.split(".")[0])
    return bool(modules or classes) and name.rpartition(".")[2] not in FILE_SUFFIXES and name not in NOT_CODE


def resolves(package: Package, name: str) -> bool:
    first, *rest = name.split(".")
    modules, classes = starts(package, first)
    return any(resolves_in_module(package, m, rest) for m in modules) or any(
        resolves_in_class(package, c, rest) for c in classes)


def file_defines(package: Package, path: Path, name: str) -> bool:
    """Whether the module at `path` defines `name` (`Class.attribute` too)."""
    module = next((m for m, p in package.files.items() if p == path), None)
    return module is not None and resolves_in_module(package, module, name.split("."))


def spans(text: str) -> list[tuple[int, str, str]]:
    """(line, line text, span) of each code span outside fenced blocks."""
    found, fenced = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            found += [(number, line, span) for _, span in CODE_SPAN.findall(line)]
    return found


def python_imports(text: str) -> list[tuple[int, str]]:
    """(line, `lathadapter.module.NAME`) of each name a fenced Python block imports from the package."""
    found, block, start, language = [], [], 0, None
    for number, line in enumerate(text.splitlines(), 1):
        fence = FENCE.match(line)
        if fence and language is None:
            language, start, block = fence.group(2) or "", number, []
        elif fence:
            if language == "python":
                for node in ast.walk(ast.parse("\n".join(block))):
                    if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lathadapter"):
                        found += [(start + node.lineno, f"{node.module}.{a.name}") for a in node.names]
                    elif isinstance(node, ast.Import):
                        found += [(start + node.lineno, a.name) for a in node.names
                                  if a.name.startswith("lathadapter")]
            language = None
        elif language is not None:
            block.append(line)
    return found


def path_problems(span: str, root: Path) -> list[str]:
    """A repository path of `span` that names no file (or no test function after `::`), or no folder (a span that is
    a path ending in `/`)."""
    problems = []
    for path, test in PATH.findall(span):
        if PLACEHOLDER.search(path):
            continue
        if not (root / path).is_file():
            problems.append(f"no file {path}")
        elif test and not re.search(rf"^def {test}\(", (root / path).read_text(), flags=re.M):
            problems.append(f"no test {test} in {path}")
    if FOLDER.fullmatch(span) and not PLACEHOLDER.search(span) and not (root / span).is_dir():
        problems.append(f"no folder {span}")
    return problems


def dotted_names(span: str) -> list[str]:
    """The dotted names of a span that is no command (`Execution.parse(...)` gives `Execution.parse`)."""
    if span.startswith(COMMANDS):
        return []
    return DOTTED.findall(span)


def owned_problems(line: str, root: Path, package: Package) -> list[str]:
    """Each `file.py`'s `NAME` of a line whose file is in the repository and does not define NAME."""
    problems = []
    for owner, name in OWNED.findall(line):
        if "/" in owner:
            paths = [root / owner] if owner.startswith(TOP_FOLDERS) else []
        else:
            paths = [path for path in package.files.values() if path.name == owner]
        if paths and not any(file_defines(package, path, name) for path in paths):
            problems.append(f"`{owner}`'s `{name}`: not defined there")
    return problems


def unresolved(document: Path, package: Package, root: Path = ROOT) -> list[str]:
    """`file:line: what` for each name that `document` cites and that names nothing, in line order."""
    text = document.read_text()
    problems = []
    for number, _, span in spans(text):
        if span in NOT_CODE:
            continue
        where = f"{document.name}:{number}: `{span}`"
        problems += [f"{where}: {problem}" for problem in path_problems(span, root)]
        problems += [f"{where}: {name} names nothing" for name in dotted_names(span)
                     if is_code_name(package, name) and not resolves(package, name)]
    for number, line in {(number, line) for number, line, _ in spans(text)}:
        problems += [f"{document.name}:{number}: {problem}" for problem in owned_problems(line, root, package)]
    for number, name in python_imports(text):
        if not resolves(package, name):
            problems.append(f"{document.name}:{number}: import {name} names nothing")
    return sorted(set(problems), key=lambda p: (int(p.split(":")[1]), p))


FRAGMENT_PACKAGE = {
    "__init__.py": '__all__ = ["fit"]\n\ndef __getattr__(name): ...\n',
    "adapter/__init__.py": "",
    "adapter/recipes.py": "from dataclasses import dataclass\n\nOPTIMIZER_READS = {}\n\n\n"
                          "def unread_options(): ...\n\n\n"
                          "@dataclass(frozen=True)\nclass TrainRecipe:\n    epochs: int = 1\n",
    "adapter/methods/__init__.py": "",
    "adapter/methods/base.py": "class Method:\n    stackable = False\n\n    def __init__(self):\n"
                               "        self.text_features = None\n\n    def unread(self, given): ...\n\n\n"
                               "class Prototype(Method):\n    pass\n",
    "tests/test_recipes.py": "def test_fill(): ...\n",
}


def fragment_problems(tmp_path: Path, fragment: str) -> list[str]:
    for name, source in FRAGMENT_PACKAGE.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(source)
    page = tmp_path / "page.md"
    page.write_text(fragment)
    return [problem.split(": ", 1)[1] for problem in unresolved(page, read_package(tmp_path), tmp_path)]


def test_right_names_pass(tmp_path: Path) -> None:
    fragment = ("`adapter/recipes.py`'s `OPTIMIZER_READS`, `recipes.unread_options()`, `Method.unread(given)`,\n"
                "`Prototype.stackable`, `Method.text_features`, `TrainRecipe.epochs`, `lathadapter.fit`,\n"
                "`lathadapter.adapter.recipes.TrainRecipe`, `tests/test_recipes.py::test_fill`, `adapter/methods/`\n\n"
                "```python\nfrom lathadapter.adapter.methods.base import Method\n```\n")
    assert fragment_problems(tmp_path, fragment) == []


def test_names_that_are_no_code_names_are_left_alone(tmp_path: Path) -> None:
    fragment = ("`lambda_hier=0` `--set recipes.epochs=2` `opt.lr` `tune.set` `recipes.py` `cache.h5` `1.5`\n"
                "`runs/<key>/config.json` `grids/hier/results.csv` `main.py` `utils.clip_classifier`\n"
                "`lathadapter fit --set lambda_hier=0.1` `python benchmarks/nothing.txt.gz` `benchmarks/.data/`\n")
    assert fragment_problems(tmp_path, fragment) == []


def test_a_misspelt_function_a_missing_file_and_a_missing_attribute_fail_named(tmp_path: Path) -> None:
    fragment = ("`recipes.unread_option`\n`adapter/recipe.py`\n`Method.unred`\n"
                "`adapter/recipes.py`'s `OPTIMIZER_READ`\n`tests/test_recipes.py::test_fil`\n\n"
                "```python\nfrom lathadapter.adapter.recipes import fill\n```\n")
    assert fragment_problems(tmp_path, fragment) == [
        "`recipes.unread_option`: recipes.unread_option names nothing",
        "`adapter/recipe.py`: no file adapter/recipe.py",
        "`Method.unred`: Method.unred names nothing",
        "`adapter/recipes.py`'s `OPTIMIZER_READ`: not defined there",
        "`tests/test_recipes.py::test_fil`: no test test_fil in tests/test_recipes.py",
        "import lathadapter.adapter.recipes.fill names nothing",
    ]


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_code_name_the_docs_cite_exists(document: Path) -> None:
    problems = unresolved(document, package())
    assert not problems, "\n".join(problems)
