"""Experiment 04: pipelines, groups and results

Goal: pass results along a pipeline, fan out a group with a completion callback, and fetch results.

Run it, in two terminals (a Redis first: `redis-server` or `python -m lab serve`):

    dramatiq --watch . e04_pipelines            # the worker
    python e04_pipelines.py pipeline 3          # add(3, 1) | double() | power(2): 4, 8, 256
    python e04_pipelines.py group 10            # square(1) .. square(10) at once, then group_done(10)
    python e04_pipelines.py group 10 --fail 4   # square(4) fails for good: group_done never runs
"""

import sys
import time
from collections.abc import Callable

import lab

import click
import dramatiq
from dramatiq.results import ResultFailure

broker = lab.setup_broker()

QUEUE = "e04"
EXIT_CODES = ("Exit codes: 0 done (or sent, with --no-wait), 1 a step or member failed for good, "
              "2 bad arguments or URL, 3 Redis unreachable, 4 no result within --timeout, "
              "5 Redis refused the password, 130 Ctrl-C (what was sent stays queued).")


# store_results=True: the Results middleware (lab/broker.py) keeps each return value in Redis for 10 minutes.
@dramatiq.actor(queue_name=QUEUE, store_results=True)
def add(x: int, y: int) -> int:
    """x + y. As a pipeline step, the previous step's result arrives as the last argument, y."""
    add.logger.info("add(%d, %d)", x, y)
    return x + y


@dramatiq.actor(queue_name=QUEUE, store_results=True)
def double(x: int) -> int:
    double.logger.info("double(%d)", x)
    return 2 * x


@dramatiq.actor(queue_name=QUEUE, store_results=True)
def power(base: int, exponent: int) -> int:
    """base ** exponent. power.message(2) as the step after 8 runs power(2, 8): the result comes last."""
    power.logger.info("power(%d, %d)", base, exponent)
    return base**exponent


@dramatiq.actor(queue_name=QUEUE, store_results=True, pipe_ignore=True)
def stamp(*args: object) -> str:
    """Declared pipe_ignore=True, it still *receives* the previous result: Dramatiq reads pipe_ignore
    from the actor that sent the result. So its own result is the one not passed on."""
    stamp.logger.info("stamp%r", args)
    return f"stamp{args!r}"


@dramatiq.actor(queue_name=QUEUE, store_results=True)
def square(n: int, fail: bool = False) -> int:
    """n * n, or a ValueError when told to fail (send that message with max_retries=0)."""
    square.logger.info("square(%d)%s", n, " told to fail" if fail else "")
    if fail:
        raise ValueError(f"square({n}) was told to fail")
    return n * n


@dramatiq.actor(queue_name=QUEUE, store_results=True)
def group_done(size: int) -> str:
    """The completion callback. It gets only its own arguments, not the members' results."""
    group_done.logger.info("all %d members succeeded", size)
    return f"all {size} members succeeded"


@dramatiq.actor(queue_name=QUEUE, store_results=True, max_retries=0)
def wait_inside(n: int, timeout_ms: int) -> list[int]:
    """Don't do this: waiting on a group inside an actor holds a worker thread its members may need."""
    members = dramatiq.group(square.message(i) for i in range(1, n + 1)).run()
    return list(members.get_results(block=True, timeout=timeout_ms))


@click.group(cls=lab.Group, epilog=EXIT_CODES)
def main() -> None:
    """Send a pipeline or a group to e04's actors, then wait for and print the results."""


def waiting(command: Callable) -> Callable:
    """The options every sender command shares: --timeout and --no-wait."""
    command = click.option("--no-wait", is_flag=True, help="Only send; do not wait for results.")(command)
    return click.option("--timeout", type=click.IntRange(1, 3600), default=10, show_default=True,
                        metavar="SECONDS", help="How long to wait for the results.")(command)


@main.command("pipeline", epilog=EXIT_CODES)
@click.argument("n", type=click.IntRange(0, 10**6))
@waiting
def send_pipeline(n: int, timeout: int, no_wait: bool) -> None:
    """Pipe add(N, 1) into double() into power(2); print each step's result (N: 0 to 1000000)."""
    pipe = (add.message(n, 1) | double.message() | power.message(2)).run()
    click.echo(f"sent {pipe}  queue={QUEUE}")
    if no_wait:
        return
    deadline = time.monotonic() + timeout
    try:
        steps = [lab.wait_for_result(step, deadline) for step in pipe.messages]
    except ResultFailure as exc:
        raise lab.Failure(f"a step failed for good: {exc}", lab.EXIT_FAILED) from None
    click.echo(f"step results: {', '.join(map(str, steps))}; pipeline result: {pipe.get_result()}")


@main.command("group", epilog=EXIT_CODES)
@click.argument("n", type=click.IntRange(1, 1000))
@click.option("--fail", type=click.IntRange(min=1), metavar="K",
              help="Member K (1..N) raises, with max_retries=0: it fails for good.")
@waiting
def send_group(n: int, fail: int | None, timeout: int, no_wait: bool) -> None:
    """Run square(1) to square(N) in parallel, then the callback group_done(N) (N: 1 to 1000)."""
    if fail is not None and fail > n:
        raise click.BadParameter(f"{fail} is not a member of a group of {n}", param_hint="--fail")
    members = [square.message_with_options(args=(i,), kwargs={"fail": True}, max_retries=0) if i == fail
               else square.message(i) for i in range(1, n + 1)]
    callback = group_done.message(n)
    fan_out = dramatiq.group(members)
    fan_out.add_completion_callback(callback)  # needs the GroupCallbacks middleware (lab/broker.py)
    fan_out.run()
    click.echo(f"sent a group of {n} square() messages, callback group_done({n})  queue={QUEUE}")
    if no_wait:
        return
    deadline, results, failed = time.monotonic() + timeout, [], []
    for i, member in enumerate(members, 1):  # one by one: fan_out.get_results() stops at the first failure
        try:
            results.append(lab.wait_for_result(member, deadline))
        except ResultFailure as exc:
            results.append(None)
            failed.append(f"member {i}, {member}, failed for good: {exc}")
    click.echo(f"results: {', '.join(map(str, results[:20]))}" + (f", ... ({n} in all)" if n > 20 else ""))
    if not failed:
        click.echo(f"completion callback: {lab.wait_for_result(callback, deadline)}")
        return
    raise lab.Failure("; ".join(failed) + "; the completion callback group_done never fired: a failed member "
                      "never counts down the group's barrier", lab.EXIT_FAILED)


if __name__ == "__main__":
    sys.exit(main())
