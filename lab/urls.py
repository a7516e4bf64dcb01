"""Where Redis is: the lab's one setting, read in one place, checked, and safe to print."""

from __future__ import annotations

import os
import re
from urllib.parse import unquote, urlsplit

import redis

#: The only configuration: where Redis is.
URL_ENV = "DRAMATIQ_REDIS_URL"
DEFAULT_URL = "redis://localhost:6379/0"
#: This value gives an in-process fakeredis server instead of a network Redis.
MEMORY_URL = "memory://"

SCHEMES = ("redis", "rediss", "unix")

#: The general setting: the broker's URL. ``amqp://`` (or ``amqps://``) gives RabbitMQ, ``redis://``,
#: ``rediss://``, ``unix://`` or ``memory://`` give Redis. When it is set, it wins over ``DRAMATIQ_REDIS_URL``;
#: on RabbitMQ, ``DRAMATIQ_REDIS_URL`` then says where results and rate limiters live (:func:`redis_beside`).
BROKER_URL_ENV = "DRAMATIQ_BROKER_URL"
AMQP_SCHEMES = ("amqp", "amqps")

#: Not a setting for learners: ``python -m lab run`` sets it for the worker processes it
#: starts, so that they use the run's own namespace (its keys) on a shared Redis.
NAMESPACE_ENV = "LAB_NAMESPACE"
DEFAULT_NAMESPACE = "dramatiq"


class BadUrl(ValueError):
    """A Redis URL that cannot work, whatever is listening: the reason, without the password."""

    def __init__(self, reason: str, url: str) -> None:
        super().__init__(reason)
        self.url = url


def redis_url(default: str = DEFAULT_URL) -> str:
    """``$DRAMATIQ_REDIS_URL``, or ``default`` when it is unset or empty.

    Every command reads the URL through here. Senders, workers, ``status`` and
    ``purge`` default to a local Redis; ``python -m lab run`` passes
    ``MEMORY_URL``, because it runs everything in one process and needs no server.
    """
    return os.environ.get(URL_ENV) or default


def broker_url(default: str = DEFAULT_URL) -> str:
    """The broker's URL: ``$DRAMATIQ_BROKER_URL``, else ``$DRAMATIQ_REDIS_URL``, else ``default``.

    An empty variable counts as unset.
    """
    return os.environ.get(BROKER_URL_ENV) or os.environ.get(URL_ENV) or default


def is_amqp(url: str) -> bool:
    """Whether ``url`` is a RabbitMQ URL (``amqp://`` or ``amqps://``)."""
    return url.partition("://")[0].lower() in AMQP_SCHEMES


def redis_beside(url: str) -> str | None:
    """The Redis that keeps results and rate limits beside the broker at ``url``.

    On Redis it is the broker's own Redis: ``url``. On RabbitMQ, which has no
    backend for either, it is ``$DRAMATIQ_REDIS_URL`` when that is a Redis URL;
    None when there is none (an experiment that needs one says so and exits 2).
    """
    if not is_amqp(url):
        return url
    beside = os.environ.get(URL_ENV) or ""
    return beside if beside and not is_amqp(beside) else None


_in_use: str | None = None


def use_url(url: str) -> None:
    """Record the URL of the process's broker (lab/broker.py calls it), for error lines."""
    global _in_use
    _in_use = url


def current_url() -> str:
    """The URL of the process's broker, or the configured one before there is a broker."""
    return _in_use or broker_url()


def _split(url: str) -> tuple[str, str, str]:
    """(``scheme://``, netloc, rest) by hand, so that even a URL urllib refuses can be masked."""
    scheme, sep, after = url.partition("://")
    if not sep:
        return "", "", url
    netloc = re.match(r"[^/?#]*", after).group()
    return scheme + sep, netloc, after[len(netloc):]


#: The query arguments redis-py reads as credentials.
_QUERY_SECRETS = r"([?&](?:password|username)=)([^&#]*)"


def _passwords(url: str) -> list[str]:
    """Every password ``url`` carries, also percent-decoded: in the user part and in the query. A user name
    counts when no password follows it (``redis://secretpw@host``: likely a password in the wrong place);
    otherwise it is left, so that a user ``default`` does not blank that word out of every message."""
    _, netloc, rest = _split(url)
    userinfo, at, _ = netloc.rpartition("@")
    user, colon, password = userinfo.partition(":")
    found = [password if colon else user] if at else []
    found += re.findall(r"[?&]password=([^&#]*)", rest, flags=re.IGNORECASE)
    return [p for secret in found if secret for p in {secret, unquote(secret)}]


def mask_url(url: str) -> str:
    """``url`` with its whole user part masked, and the credentials of its query: safe to print. Never raises.

    A user name is masked too: ``redis://secretpw@host`` (a password where URL
    syntax puts a user name, a common slip) must not print the password. Each
    part that is there becomes ``***``, so the shape stays: ``redis://***@host``,
    ``redis://:***@host``, ``redis://***:***@host``.
    """
    scheme, netloc, rest = _split(url)
    userinfo, at, host = netloc.rpartition("@")
    if at:
        user, colon, password = userinfo.partition(":")
        netloc = f"{'***' if user else ''}{colon}{'***' if password else ''}@{host}"
    rest = re.sub(_QUERY_SECRETS, r"\1***", rest, flags=re.IGNORECASE)
    return scheme + netloc + rest


def user_without_password(url: str) -> bool:
    """Whether ``url`` has a user name and no password, ``redis://secretpw@host``: often a password misplaced."""
    _, netloc, _ = _split(url)
    userinfo, at, _ = netloc.rpartition("@")
    return bool(at and userinfo and ":" not in userinfo)


def redact(text: str, url: str) -> str:
    """``text`` with ``url`` masked and any password of ``url`` removed, wherever it appears."""
    text = text.replace(url, mask_url(url))
    for secret in sorted(_passwords(url), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def check_url(url: str) -> str:
    """``url`` if it can be a Redis URL; otherwise BadUrl saying why.

    Catches what redis-py would refuse later with a traceback (a port that is
    not a number, a broken IPv6 address) and what it would silently get wrong:
    a database that is not a number (``/abc``) becomes database 0 in redis-py.
    """
    if url == MEMORY_URL:
        return url
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- urllib checks the port only when it is read
    except ValueError as exc:
        raise BadUrl(redact(str(exc), url), url) from None
    if parts.scheme in AMQP_SCHEMES:
        return _check_amqp_url(url)
    if parts.scheme not in SCHEMES:
        raise BadUrl(f"it must start with redis://, rediss://, unix://, amqp:// or amqps:// (or be {MEMORY_URL})",
                     url)
    if parts.scheme != "unix" and not re.fullmatch(r"/?\d*", parts.path):
        raise BadUrl(f"the database {unquote(parts.path[1:])!r} is not a number (/0 to /15 on a default Redis)", url)
    try:
        redis.connection.parse_url(url)  # what else redis-py refuses: a query option, say
    except ValueError as exc:
        raise BadUrl(redact(str(exc), url), url) from None
    return url


def _check_amqp_url(url: str) -> str:
    """``url`` if pika can read it as a RabbitMQ URL; otherwise BadUrl saying why (a bad query option, say)."""
    import pika  # only the RabbitMQ side needs it

    if ";" in url:  # Dramatiq would read it as a list of servers; the lab's messages name one
        raise BadUrl("give one RabbitMQ URL, not a list separated by ';'", url)
    if user_without_password(url):  # pika would fail on it with a TypeError of its own
        raise BadUrl("it has a user name and no password: amqp://USER:PASSWORD@HOST:PORT/VHOST", url)
    try:
        pika.URLParameters(url)
    except (ValueError, TypeError) as exc:
        raise BadUrl(redact(str(exc), url), url) from None
    return url
