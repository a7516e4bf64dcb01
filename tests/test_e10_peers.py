"""e10's side by side: Dramatiq, RQ, Huey and Celery on the same redis-server, at their defaults and matched.

The peers are not part of requirements.txt, so these tests are opt-in, to keep the main suite lean:
they run with LAB_PEERS=1 and the peers installed (``pip install -r benchmarks/requirements-peers.txt``),
and skip otherwise, saying how to run them. In CI (CI=true) with LAB_PEERS=1, a missing peer fails.
"""

from __future__ import annotations

import inspect
import os

import dramatiq.cli
import pytest
import redis

from benchmarks import e10_common, e10_peers
from conftest import IN_CI

HOW = f"LAB_PEERS=1 pytest tests/test_e10_peers.py, after {e10_peers.INSTALL}"


@pytest.fixture(autouse=True)
def peers() -> None:
    """Skip unless asked for with LAB_PEERS=1; then skip (fail in CI) if a peer is not installed."""
    if os.environ.get("LAB_PEERS") != "1":
        pytest.skip(f"the peers' tests are opt-in: {HOW}")
    if absent := e10_peers.missing():
        why = f"LAB_PEERS=1, but {', '.join(absent)} not installed: {e10_peers.INSTALL}"
        if IN_CI:
            pytest.fail(why)
        pytest.skip(why)


def test_every_job_of_every_library_ran_exactly_once(redis_server):
    # Given 100 no-op jobs for each of Dramatiq, RQ, Huey and Celery, on the same redis-server,
    # each library at its defaults, then all of them at 2 processes x 8 threads
    ledger, client = e10_common.Ledger(), redis.Redis.from_url(redis_server)
    found = e10_peers.compare(redis_server, "e10-test-peers", 1, {"noop": 100}, 1, client, ledger)
    # then each library ran each of its jobs once in each setup: no job lost, none run twice
    assert [(r["setup"], r["library"], r["jobs"], r["ran_once"]) for r in found["rows"]] == [
        (setup, library, 100, True) for setup in ("defaults", "matched")
        for library in ("dramatiq", "rq", "huey", "celery")]
    assert ledger.problems == []
    # and nothing of the run is left in Redis, not even in RQ's shared list of queues
    assert list(client.scan_iter("e10-test-peers*")) == []
    assert [q for q in client.smembers("rq:queues") if b"e10-test-peers" in q] == []
    client.close()


def test_each_librarys_defaults_are_what_the_report_says():
    import billiard
    import rq
    import rq.cli.workers
    from celery import Celery
    from huey.consumer_options import config_defaults

    cores = os.cpu_count()
    # Dramatiq: a process per core, 8 threads each
    args = dramatiq.cli.make_argument_parser().parse_args(["jobs"])
    assert (args.processes, args.threads) == (cores, 8)
    # RQ: `rq worker` is one process of rq.Worker, which forks a child (its "work horse") for every job
    assert [p.default for p in rq.cli.workers.worker.params if p.name == "worker_class"] == ["rq.Worker"]
    assert "self.fork_work_horse(" in inspect.getsource(rq.Worker.execute_job)
    assert "os.fork()" in inspect.getsource(rq.Worker.fork_work_horse)
    # Huey: one worker, a thread
    assert (dict(config_defaults)["workers"], dict(config_defaults)["worker_type"]) == (1, "thread")
    # Celery: the prefork pool, no concurrency set, so WorkController takes billiard's count of cores
    conf = Celery("defaults").conf
    assert (conf.worker_pool, conf.worker_concurrency, billiard.cpu_count()) == ("prefork", None, cores)
    # and the report says just that
    assert e10_peers.DEFAULTS == {
        "dramatiq": f"{cores} processes (one per core) x 8 threads",
        "rq": "1 process, forking a child per job",
        "huey": "1 process x 1 thread",
        "celery": f"1 process, a prefork pool of {cores} children (one per core)",
    }
