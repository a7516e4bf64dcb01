"""A vhost of a run's own on RabbitMQ: the twin of the namespace a run uses on Redis.

On Redis, ``python -m lab run`` keeps its keys under ``lab-run-XXXXXXXX`` and deletes them after, so a
worker in another terminal never takes the run's messages, and what an earlier run left never reaches
this one. RabbitMQ's queue names have no prefix to add, but a vhost is a separate set of queues: the
run makes one through the management API, plays there, and deletes it, queues and all. Making a vhost
takes an administrator (``guest`` is one on ``python -m lab rabbitmq``'s server); where the API does
not answer or refuses, the run says so in one line and uses the URL's own vhost.
"""

from __future__ import annotations

import urllib.error
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import unquote, urlsplit, urlunsplit

from .rabbit_status import management_url
from .rabbitmq import management, quote_vhost


@contextmanager
def run_vhost(url: str, name: str) -> Iterator[tuple[str, str | None]]:
    """``(url of the new vhost name, None)`` while the run plays, deleted after; or ``(url, why not)``."""
    base, user = management_url(url), unquote(urlsplit(url).username or "guest")
    try:
        management(base, "PUT", f"/api/vhosts/{quote_vhost(name)}")
        management(base, "PUT", f"/api/permissions/{quote_vhost(name)}/{quote_vhost(user)}",
                   {"configure": ".*", "write": ".*", "read": ".*"})
    except urllib.error.HTTPError as exc:
        yield url, f"the management API refused to make a vhost (HTTP {exc.code})"
        return
    except (urllib.error.URLError, OSError) as exc:
        yield url, f"no management API answered ({getattr(exc, 'reason', exc)})"
        return
    try:
        yield urlunsplit(urlsplit(url)._replace(path="/" + quote_vhost(name))), None
    finally:
        try:
            management(base, "DELETE", f"/api/vhosts/{quote_vhost(name)}")
        except (urllib.error.URLError, OSError):
            pass  # the server went away: the run's own line says so
