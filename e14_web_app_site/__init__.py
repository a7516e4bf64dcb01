"""Experiment 14's Django project: what Django imports by name, so it cannot live in e14_web_app.py, and the
plumbing a reader of the experiment can skip.

- ``settings.py``: a process that calls ``django.setup()`` before anything of ours runs
  (``rundramatiq`` execs ``dramatiq django_dramatiq.setup ...``) finds its settings only
  through ``DJANGO_SETTINGS_MODULE``, a module name; ``settings.configure()`` in the
  experiment would not reach it. Importing this package points Django there, as a
  project's ``manage.py`` does.
- ``models.py``: a model belongs to an installed app and must be declared once. The
  experiment runs as ``__main__`` (``python e14_web_app.py runserver``) and is imported
  as ``e14_web_app`` (the urlconf, the worker), and a model declared in it twice is
  Django's RuntimeError "Conflicting models".
- ``tasks.py``: ``rundramatiq`` imports each installed app's ``tasks`` module; ours
  imports the experiment's actors.
- ``broker.py``: the broker django_dramatiq asks for when Django starts: the lab's.
- ``http.py``, ``signals.py``, ``commands.py``: the views' JSON helpers and the errors they answer
  with a 400, the signal a sign-up sends inside its transaction, and the experiment's commands
  (``migrate``, ``runserver``, ``rundramatiq``).

Imports go one way: e14_web_app imports this package's modules, and none of them imports it
but ``tasks.py``, which only ``rundramatiq``'s worker loads (by name, as Django loads the urlconf).
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "e14_web_app_site.settings")


def use_data_dir(directory: Path) -> None:
    """Point this process's two SQLite files at ``directory`` and create their tables (tests, ``lab run``).

    Django opens a connection per thread from one settings dict per database: changed here,
    it reaches every connection opened from now on.
    """
    from django.conf import settings
    from django.db import connections

    connections.close_all()
    directory.mkdir(parents=True, exist_ok=True)
    for alias in settings.DATABASES:
        settings.DATABASES[alias]["NAME"] = directory / f"{alias}.sqlite3"
    migrate()


def migrate() -> None:
    """Create the tables both databases lack (our app has no migrations: ``--run-syncdb``)."""
    from django.conf import settings
    from django.core.management import call_command

    for alias in settings.DATABASES:
        call_command("migrate", database=alias, run_syncdb=True, verbosity=0)


def empty() -> None:
    """Delete every row of both databases: a clean start for the next test or run."""
    from django.apps import apps
    from django.db import connections

    for alias in connections:
        for model in apps.get_models():
            model._base_manager.using(alias).all().delete()
