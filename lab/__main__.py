"""``python -m lab``: see lab/cli.py."""

from .cli import cli

cli(prog_name="python -m lab")
