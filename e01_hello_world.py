"""Experiment 01: hello world

Goal: send a message to an actor, watch a worker thread run it, and see that an actor is still a function.

Run it, in two terminals (a Redis first: `redis-server` or `python -m lab serve`):

    dramatiq --watch . e01_hello_world          # the worker
    python e01_hello_world.py 5                 # the sender: enqueue count_to(5)
    python e01_hello_world.py 5 --direct        # no queue, no worker: just call it
"""

import logging
import sys

import lab

import click
import dramatiq

# Before any actor: the actors bind to the broker that is current when they are declared.
broker = lab.setup_broker()

MAX_N = 10_000  # count_to logs N lines: a bound keeps a typo from flooding the worker's log


@dramatiq.actor(queue_name="e01")
def count_to(n: int) -> None:
    """Log 0..n-1, each line saying which attempt and which thread printed it."""
    where = lab.describe_attempt()
    for i in range(n):
        count_to.logger.info("%d of %d (%s)", i, n, where)


@click.command(cls=lab.Command, epilog=lab.EXIT_CODES_HELP)
@click.argument("n", type=click.IntRange(0, MAX_N))
@click.option("--direct", is_flag=True, help="Call count_to(N) here as a plain function; send nothing.")
def main(n: int, direct: bool) -> None:
    """Enqueue count_to(N) for a worker to run (N: a whole number, 0 to 10000)."""
    if direct:
        logging.basicConfig(level=logging.INFO, format="[%(threadName)s] [%(name)s] %(message)s")
        count_to(n)  # an actor is callable like the function it decorates
        click.echo(f"count_to({n}) ran in this process; nothing was sent")
        return
    lab.confirm(count_to.send(n))  # send() returns a Message; exiting with it would exit 1


if __name__ == "__main__":
    sys.exit(main())
