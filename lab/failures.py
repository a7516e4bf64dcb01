"""Expected failures: one line on stderr, a documented exit code, never a traceback.

Every entry point of the lab (the senders, ``python -m lab``, a worker's boot)
turns an expected failure into a :class:`Failure` through :func:`explain`, and
the click classes :class:`Command` and :class:`Group` print it. Unexpected
errors still show their traceback: those are bugs.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any
from urllib.parse import unquote, urlsplit

import click
import redis
from dramatiq.errors import BrokerConnectionError

from .urls import BROKER_URL_ENV, URL_ENV, BadUrl, current_url, is_amqp, mask_url, redact, user_without_password

EXIT_FAILED = 1  # a lesson did not hold; what a sender waited for failed; purge declined
EXIT_USAGE = 2  # bad arguments or a bad Redis URL (click's usage error is 2 too)
EXIT_UNREACHABLE = 3  # no working Redis at the URL (the dramatiq CLI uses 3 for the same)
EXIT_TIMEOUT = 4  # nothing came back in time (e04 --timeout); serve cannot listen on its port
EXIT_AUTH = 5  # Redis refused the password, or wants one
EXIT_INTERRUPTED = 130  # Ctrl-C: the shell's convention, 128 + SIGINT

EXIT_CODES_HELP = (
    "Exit codes: 0 done, 2 bad arguments or URL, 3 Redis (or RabbitMQ) unreachable, "
    "5 the password was refused, 130 Ctrl-C."
)

#: What redis-py raises when there is no working Redis at the URL: nothing listens,
#: nothing answers in time, or something that is not Redis answers (an HTTP port, say).
UNREACHABLE = (redis.ConnectionError, redis.TimeoutError, redis.exceptions.InvalidResponse)


class Failure(Exception):
    """An expected failure: the line to print and the exit code."""

    def __init__(self, line: str, exit_code: int) -> None:
        super().__init__(line)
        self.line = line
        self.exit_code = exit_code


def how_to_get_redis(url: str) -> str:
    """One line: which Redis (or RabbitMQ, for an ``amqp://`` URL) could not be reached, and how to get one."""
    if is_amqp(url):
        return how_to_get_rabbitmq(url)
    return (
        f"cannot reach Redis at {mask_url(url)}. Start one with `redis-server` "
        f"(or `python -m lab serve` for the embedded one), or set {URL_ENV} to yours."
    )


def how_to_get_rabbitmq(url: str, why: str = "") -> str:
    """One line: which RabbitMQ could not be reached (and why, if known), and how to get one."""
    return (
        f"cannot reach RabbitMQ at {mask_url(url)}{f' ({why})' if why else ''}. Start one with "
        f"`rabbitmq-server` (apt-get install rabbitmq-server), or set {BROKER_URL_ENV} to yours."
    )


def _explain_rabbitmq(exc: BaseException, url: str) -> Failure | None:
    """The Failure that pika's ``exc`` (or Dramatiq's ConnectionClosed around it) means for the RabbitMQ at ``url``."""
    import pika.exceptions as pe  # loaded already: a pika error is at hand
    from pika.adapters.utils.connection_workflow import AMQPConnectorException

    where = mask_url(url)
    if isinstance(exc, pe.ProbableAuthenticationError | pe.AuthenticationError):
        return Failure(f"RabbitMQ at {where} refused the user or password in the URL "
                       "(amqp://USER:PASSWORD@HOST:PORT/VHOST; user guest may log in from localhost only).", EXIT_AUTH)
    if isinstance(exc, pe.ProbableAccessDeniedError) or "NOT_ALLOWED - vhost" in str(exc):
        vhost = unquote(urlsplit(url).path[1:]) or "/"
        return Failure(f"RabbitMQ at {where} has no vhost {vhost!r}, or the user may not use it "
                       "(the URL's path is the vhost: /%2F for the default one, /).", EXIT_USAGE)
    if isinstance(exc, pe.StreamLostError | pe.ConnectionClosed | pe.ChannelWrongStateError):
        return Failure(how_to_get_rabbitmq(url, "the connection was lost"), EXIT_UNREACHABLE)
    if isinstance(exc, AMQPConnectorException | pe.IncompatibleProtocolError):
        return Failure(how_to_get_rabbitmq(url, "nothing answered in AMQP"), EXIT_UNREACHABLE)
    if isinstance(exc, pe.AMQPConnectionError):
        return Failure(how_to_get_rabbitmq(url), EXIT_UNREACHABLE)
    return None


def explain(exc: BaseException, url: str) -> Failure | None:
    """The Failure that ``exc`` means for the broker at ``url``; None if it is not one we expect.

    Order matters: redis-py's AuthenticationError is a kind of ConnectionError.
    """
    where = mask_url(url)
    if isinstance(exc, Failure):
        return exc
    if isinstance(exc, BadUrl) and is_amqp(exc.url):
        return Failure(f"{mask_url(exc.url)!r} is not a valid RabbitMQ URL ({BROKER_URL_ENV} or --broker): {exc}",
                       EXIT_USAGE)
    if isinstance(exc, BrokerConnectionError) and isinstance(exc.message, BaseException):
        return explain(exc.message, url)  # Dramatiq's ConnectionClosed around pika's error
    if type(exc).__module__.startswith("pika."):
        return _explain_rabbitmq(exc, url)
    if isinstance(exc, BadUrl):
        return Failure(f"{mask_url(exc.url)!r} is not a valid Redis URL ({URL_ENV} or --redis): {exc}", EXIT_USAGE)
    if isinstance(exc, redis.AuthenticationError):
        wants = "wants a password: put it in the URL, redis://:PASSWORD@host:port/0" \
            if "must be called with the client already authenticated" in str(exc) or "NOAUTH" in str(exc) \
            else "refused the user name in the URL, which has no password (a password alone goes after a colon: " \
            "redis://:PASSWORD@host:port/0)" if user_without_password(url) \
            else "refused the password (or user) in the URL"
        return Failure(f"Redis at {where} {wants}.", EXIT_AUTH)
    if isinstance(exc, redis.ResponseError) and "DB index is out of range" in str(exc):
        return Failure(f"Redis at {where} has no such database: it has 16 (0 to 15) unless its "
                       "`databases` setting says otherwise.", EXIT_USAGE)
    if isinstance(exc, UNREACHABLE):
        return Failure(how_to_get_redis(url), EXIT_UNREACHABLE)
    return None


def _usage_line(exc: click.UsageError) -> str:
    line = " ".join(exc.format_message().split())  # one line, even for click's "Choose from:" lists
    # A value of 5,000 digits stays one readable line: its start and its length.
    line = re.sub(r"'([^'\s]{40,})'", lambda m: f"'{m[1][:12]}...' ({len(m[1])} characters)", line)
    if not line.endswith((".", "!", "?")):
        line += "."
    if exc.ctx is not None:
        line += f" See '{exc.ctx.command_path} --help'."
    return line


class _OneLineFailures:
    """Runs a click command so that every expected failure is one line and its exit code.

    Usage errors (exit 2) are one line too, instead of click's usage block.
    Ctrl-C exits 130 instead of click's "Aborted!" and 1.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        # click reads "-5" as an unknown option ("No such option: -5"); let it reach the
        # argument's type instead, which says what range is allowed.
        if any(re.fullmatch(r"-\d+(\.\d*)?", arg) for arg in args):
            ctx.ignore_unknown_options = True
        return super().parse_args(ctx, args)

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        prog = prog_name or os.path.basename(sys.argv[0])
        try:
            code = super().main(args, prog, complete_var, False, **extra)
            sys.exit(code if isinstance(code, int) else 0)
        except click.exceptions.NoArgsIsHelpError as exc:  # a group run with no command: its help
            exc.show()
            sys.exit(exc.exit_code)
        except click.UsageError as exc:
            failure = Failure(_usage_line(exc), exc.exit_code)
        except click.Abort as exc:
            # click raises Abort "from" the KeyboardInterrupt, or "from None" at a prompt (click.confirm)
            if isinstance(exc.__cause__ or exc.__context__, KeyboardInterrupt):
                failure = Failure("interrupted (Ctrl-C)", EXIT_INTERRUPTED)
            else:
                failure = Failure("aborted", EXIT_FAILED)  # a confirmation answered no
        except click.ClickException as exc:
            failure = Failure(exc.format_message(), exc.exit_code)
        except Exception as exc:  # noqa: BLE001 -- what explain() does not expect is raised again, as it was
            failure = explain(exc, current_url())
            if failure is None:
                raise
        url = current_url()
        click.echo(f"{prog}: {redact(failure.line, url)}", err=True)
        sys.exit(failure.exit_code)


class Command(_OneLineFailures, click.Command):
    """A click command whose expected failures are one line and a documented exit code."""


class Group(_OneLineFailures, click.Group):
    """A click group whose expected failures, and its commands', are one line and an exit code."""

    command_class = Command
