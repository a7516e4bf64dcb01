"""`python -m lab run e14`: the web app's lessons through Django's test client, on SQLite files in a temp dir,
with an in-process worker. Each play returns what it observed; tests/test_e14_web_app.py asserts on the same plays."""

from __future__ import annotations

import importlib
import io
import re
import shutil
import tempfile
import time
import unittest
from collections.abc import Callable
from pathlib import Path

import lab

import django.test
import dramatiq
from django.core.management import call_command
from django.db import connections
from django.db.backends.signals import connection_created
from django.forms.models import model_to_dict
from django_dramatiq.management.commands import rundramatiq
from django_dramatiq.middleware import AdminMiddleware, DbConnectionsMiddleware
from dramatiq.brokers.stub import StubBroker
from dramatiq.cli import make_argument_parser
from dramatiq.results import Results
from dramatiq.results.backends import StubBackend

import e14_web_app as e14
import e14_web_app_site

Start = Callable[..., dramatiq.Worker]  # start a worker: threads=...
FAST = dict(SMTP_MS=100, REMOTE_MS=50, REPORT_MS=250)  # the slow calls, shorter: lessons need order, not seconds


def client() -> django.test.Client:
    return django.test.Client(raise_request_exception=True)


Tried = Callable[[], list[tuple[int, str]]]  # each welcome the worker tried for good: (user id, error or "")


def tried_in_process(recorder: lab.Recorder) -> Tried:
    """What an in-process worker tried, from the recorder: each welcome's last attempt."""
    return lambda: [(a.args[0], a.error) for a in recorder.attempts_of("send_welcome")
                    if a.ended and a.outcome != "retried"]


def tried_by_worker(output: Callable[[], str]) -> Tried:
    """What a real `dramatiq` worker tried, from what it wrote: its log line for each DoesNotExist (an expected
    exception, logged at INFO), and the outbox for each welcome sent. ``output()``: its log from the play on."""
    def tried() -> list[tuple[int, str]]:
        failed = re.findall(r"Failed to process message send_welcome\((\d+)\) with expected exception (\w+)", output())
        emailed = e14.User.objects.filter(email__in=e14.Email.objects.values("to")).values_list("id", flat=True)
        return [(int(user), error) for user, error in failed] + [(user, "") for user in emailed]
    return tried


def play_commit(recorder: lab.Recorder, send: str, tried: Tried | None = None) -> dict:
    """Three sign-ups and one refused one, with send=inside or on_commit, a worker running (in this process
    unless ``tried`` reads another's). A receiver of signing_up holds each transaction open until the worker
    has tried the message, if one was sent: the commit comes after, every time."""
    sent_before_commit = []
    tried = tried or tried_in_process(recorder)

    def hold_the_commit(sender: object, user: e14.User, **_: object) -> None:
        sent = recorder.enqueues_of("send_welcome")
        sent_before_commit.append(any(e.args == (user.id,) for e in sent))
        if sent_before_commit[-1]:
            lab.wait_until(lambda: any(who == user.id for who, _ in tried()), timeout=10)

    e14.signing_up.connect(hold_the_commit, weak=False)
    try:
        web = client()
        codes = [web.post(f"/signup?send={send}", {"email": f"user{i}-{send}@example.com"}).status_code
                 for i in range(3)]
        refused = web.post(f"/signup?send={send}", {"email": f"mallory-{send}@blocked.example"})
    finally:
        e14.signing_up.disconnect(hold_the_commit)
    committed = set(e14.User.objects.values_list("id", flat=True))
    sent = recorder.enqueues_of("send_welcome")
    lab.wait_until(lambda: len(tried()) == len(sent), timeout=10)
    return {
        "codes": codes + [refused.status_code],
        "sent_before_commit": sum(sent_before_commit),
        "does_not_exist": sum(error.startswith("DoesNotExist") for _, error in tried()),
        "emails": e14.Email.objects.count(),
        "users": len(committed),
        "sent_for_refused": sum(e.args[0] not in committed for e in sent),
    }


def play_ids(start: Start) -> dict:
    """An object refused by the encoder; a dict copy sent before an e-mail change, against the id."""
    try:
        e14.send_welcome.send(e14.User(email="obj@example.com"))
        refused = ""
    except TypeError as exc:
        refused = str(exc)
    user = e14.User.objects.create(email="ada@old.example")
    e14.welcome_from_copy.send(model_to_dict(user))
    e14.send_welcome.send(user.id)
    e14.User.objects.filter(id=user.id).update(email="ada@new.example")  # she fixes her address meanwhile
    start(threads=1)
    lab.wait_until(lambda: e14.Email.objects.count() == 2, timeout=10)
    emails = {row.to for row in e14.Email.objects.all()}
    return {"refused": refused, "copy_to_old": "ada@old.example" in emails, "id_to_new": "ada@new.example" in emails}


def play_connections(broker: dramatiq.Broker, recorder: lab.Recorder, start: Start, *, middleware: bool) -> dict:
    """Ten messages on one thread, with or without DbConnectionsMiddleware: connections opened, left open; then
    the database closes every open one (as a restarted PostgreSQL would), and one more message runs."""
    opened: list = []

    def count(sender: object, connection: object, **_: object) -> None:
        if connection.alias == "default":
            opened.append(connection)

    saved, report_ms, e14.REPORT_MS = list(broker.middleware), e14.REPORT_MS, 0
    if not middleware:
        broker.middleware[:] = [m for m in broker.middleware if not isinstance(m, DbConnectionsMiddleware)]
    connection_created.connect(count, weak=False)
    try:
        start(threads=1)
        reports = [e14.build_report.send("signups") for _ in range(10)]
        lab.wait_until(lambda: sum(bool(a.ended) for a in recorder.attempts_of("build_report")) == 10, timeout=10)
        threads = {a.thread for a in recorder.attempts_of("build_report")}
        first = {"opened": len(opened), "left_open": sum(c.connection is not None for c in opened)}
        for connection in opened:  # the server side of each connection goes away, while its thread waits
            if connection.connection is not None:
                connection.connection.close()
        reports.append(e14.build_report.send("signups"))
        lab.wait_until(lambda: len([a for a in recorder.attempts_of("build_report") if a.ended]) == 11, timeout=10)
        last = recorder.attempts_of("build_report")[-1]
    finally:
        connection_created.disconnect(count)
        broker.middleware[:], e14.REPORT_MS = saved, report_ms
    return {**first, "threads": len(threads), "after_the_database_closed": last.outcome, "error": last.error}


def play_request_time(start: Start) -> dict:
    """The sign-up with its e-mail sent in the request, then queued (no worker yet): time, and the outbox at the
    response."""
    web = client()
    began = time.perf_counter()
    inline = web.post("/signup?send=inline", {"email": "in@example.com"})
    inline_ms = (time.perf_counter() - began) * 1000
    inline_outbox = e14.Email.objects.filter(to="in@example.com").count()
    began = time.perf_counter()
    queued = web.post("/signup", {"email": "q@example.com"})
    queued_ms = (time.perf_counter() - began) * 1000
    queued_outbox = e14.Email.objects.filter(to="q@example.com").count()
    start(threads=1)
    lab.wait_until(lambda: e14.Email.objects.filter(to="q@example.com").exists(), timeout=10)
    return {"inline_ms": inline_ms, "queued_ms": queued_ms, "inline_outbox": inline_outbox,
            "queued_outbox": queued_outbox, "later": e14.Email.objects.filter(to="q@example.com").count(),
            "said": (inline.json()["welcome"], queued.json()["welcome"]), "smtp_ms": e14.SMTP_MS}


def play_burst(broker: dramatiq.Broker, recorder: lab.Recorder, start: Start, *, guard: str,
               requests: int = 100) -> dict:
    """A hundred requests for one stale quote (no worker yet), then the worker, then one request more."""
    symbol = "ACME" if guard == "on" else "BOOM"
    web = client()
    answers = [web.get(f"/quotes/{symbol}?guard={guard}").json() for _ in range(requests)]
    queued = [e for e in recorder.enqueues_of("refresh_quote") if e.args == (symbol,)]
    if guard == "off":
        broker.flush(e14.QUEUE)  # not worth running a hundred times
        return {"queued": len(queued), "stale_answers": sum(a["stale"] for a in answers)}
    start(threads=2)
    lab.wait_until(lambda: [a.outcome for a in recorder.attempts_of("refresh_quote")] == ["ok"], timeout=10)
    after = web.get(f"/quotes/{symbol}").json()
    return {"queued": len(queued), "stale_answers": sum(a["stale"] for a in answers), "after": after}


def play_status(broker: dramatiq.Broker, start: Start) -> dict:
    """202 and poll: two reports (one fails), polled while queued, running, done or failed; bad polls."""
    web = client()
    accepted = [web.post("/reports", {"kind": kind}) for kind in ("signups", "broken")]
    polls = [r["Location"] for r in accepted]
    seen: list[list[str]] = [[web.get(p).json()["status"]] for p in polls]
    start(threads=1)  # one thread: the first report runs, then the second

    def settled() -> bool:
        for poll, statuses in zip(polls, seen, strict=True):
            status = web.get(poll).json()["status"]
            if status != statuses[-1]:
                statuses.append(status)
        return [s[-1] for s in seen] == ["done", "failed"]

    lab.wait_until(settled, timeout=15, interval=0.01)
    done, failed = (web.get(p).json() for p in polls)
    results = next(m.backend for m in broker.middleware if isinstance(m, Results))
    message = e14.Task.tasks.using("tasks").get(id=done["task"]).message
    ttl_ms = broker.client.pttl(results.build_message_key(message)) if hasattr(broker, "client") else None
    return {"codes": [r.status_code for r in accepted], "seen": seen, "done": done, "failed": failed,
            "result_ttl_ms": ttl_ms,
            "bad": [web.get("/tasks/not-a-uuid").status_code, web.get(f"/tasks/{'0' * 32}").status_code,
                    web.post("/reports", {"kind": "nosuch"}).status_code, web.get("/reports").status_code]}


# -- Django's own tests, with a StubBroker: the examples tests/test_e14_web_app.py runs ------------------------

class StubBrokerMixin:
    """Each test: a StubBroker (with a results backend) made the broker, e14 reloaded onto it, a worker.
    Without django_dramatiq's Task table (bookkeeping a unit test does without) and whatever else is listed."""

    unwanted: tuple[type, ...] = (AdminMiddleware,)

    def setUp(self) -> None:
        self.broker = StubBroker()
        self.broker.emit_after("process_boot")
        self.broker.add_middleware(Results(backend=StubBackend()))
        lab.use_broker(self.broker)
        importlib.reload(e14)  # its actors bind to the stub; the views send through them
        self.broker.middleware[:] = [m for m in self.broker.middleware if not isinstance(m, self.unwanted)]
        self.worker = dramatiq.Worker(self.broker, worker_timeout=100)
        self.worker.start()
        super().setUp()

    def tearDown(self) -> None:
        super().tearDown()
        self.worker.stop()

    def sign_up(self, send: str = "on_commit") -> None:
        self.assertEqual(self.client.post(f"/signup?send={send}", {"email": "ada@example.com"}).status_code, 201)

    def join(self) -> None:
        self.broker.join(e14.QUEUE, timeout=5000, fail_fast=False)
        self.worker.join()


class SignUpInATestCase(StubBrokerMixin, django.test.TestCase):
    """django.test.TestCase runs each test in a transaction it never commits."""

    databases = {"default"}
    # DbConnectionsMiddleware closes every connection of the thread that stops the worker: here, the test's
    # own, in the middle of the transaction TestCase keeps open for the class.
    unwanted = (AdminMiddleware, DbConnectionsMiddleware)

    def test_on_commit_never_fires_so_no_task_is_sent(self) -> None:
        self.sign_up()
        self.assertEqual(self.broker.queues[e14.QUEUE].qsize(), 0)

    def test_sent_anyway_the_worker_cannot_see_the_uncommitted_user(self) -> None:
        with self.captureOnCommitCallbacks(execute=True):
            self.sign_up()
        self.join()
        self.assertEqual(e14.Email.objects.count(), 0)
        self.assertEqual(len(self.broker.dead_letters), 1)


class SignUpInATransactionTestCase(StubBrokerMixin, django.test.TransactionTestCase):
    """django.test.TransactionTestCase commits, and empties the tables after each test."""

    databases = {"default", "tasks"}

    def test_the_welcome_email_is_sent(self) -> None:
        self.sign_up()
        self.join()
        self.assertEqual(list(e14.Email.objects.values_list("to", flat=True)), ["ada@example.com"])


for _case in (SignUpInATestCase, SignUpInATransactionTestCase):
    _case.__test__ = False  # run by play_django_tests, not collected by pytest on their own


def play_django_tests() -> dict[str, str]:
    """Run the example Django tests with unittest; each test's outcome by name. Then e14 is bound again to the
    broker it had (reloading it there would declare its actors twice: Dramatiq 2 refuses)."""
    outcomes: dict[str, str] = {}
    result = unittest.TestResult()
    suite = unittest.TestSuite(unittest.defaultTestLoader.loadTestsFromTestCase(case)
                               for case in (SignUpInATestCase, SignUpInATransactionTestCase))
    names = [test.id().rsplit(".", 1)[1] for case in suite for test in case]
    before, broker = dict(vars(e14)), e14.broker
    try:
        suite.run(result)
    finally:
        lab.use_broker(broker)
        vars(e14).update(before)
    for test, _ in result.failures + result.errors:
        outcomes[test.id().rsplit(".", 1)[1]] = "failed"
    return {name: outcomes.get(name, "passed") for name in names}


def play_rundramatiq(*args: str) -> dict:
    """The command line `manage.py rundramatiq ARGS` would exec (captured, not run), and how dramatiq reads it."""
    execed: list[list[str]] = []

    def capture(path: str, argv: list[str]) -> None:
        execed.append(argv)

    original, rundramatiq.os.execvp = rundramatiq.os.execvp, capture
    try:
        call_command("rundramatiq", *args, stdout=io.StringIO())
    finally:
        rundramatiq.os.execvp = original
    [argv] = execed
    parsed = make_argument_parser().parse_args(argv[1:])
    # dramatiq's first positional argument is the broker's module: rundramatiq puts django_dramatiq.setup there
    return {"argv": argv, "modules": [parsed.broker, *parsed.modules], "queues": parsed.queues}


def scenario(run: lab.Run) -> None:
    data = Path(tempfile.mkdtemp(prefix="lab-e14-"))
    try:
        e14_web_app_site.use_data_dir(data)
        for name, value in FAST.items():
            setattr(e14, name, value)
        play_all(run)
    finally:
        connections.close_all()
        shutil.rmtree(data, ignore_errors=True)


def fresh(run: lab.Run) -> None:
    run.stop_worker()
    run.broker.flush(e14.QUEUE)
    run.recorder.reset()
    e14_web_app_site.empty()


def play_all(run: lab.Run) -> None:
    start = run.start_worker
    commits = {}
    for send in ("inside", "on_commit"):
        fresh(run)
        start(threads=2)
        commits[send] = play_commit(run.recorder, send)
    trap, fixed = commits["inside"], commits["on_commit"]
    run.check("test_a_task_sent_inside_the_transaction_runs_before_the_commit_and_on_commit_fixes_it",
              trap["does_not_exist"] == 4 and trap["emails"] == 0 and fixed["does_not_exist"] == 0
              and fixed["emails"] == 3 and fixed["sent_for_refused"] == 0 and trap["sent_for_refused"] == 1,
              f"inside: {trap['does_not_exist']} DoesNotExist of 4 sent (1 for a rolled-back user), "
              f"{trap['emails']} e-mails; on_commit: {fixed['does_not_exist']} DoesNotExist, {fixed['emails']} "
              f"e-mails, {fixed['sent_for_refused']} sent for the rolled-back user")

    fresh(run)
    ids = play_ids(start)
    run.check("test_a_model_instance_cannot_be_sent_and_a_copy_is_stale_by_the_time_it_runs",
              "not JSON serializable" in ids["refused"] and ids["copy_to_old"] and ids["id_to_new"],
              f"send(user): TypeError ({ids['refused']}); the copy e-mailed the old address, the id the new one")

    counts = {}
    for middleware in (False, True):
        fresh(run)
        counts[middleware] = play_connections(run.broker, run.recorder, start, middleware=middleware)
    without, with_ = counts[False], counts[True]
    run.check("test_each_worker_thread_keeps_its_connection_unless_db_connections_middleware_closes_it",
              without["opened"] == without["left_open"] == without["threads"] and with_["opened"] == 10
              and with_["left_open"] == 0 and without["after_the_database_closed"] == "failed"
              and with_["after_the_database_closed"] == "ok",
              f"10 messages on 1 thread: without it {without['opened']} connection(s) opened, {without['left_open']} "
              f"left open, then {without['error'] or 'ok'}; with it {with_['opened']} opened, {with_['left_open']} "
              "left open, and the next message ran")

    fresh(run)
    timed = play_request_time(start)
    run.check("test_the_request_returns_before_the_email_is_sent",
              timed["inline_outbox"] == 1 and timed["queued_outbox"] == 0 and timed["later"] == 1,
              f"e-mail sent in the request: answered in {timed['inline_ms']:.0f} ms (the SMTP call: "
              f"{timed['smtp_ms']} ms), the e-mail written; queued: {timed['queued_ms']:.0f} ms, the e-mail after")

    bursts = {}
    for guard in ("off", "on"):
        fresh(run)
        bursts[guard] = play_burst(run.broker, run.recorder, start, guard=guard)
    run.check("test_a_burst_of_requests_for_a_stale_quote_queues_one_refresh_with_the_guard",
              bursts["off"]["queued"] == 100 and bursts["on"]["queued"] == 1
              and bursts["on"]["after"]["stale"] is False,
              f"100 requests for a stale quote: {bursts['off']['queued']} refreshes queued without the guard, "
              f"{bursts['on']['queued']} with it; every answer at once (stale), the next one fresh")

    fresh(run)
    status = play_status(run.broker, start)
    run.check("test_202_then_poll_shows_enqueued_running_done_and_failed",
              status["codes"] == [202, 202] and status["seen"] == [["enqueued", "running", "done"],
                                                                   ["enqueued", "running", "failed"]]
              and 590_000 < status["result_ttl_ms"] <= 600_000,
              f"polled: {' > '.join(status['seen'][0])}; {' > '.join(status['seen'][1])}; the result kept "
              f"{status['result_ttl_ms'] / 1000:.0f} s more")

    fresh(run)
    outcomes = play_django_tests()
    run.check("test_under_django_testcase_the_task_needs_a_commit_the_test_never_makes",
              set(outcomes.values()) == {"passed"} and len(outcomes) == 3,
              f"Django's example tests: {', '.join(f'{n}: {o}' for n, o in outcomes.items())}")

    line = play_rundramatiq("--processes", "4", "--queues", "default,email,processing")
    run.check("test_rundramatiq_adds_django_setup_and_every_apps_tasks_then_execs_dramatiq",
              line["modules"][:3] == ["django_dramatiq.setup", "django_dramatiq.tasks", "e14_web_app_site.tasks"]
              and line["queues"] == ["default,email,processing"],
              f"it execs {' '.join(line['argv'])[:60]}...: modules {', '.join(line['modules'])}; "
              f"--queues {line['queues']}: one queue, commas and all")
