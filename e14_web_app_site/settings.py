"""Experiment 14's Django settings (``DJANGO_SETTINGS_MODULE=e14_web_app_site.settings``)."""

import getpass
import os
import tempfile
from pathlib import Path

# Out of the checkout: a run leaves the repository clean, and `dramatiq --watch .` never reloads on a write.
DATA_DIR = Path(os.environ.get("E14_DATA_DIR") or Path(tempfile.gettempdir()) / f"lab-e14-{getpass.getuser()}")
DATA_DIR.mkdir(parents=True, exist_ok=True)

SECRET_KEY = "e14-lab-not-a-secret"  # Django wants one; nothing here is signed or logged in
DEBUG = False  # so an error is a 500 page, never a traceback; the views answer bad input with 400 themselves
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "e14_web_app"
INSTALLED_APPS = ["django_dramatiq", "e14_web_app_site"]
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"

# SQLite allows one writer at a time. WAL lets readers read while a transaction is open (they see what was
# committed, no more); IMMEDIATE takes the write lock at BEGIN, so two writers queue instead of deadlocking.
SQLITE = {"init_command": "PRAGMA journal_mode=WAL;", "transaction_mode": "IMMEDIATE", "timeout": 20}
DATABASES = {
    "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": DATA_DIR / "default.sqlite3", "OPTIONS": SQLITE},
    # django_dramatiq's Task table in a file of its own: the worker's bookkeeping (a row per message) never
    # waits for a request's open transaction. PostgreSQL would not need it: it has row locks.
    "tasks": {"ENGINE": "django.db.backends.sqlite3", "NAME": DATA_DIR / "tasks.sqlite3", "OPTIONS": SQLITE},
}
DRAMATIQ_TASKS_DATABASE = "tasks"

# django_dramatiq builds the broker from this when Django starts (its AppConfig). BROKER is called with the
# middleware: ours returns the lab's broker (DRAMATIQ_REDIS_URL) with them added.
DRAMATIQ_BROKER = {
    "BROKER": "e14_web_app_site.broker.lab_broker",
    "MIDDLEWARE": [
        "django_dramatiq.middleware.AdminMiddleware",  # a Task row per message: enqueued, running, done, failed
        "django_dramatiq.middleware.DbConnectionsMiddleware",  # closes a thread's connections around each message
    ],
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"django.server": {"handlers": ["console"], "level": "INFO", "propagate": False}},
}
