"""Find the experiments: the ``eNN_*.py`` files at the repository root.

Adding an experiment is adding a file; there is no second list to keep in sync.
"""

from __future__ import annotations

import ast
import importlib
import sys
from dataclasses import dataclass
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


def _read(path: Path) -> Experiment:
    """Title and goal from a module's docstring, without importing it (no broker needed)."""
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or path.stem
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
    for experiment in all_experiments():
        number = experiment.number
        if wanted in (experiment.name, number) or (wanted.isdigit() and int(wanted) == int(number[1:])):
            return experiment
    known = ", ".join(e.number for e in all_experiments())
    raise LookupError(f"no experiment {key!r} (known: {known})")


def load(experiment: Experiment) -> ModuleType:
    """Import the experiment's module fresh, so its actors bind to the current broker."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    if experiment.name in sys.modules:
        return importlib.reload(sys.modules[experiment.name])
    return importlib.import_module(experiment.name)
