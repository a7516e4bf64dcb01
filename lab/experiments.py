"""Find the experiments: the ``eNN_*.py`` files at the repository root, and their scenarios.

Adding an experiment is adding files (``eNN_name.py``, ``scenarios/eNN_name.py``,
``tests/test_eNN_name.py``); there is no list to keep in sync.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import sys
import tokenize
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Experiment:
    name: str  # the module name, e.g. "e02_error_handling"
    title: str  # the docstring's first line
    goal: str  # the docstring's "Goal:" line

    @property
    def number(self) -> str:
        return self.name.split("_", 1)[0]

    @property
    def short_title(self) -> str:
        """The title without its "Experiment NN: " prefix."""
        return self.title.split(": ", 1)[-1]

    @property
    def has_scenario(self) -> bool:
        return (ROOT / "scenarios" / f"{self.name}.py").exists()

    @cached_property  # `run` asks twice or more for one experiment; the file is read once
    def redis_only(self) -> str | None:
        """Why its scenario plays on Redis only (its ``REDIS_ONLY``), read without importing it; None if not."""
        tree = ast.parse((ROOT / "scenarios" / f"{self.name}.py").read_text(encoding="utf-8"))
        return next((ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
                     and [getattr(t, "id", None) for t in node.targets] == ["REDIS_ONLY"]), None)


def _docstring(path: Path) -> str | None:
    """A module's docstring, as ``ast.get_docstring`` gives it, from its first tokens only.

    Parsing the whole module took 19 ms for the 15 experiments, and the tests and ``status`` ask often;
    reading up to the first token takes 2 ms.
    """
    with path.open("rb") as file:
        for token in tokenize.tokenize(file.readline):
            if token.type in (tokenize.ENCODING, tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE):
                continue
            if token.type != tokenize.STRING or token.string.lstrip("rRbBuU")[:1] not in "'\"":
                return None  # code first, or an f-string: no docstring
            value = ast.literal_eval(token.string)
            return inspect.cleandoc(value) if isinstance(value, str) else None
    return None


def _read(path: Path) -> Experiment:
    """Title and goal from a module's docstring, without importing it (no broker needed)."""
    doc = _docstring(path) or path.stem
    lines = [line.strip() for line in doc.splitlines()]
    goal = next((line.removeprefix("Goal:").strip() for line in lines if line.startswith("Goal:")), "")
    return Experiment(path.stem, lines[0], goal)


def all_experiments() -> list[Experiment]:
    """Every experiment, in number order."""
    return [_read(path) for path in sorted(ROOT.glob("e[0-9][0-9]_*.py"))]


def find(key: str) -> Experiment:
    """The experiment named by its number (``e02``, ``02``, ``2``) or module name.

    Raises LookupError when none matches.
    """
    wanted = key.lower().removesuffix(".py")
    number = re.fullmatch(r"e?([0-9]+)", wanted)  # ASCII digits only: "²".isdigit() is true
    for experiment in all_experiments():
        if wanted == experiment.name or (number and int(number.group(1)) == int(experiment.number[1:])):
            return experiment
    known = ", ".join(e.number for e in all_experiments())
    raise LookupError(f"no experiment {key!r} (known: {known}, or all)")


def _import(name: str) -> ModuleType:
    """Import ``name`` fresh, so that its actors bind to the broker that is current now."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    if name in sys.modules:
        return importlib.reload(sys.modules[name])
    return importlib.import_module(name)


def load(experiment: Experiment) -> ModuleType:
    """Import the experiment's module fresh, so its actors bind to the current broker."""
    return _import(experiment.name)


def load_scenario(experiment: Experiment) -> ModuleType:
    """Import the experiment, then its scenario (``scenarios/<name>.py``), both fresh."""
    load(experiment)
    return _import(f"scenarios.{experiment.name}")
