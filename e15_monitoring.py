"""Experiment 15: monitoring with Prometheus

Goal: turn on Dramatiq's Prometheus middleware, send a known mix, and check what each metric counted.

It is not on by default in Dramatiq 2.x: install `dramatiq[prometheus]` (prometheus-client, pinned in
requirements.txt) and add `dramatiq.middleware.prometheus.Prometheus` to the broker, as below. Under the
`dramatiq` CLI only, and this module as its first module (the one it takes the broker from).

Run it, in two terminals (a Redis first: `redis-server` or `python -m lab serve`; on RabbitMQ, DRAMATIQ_BROKER_URL,
and DRAMATIQ_REDIS_URL for hold's gate). The exposition server reads where to listen, and where the worker
processes keep their counts, from the `dramatiq` command's environment; unset, it listens on 0.0.0.0 (every
interface) on port 9191, and keeps them in /tmp/dramatiq-prometheus for good:

    dramatiq_prom_host=127.0.0.1 dramatiq_prom_db=$(mktemp -d) dramatiq --processes 2 e15_monitoring
    python e15_monitoring.py mix        # 3 that succeed, 1 that fails twice more, 2 delayed, 1 too old to run
    python e15_monitoring.py scrape     # GET http://127.0.0.1:9191/metrics: what each metric counted
    python e15_monitoring.py hold       # one message that runs until `release`: in progress meanwhile
    python e15_monitoring.py release
"""

import sys
import urllib.error
import urllib.request

import lab

import click
import dramatiq

# Checked before Dramatiq's module reads it with int() at import: a bad port is one line and exit 2.
PORT = lab.settings.whole_number("dramatiq_prom_port", 1, 65_535) or 9191

from dramatiq.middleware.prometheus import Prometheus  # noqa: E402 (after the check above)

broker = lab.setup_broker()
broker.add_middleware(Prometheus())  # not among Dramatiq 2's default middleware

QUEUE = "e15"
DELAY_MS = 300


def key(name: str, on=None) -> str:
    """One of e15's own keys, ``<namespace>-e15:<name>``, apart from the queues' keys."""
    return f"{(on or broker).namespace}-e15:{name}"


@dramatiq.actor(queue_name=QUEUE)
def succeed() -> None:
    succeed.logger.info("done (%s)", lab.describe_attempt())


@dramatiq.actor(queue_name=QUEUE, max_retries=2, min_backoff=100, max_backoff=200)
def fail() -> None:
    """Raises every time: 3 attempts (2 retries, each through e15.DQ), then the dead letters."""
    raise ValueError(f"fails every time ({lab.describe_attempt()})")


@dramatiq.actor(queue_name=QUEUE)
def later() -> None:
    """Sent with a delay: it waits on e15.DQ, in a worker's memory, until its eta."""
    later.logger.info("ran after its delay (%s)", lab.describe_attempt())


@dramatiq.actor(queue_name=QUEUE, max_age=1)
def expire() -> None:
    """max_age=1 ms: always older than that when a worker gets it, so AgeLimit skips it into the dead letters."""
    expire.logger.info("never runs")


@dramatiq.actor(queue_name=QUEUE)
def hold(timeout_s: int = 60) -> None:
    """Runs until someone pushes to e15's gate (or ``timeout_s``): a message in progress, for as long as we like."""
    released = broker.client.blpop([key("gate")], timeout=timeout_s)
    hold.logger.info("released" if released else "gave up waiting")


def send_mix(on=None) -> dict[str, int]:
    """The known mix, on ``on`` (this module's broker unless told); how many of each were sent."""
    on = on or broker
    sent = [succeed.message(), succeed.message(), succeed.message(), fail.message(), expire.message()]
    for message in sent:
        on.enqueue(message)
    for _ in range(2):
        on.enqueue(later.message(), delay=DELAY_MS)
    return {"succeed": 3, "fail": 1, "later": 2, "expire": 1}


def scrape(url: str, timeout: float = 5) -> list[tuple[str, dict[str, str], float]]:
    """The samples of ``url``'s exposition, parsed with prometheus_client's own parser: (name, labels, value).

    Raises OSError (URLError) when nothing answers there.
    """
    from prometheus_client.parser import text_string_to_metric_families  # here: a sender may never need it

    with urllib.request.urlopen(url, timeout=timeout) as response:
        text = response.read().decode()
    return [(s.name, s.labels, s.value) for family in text_string_to_metric_families(text) for s in family.samples]


def total(samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels`` (over every pid, say)."""
    return sum(value for n, have, value in samples if n == name and labels.items() <= have.items())


@click.group(cls=lab.Group, epilog=lab.EXIT_CODES_HELP)
def main() -> None:
    """Send e15's messages, and read what the worker's exposition server counted."""


@main.command("mix")
def mix_command() -> None:
    """Send the known mix: 3 succeed, 1 fail, 2 later (delayed 300 ms), 1 expire."""
    sent = send_mix()
    click.echo("sent " + ", ".join(f"{n} x {name}" for name, n in sent.items()) + f"  queue={QUEUE}")


@main.command("hold")
@click.option("--timeout", type=click.IntRange(1, 3600), default=60, show_default=True, metavar="S",
              help="Give up waiting after this many seconds.")
def hold_command(timeout: int) -> None:
    """Send one message that runs until `release`."""
    lab.confirm(hold.send(timeout))


@main.command("release")
def release_command() -> None:
    """Let one held message finish."""
    broker.client.rpush(key("gate"), "go")
    click.echo("released one hold")


@main.command("scrape")
@click.option("--url", default=f"http://127.0.0.1:{PORT}/metrics", show_default=True,
              help="The exposition server (dramatiq_prom_port sets the default's port).")
def scrape_command(url: str) -> None:
    """Print every dramatiq_* sample the worker's exposition server serves."""
    try:
        samples = scrape(url)
    except (OSError, ValueError) as exc:  # URLError is an OSError; a bad URL a ValueError
        reason = getattr(exc, "reason", exc)
        raise lab.Failure(f"nothing answers at {url} ({reason}): is a worker running with "
                          "dramatiq_prom_host/dramatiq_prom_port set to it?", lab.EXIT_UNREACHABLE) from None
    for name, labels, value in samples:
        if name.startswith("dramatiq_"):
            where = " ".join(f"{k}={v}" for k, v in sorted(labels.items()))
            click.echo(f"{name:<46} {where:<50} {value:g}")


if __name__ == "__main__":
    sys.exit(main())
