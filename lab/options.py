"""Command-line options and argument types that several commands share."""

from __future__ import annotations

import math
from typing import Any

import click

from .urls import BROKER_URL_ENV, URL_ENV, broker_url

#: The longest delay the lab lets you send: RedisBroker.enqueue documents "less than 7 days".
MAX_DELAY_MS = 7 * 24 * 3600 * 1000


def redis_option(default: str) -> Any:
    """``--broker URL`` (or ``--redis URL``, its older name), defaulting to ``$DRAMATIQ_BROKER_URL``, then to
    ``$DRAMATIQ_REDIS_URL``, then to ``default``."""
    return click.option(
        "--broker", "--redis", "url", default=lambda: broker_url(default), metavar="URL",
        show_default=f"${BROKER_URL_ENV}, else ${URL_ENV}, else {default}",
        help="The broker to use: redis://... (or memory://) for Redis, amqp://... for RabbitMQ.",
    )


class Milliseconds(click.IntRange):
    """Whole milliseconds, 0 to ``maximum`` (7 days unless told), with a message that says the unit."""

    name = "integer"

    def __init__(self, maximum: int = MAX_DELAY_MS) -> None:
        super().__init__(0, maximum)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        try:
            return super().convert(value, param, ctx)
        except click.BadParameter as exc:
            self.fail(f"{exc.message} A delay is whole milliseconds from now, 0 to {self.max} "
                      f"({self.max / 86_400_000:g} days at most).", param, ctx)


class Seconds(click.FloatRange):
    """Seconds, ``low`` to ``high``: a finite number. (click's FloatRange lets ``nan`` through every bound,
    and time.sleep refuses it with a traceback; ``inf`` overflows time.sleep.)"""

    def __init__(self, low: float, high: float) -> None:
        super().__init__(low, high)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        seconds = super().convert(value, param, ctx)
        if not math.isfinite(seconds):
            self.fail(f"{value!r} is not a number of seconds from {self.min:g} to {self.max:g}.", param, ctx)
        return seconds
