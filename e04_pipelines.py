"""Experiment 04: pipelines, groups and results

Goal: pass results along a pipeline, fan out a group with a completion callback, and fetch results.

Run it, in two terminals (a Redis first: `redis-server` or `python -m lab serve`):

    dramatiq --watch . e04_pipelines            # the worker
    python e04_pipelines.py pipeline 3          # add(3, 1) | double() | square(): 4, 8, 64
    python e04_pipelines.py group 10            # square(1) .. square(10) at once, then group_done(10)
    python e04_pipelines.py group 10 --fail 4   # square(4) fails for good: group_done never runs
"""

import math
import sys
import time
from collections.abc import Callable
from typing import NoReturn

import click
import dramatiq
from dramatiq.results import ResultError, ResultFailure, ResultMissing, ResultTimeout

import lab

broker = lab.setup_broker()

QUEUE = "e04"
EXIT_FAILED, EXIT_TIMEOUT = 1, 4
EXIT_CODES = ("Exit codes: 0 done (or sent, with --no-wait), 1 a step or member failed for good, "
              "2 bad arguments or URL, 3 Redis unreachable, 4 no result within --timeout.")


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


def error_of(get: Callable[[], object]) -> str:
    """The name of the result error ``get()`` raises (with the actor's own error, if it failed), or ""."""
    try:
        get()
    except ResultFailure as exc:
        return f"ResultFailure({exc.orig_exc_type})"
    except ResultError as exc:
        return type(exc).__name__
    return ""


def scenario(run: lab.Run) -> None:
    """`python -m lab run e04`: a pipeline, pipe_ignore, a failed step, two groups, results, a deadlock."""
    run.start_worker(threads=4)
    failing = dict(kwargs={"fail": True}, max_retries=0)
    pipe = (add.message(3, 1) | double.message() | square.message()).run()
    ignoring = (add.message(1, 2) | add.message_with_options(args=(10, 20), pipe_ignore=True)).run()
    (add.message(1, 1) | square.message_with_options(**failing) | double.message()).run()
    fine = dramatiq.group(square.message(i) for i in range(1, 6))
    fine.add_completion_callback(group_done.message(5))
    spoiled = dramatiq.group([square.message(1), square.message_with_options(args=(2,), **failing)])
    spoiled.add_completion_callback(group_done.message(2))
    fine.run()
    spoiled.run()
    forgotten = add.send_with_options(args=(2, 2), store_results=False)  # per message, overrides the actor
    run.settle(QUEUE, timeout=10)

    doubled = [a.args for a in run.attempts("double")]
    run.lesson("Each step's result arrives as the next step's last argument; the last one is the pipeline's",
               list(pipe.get_results()) == [4, 8, 64] and doubled[:1] == [(4,)],
               f"step results {list(pipe.get_results())}; double ran with {doubled}")
    run.lesson("pipe_ignore=True on the receiving message: it gets only its own arguments",
               ignoring.get_result() == 30 and len(run.attempts("add", 10, 20)) == 1,
               f"add(10, 20) returned {ignoring.get_result()}, with no third argument")
    run.lesson("A step that fails for good stops the pipeline: the steps after it never run",
               doubled == [(4,)], f"double() ran {len(doubled)} time(s), for the first pipeline only")
    ids = {m.message_id for m in fine.children}
    last = max(a.started for a in run.attempts("square") if a.message_id in ids)
    done, sent = run.attempts("group_done"), [e.at for e in run.enqueues("group_done") if e.args == (5,)]
    run.lesson("A group's completion callback runs once, sent after the last member started and succeeded",
               list(fine.get_results()) == [1, 4, 9, 16, 25] and [a.args for a in done] == [(5,)]
               and len(sent) == 1 and sent[0] > last,
               f"results {list(fine.get_results())}; group_done ran with {[a.args for a in done]}, "
               f"sent {(sent[0] - last) * 1000 if sent else 0:.1f} ms after the last member started")
    raised = error_of(lambda: list(spoiled.get_results()))
    run.lesson("A member fails for good: get_results raises ResultFailure and the callback never runs",
               raised.startswith("ResultFailure") and (2,) not in [a.args for a in done],
               f"get_results raised {raised}; group_done(2) ran {[a.args for a in done].count((2,))} times")
    run.lesson("Without store_results the return value is dropped: get_result raises ResultMissing",
               error_of(forgotten.get_result) == "ResultMissing", f"raised {error_of(forgotten.get_result)}")
    ttl = broker.client.pttl(broker.get_results_backend().build_message_key(pipe.messages[-1]))
    run.lesson("A stored result expires after 10 minutes by default (result_ttl)",
               590_000 < ttl <= 600_000, f"PTTL of the result key: {ttl} ms")

    run.start_worker(threads=1)  # the only thread waits, so the members it waits for cannot run
    waited = wait_inside.send(2, 1500)  # the Redis backend waits whole seconds, rounded down: 1 s
    run.settle(QUEUE, timeout=10)
    stuck = run.attempts("wait_inside")[0]
    stuck_ms = ((stuck.ended or stuck.started) - stuck.started) * 1000
    after = [a for a in run.attempts("square") if a.started >= (stuck.ended or float("inf"))]
    run.lesson("Waiting on a group inside an actor deadlocks when no other thread can run its members",
               error_of(waited.get_result) == "ResultFailure(ResultTimeout)" and len(after) == 2,
               f"wait_inside waited {stuck_ms:.0f} ms, then raised "
               f"{error_of(waited.get_result)}; its {len(after)} members ran after it gave up")


def wait_for(message: dramatiq.Message, deadline: float) -> object:
    """The message's result, waiting until ``deadline`` (a time.monotonic() value) at most.

    The Redis result backend waits whole seconds, rounded down (under 1000 ms, not at all),
    and redis-py 8.1 gives up on a socket after 5 s with redis.TimeoutError, not ResultTimeout:
    so wait in slices of 1 to 4 s (a Redis that stops answering: lab.Group says so, exit 3).
    """
    while (left := deadline - time.monotonic()) > 0:
        try:
            return message.get_result(block=True, timeout=min(math.ceil(left), 4) * 1000)
        except ResultTimeout:
            pass
    raise ResultTimeout(message)


def timed_out(seconds: int) -> NoReturn:
    click.echo(f"e04: no result within {seconds} s; is a worker running?  dramatiq e04_pipelines", err=True)
    sys.exit(EXIT_TIMEOUT)


@click.group(cls=lab.Group, epilog=EXIT_CODES)
def main() -> None:
    """Send a pipeline or a group to e04's actors, then wait for and print the results."""


def waiting(command: Callable) -> Callable:
    """The options every sender command shares: --timeout and --no-wait."""
    command = click.option("--no-wait", is_flag=True, help="Only send; do not wait for results.")(command)
    return click.option("--timeout", type=click.IntRange(min=1), default=10, show_default=True,
                        metavar="SECONDS", help="How long to wait for the results.")(command)


@main.command("pipeline", epilog=EXIT_CODES)
@click.argument("n", type=click.IntRange(min=0))
@waiting
def send_pipeline(n: int, timeout: int, no_wait: bool) -> None:
    """Pipe add(N, 1) into double() into square(); print each step's result (N: a whole number >= 0)."""
    pipe = (add.message(n, 1) | double.message() | square.message()).run()
    click.echo(f"sent {pipe}  queue={QUEUE}")
    if no_wait:
        return
    deadline = time.monotonic() + timeout
    try:
        steps = [wait_for(step, deadline) for step in pipe.messages]
    except ResultTimeout:
        timed_out(timeout)
    except ResultFailure as exc:
        click.echo(f"e04: a step failed for good: {exc}", err=True)
        sys.exit(EXIT_FAILED)
    click.echo(f"step results: {', '.join(map(str, steps))}; pipeline result: {pipe.get_result()}")


@main.command("group", epilog=EXIT_CODES)
@click.argument("n", type=click.IntRange(min=1, max=1000))
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
    try:
        # One by one, not fan_out.get_results(): that stops at the first failed member.
        for i, member in enumerate(members, 1):
            try:
                results.append(wait_for(member, deadline))
            except ResultFailure as exc:
                results.append(None)
                failed.append(f"member {i}, {member}, failed for good: {exc}")
        shown = ", ".join(map(str, results[:20])) + (f", ... ({n} in all)" if n > 20 else "")
        click.echo(f"results: {shown}")
        if not failed:
            click.echo(f"completion callback: {wait_for(callback, deadline)}")
            return
    except ResultTimeout:
        timed_out(timeout)
    try:
        callback.get_result()
    except ResultMissing:
        failed.append("the completion callback group_done never fired: its barrier waits for every member")
    click.echo("\n".join(failed), err=True)
    sys.exit(EXIT_FAILED)


if __name__ == "__main__":
    sys.exit(main())
