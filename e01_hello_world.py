"""Experiment 01: hello world

Goal: send a message to an actor, watch a worker thread run it, and see that an actor is still a function.

Run it, in two terminals (a Redis first: `redis-server` or `python -m lab serve`):

    dramatiq --watch . e01_hello_world          # the worker
    python e01_hello_world.py 5                 # the sender: enqueue count_to(5)
    python e01_hello_world.py 5 --direct        # no queue, no worker: just call it
"""

import logging
import sys

import click
import dramatiq

import lab

# Before any actor: the actors bind to the broker that is current when they are declared.
broker = lab.setup_broker()


@dramatiq.actor(queue_name="e01")
def count_to(n: int) -> None:
    """Log 0..n-1, each line saying which attempt and which thread printed it."""
    where = lab.describe_attempt()
    for i in range(n):
        count_to.logger.info("%d of %d (%s)", i, n, where)


def scenario(run: lab.Run) -> None:
    """`python -m lab run e01`: two messages through the worker, one direct call."""
    run.start_worker(threads=2)
    sent = [count_to.send(3), count_to.send(2)]
    settled = run.settle("e01", timeout=10)
    attempts = run.attempts("count_to")
    threads = sorted({a.thread for a in attempts})
    run.lesson(
        "send() only enqueues; a worker thread runs each message once",
        settled and len(attempts) == len(sent) and all(a.outcome == "ok" for a in attempts)
        and "MainThread" not in threads,
        f"{len(sent)} sent, {len(attempts)} attempts, on {', '.join(threads) or 'no thread'}",
    )
    enqueued, attempted = len(run.enqueues()), len(run.attempts())
    count_to(2)  # a plain call: if it had gone through the broker, the recorder would have seen it
    run.lesson(
        "An actor is still a function: calling it runs it in the caller, with no message and no worker",
        len(run.enqueues()) == enqueued and len(run.attempts()) == attempted,
        f"count_to(2) returned; messages it enqueued: {len(run.enqueues()) - enqueued}, "
        f"worker attempts: {len(run.attempts()) - attempted}",
    )


@click.command(cls=lab.Command, epilog=lab.EXIT_CODES_HELP)
@click.argument("n", type=click.IntRange(min=0))
@click.option("--direct", is_flag=True, help="Call count_to(N) here as a plain function; send nothing.")
def main(n: int, direct: bool) -> None:
    """Enqueue count_to(N) for a worker to run (N: a whole number >= 0)."""
    if direct:
        logging.basicConfig(level=logging.INFO, format="[%(threadName)s] [%(name)s] %(message)s")
        count_to(n)  # an actor is callable like the function it decorates
        click.echo(f"count_to({n}) ran in this process; nothing was sent")
        return
    lab.confirm(count_to.send(n))  # send() returns a Message; exiting with it would exit 1


if __name__ == "__main__":
    sys.exit(main())
