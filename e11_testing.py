"""Experiment 11: testing your own actors

Goal: test actors the way Dramatiq does: a StubBroker and a Worker in fixtures, join with a timeout, direct calls.

This file plays "your actors"; tests/test_e11_testing.py plays "your test suite": its tests are the examples.

Run it:

    python e11_testing.py demo                  # run the example tests with pytest, no Redis needed
    python e11_testing.py demo -k direct        # only the tests whose name matches "direct"
    dramatiq --watch . e11_testing              # terminal 1, with a Redis: the worker
    python e11_testing.py receipt 3             # terminal 2: a receipt for 3 of product 1
    python e11_testing.py remind ada@example.com --in 60000   # a reminder in 60 s: prints its eta
"""

import shlex
import subprocess
import sys
from pathlib import Path

import lab

import click
import dramatiq
from dramatiq.common import current_millis

broker = lab.setup_broker()

QUEUE = "e11"
DAY_MS = 24 * 3600 * 1000
PRICES = {1: 250, 2: 1000, 3: 499}  # cents, by product id
OUTBOX: list[str] = []  # stands in for the outside world (an e-mail API): the tests read it


@dramatiq.actor(queue_name=QUEUE, max_retries=3, min_backoff=100, max_backoff=1000)
def send_receipt(email: str, quantities: dict) -> None:
    """Total an order (product id -> quantity) and 'e-mail' its receipt: append it to OUTBOX."""
    # int(): a message travels as JSON, where keys are strings. {1: 2} arrives as {"1": 2}, and
    # only a test that goes through send() and a worker sees it (test_json_turns_int_keys_into_strings...).
    cents = sum(PRICES[int(product)] * count for product, count in quantities.items())
    line = f"to {email}: {sum(quantities.values())} item(s), {cents / 100:.2f} EUR"
    OUTBOX.append(line)
    send_receipt.logger.info("sent %s", line)


@dramatiq.actor(queue_name=QUEUE)
def remind(email: str) -> None:
    """Remind a customer. Declared with Dramatiq's default retries, as most actors are: 20, from 15 s."""
    if "@" not in email:
        raise ValueError(f"not an e-mail address: {email!r}")
    OUTBOX.append(f"reminder to {email}")
    remind.logger.info("reminded %s", email)


def remind_later(email: str, delay_ms: int = DAY_MS) -> dramatiq.Message:
    """What your web code would call. Returns the message as the broker stored it: on e11.DQ, with its eta."""
    return remind.send_with_options(args=(email,), delay=delay_ms)


@click.group(cls=lab.Group, epilog="Exit codes: 0 done (demo: every test passed), 1 demo: a test failed, "
             "2 bad arguments or URL (demo: no test matched -k), 3 Redis unreachable, 4 demo: pytest took "
             "over 120 s, 5 Redis refused the password, 130 Ctrl-C.")
def main() -> None:
    """Run e11's example tests, or send its messages to a worker."""


@main.command()
@click.option("-k", "keyword", metavar="EXPR", help="Only the tests whose name matches EXPR (pytest's -k).")
def demo(keyword: str | None) -> None:
    """Run tests/test_e11_testing.py with pytest (not its end-to-end tests) and show the result."""
    selection = "not demo" if keyword is None else f"({keyword}) and not demo"  # not the test that runs demo
    command = [sys.executable, "-m", "pytest", "tests/test_e11_testing.py", "-n", "0", "-q",
               "-p", "no:cacheprovider", "-m", "not e2e", "-k", selection]
    click.echo(shlex.join(command[2:]))
    with subprocess.Popen(command, cwd=Path(__file__).resolve().parent, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True) as pytest:
        for line in pytest.stdout:  # line by line: a test that hangs shows where
            click.echo(line, nl=False)
        try:
            code = pytest.wait(timeout=120)
        except subprocess.TimeoutExpired:
            pytest.kill()
            raise lab.Failure("pytest took over 120 s: a join without a timeout?", lab.EXIT_TIMEOUT) from None
    if code in (4, 5):  # pytest's codes: 4 it could not use the arguments, 5 no test was selected
        why = f"no test matched -k {keyword!r}" if code == 5 else "pytest refused the -k expression (above)"
        raise lab.Failure(why, lab.EXIT_USAGE)
    if code != 0:
        raise lab.Failure(f"pytest exited {code}: a test failed (its output is above)", lab.EXIT_FAILED)


@main.command()
@click.argument("count", type=click.IntRange(1, 100))
@click.option("--product", type=click.Choice([str(p) for p in PRICES]), default="1", show_default=True)
@click.option("--to", "email", default="ada@example.com", show_default=True)
def receipt(count: int, product: str, email: str) -> None:
    """Send a receipt for COUNT of one product (sent with an int key: {1: COUNT})."""
    lab.confirm(send_receipt.send(email, {int(product): count}))


@main.command("remind")
@click.argument("email")
@click.option("--in", "delay_ms", type=lab.Milliseconds(), default=DAY_MS, show_default=True, metavar="MS")
def remind_command(email: str, delay_ms: int) -> None:
    """Send a reminder to EMAIL in MS milliseconds; print when it is due (its eta)."""
    message = remind_later(email, delay_ms)
    lab.confirm(message)
    eta = message.options["eta"]
    click.echo(f"eta={eta} (epoch ms, in {max(0, eta - current_millis())} ms): a worker runs it then, not before")


if __name__ == "__main__":
    sys.exit(main())
