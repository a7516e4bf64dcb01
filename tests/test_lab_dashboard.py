"""`python -m lab dashboard`, without a browser: its JSON endpoint, its token, its actions, its bad input.

The dashboard's HTTP server runs in a thread of this process, over a broker this process holds, so
these tests run on fakeredis too; the one that compares with ``status --json`` needs a URL that
``status`` can reach (the embedded server, then the real redis-server). The queue's state is built
through Dramatiq's own calls (send, a consumer's fetch and nack), as in tests/test_lab_status.py.
tests/test_lab_dashboard_browser.py drives the page itself.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import lab
from lab.cli import cli
from lab.dashboard import Dashboard, RedisSource
from lab.status import open_broker

import dramatiq
import pytest
from click.testing import CliRunner

from conftest import free_port
from test_lab_status import QUEUE, State, counts, next_message


def status_json(url: str) -> dict:
    """What `python -m lab status --json` prints on stdout."""
    result = CliRunner().invoke(cli, ["status", "--redis", url, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def own_lines(text: str) -> str:
    """The lines of stderr the dashboard writes: its one failure line and its warning (``open_broker``'s notes
    about an experiment it could not load are status's business)."""
    return "".join(line for line in text.splitlines(keepends=True) if line.startswith(("python -m lab:", "warning:")))


@contextmanager
def serving(source: RedisSource, host: str = "127.0.0.1") -> Iterator[Dashboard]:
    """The dashboard's server on a free port, in a thread; shut down and closed after."""
    server = Dashboard(source, host, 0, 1.0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


def request(server: Dashboard, method: str, path: str, body: dict | None = None, *, token: str | None = None,
            host: str | None = None) -> tuple[int, dict | str]:
    """One HTTP request, as a browser or a script would send it: (status, the JSON or text that came back)."""
    connection = http.client.HTTPConnection(*server.server_address[:2], timeout=10)
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["X-Lab-Token"] = token
    if host is not None:
        headers["Host"] = host
    try:
        connection.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
        response = connection.getresponse()
        text = response.read().decode()
        return response.status, json.loads(text) if response.getheader("Content-Type") == "application/json" else text
    finally:
        connection.close()


def snapshot(server: Dashboard) -> dict:
    status, data = request(server, "GET", "/api/status")
    assert status == 200, data
    return data


class OneOfEach:
    """A queue with one message in each state (ready, delayed, in flight, dead), built on ``broker``."""

    def __init__(self, broker) -> None:
        job = dramatiq.actor(lambda n: None, actor_name="job", queue_name=QUEUE, broker=broker)
        self.consumer = broker.consume(QUEUE, prefetch=1, timeout=20)
        job.send(1)
        self.dead = next_message(self.consumer)
        self.consumer.nack(self.dead)  # what a worker does when a message fails for good
        job.send(2)
        self.in_flight = next_message(self.consumer)  # fetched, never acked
        job.send(3)  # ready
        job.send_with_options(args=(4,), delay=60_000)  # delayed


@pytest.fixture
def state_on_broker(broker) -> Iterator[OneOfEach]:
    state = OneOfEach(broker)
    yield state
    state.consumer.close()


@pytest.fixture
def dashboard(state_on_broker, broker) -> Iterator[Dashboard]:
    with serving(RedisSource(broker, newest=5)) as server:
        yield server


# -- what it shows -----------------------------------------------------------------------------


def test_the_json_endpoint_is_what_status_json_prints(server_url):
    # Given a queue with one message in each state, and the dashboard on the same Redis (as the command opens it)
    state = State(server_url)
    source = RedisSource(open_broker(server_url), newest=5)
    try:
        with serving(source) as server:
            # when the page asks for a snapshot, and `status --json` prints one
            page = snapshot(server)
            printed = status_json(server_url)
    finally:
        source.broker.close()
        state.consumer.close()
        state.broker.close()
    # then they are the same snapshot, but for the moment each was taken
    assert page.pop("taken_at_ms") <= printed.pop("taken_at_ms")
    assert page == printed
    assert counts(page) == {"ready": 1, "delayed": 1, "in_flight": 1, "dead": 1}
    assert [d["message_id"] for d in page["dead_letters"]] == [state.dead.message_id]


def test_the_page_carries_the_runs_token_and_its_own_script(dashboard):
    status, page = request(dashboard, "GET", "/")
    assert status == 200 and f'<meta name="lab-token" content="{dashboard.token}">' in page
    assert '<script src="dashboard.js"></script>' in page and "http" not in page.split("<body>")[1]
    status, script = request(dashboard, "GET", "/dashboard.js")
    assert status == 200 and 'fetch("api/status"' in script and '"X-Lab-Token": TOKEN' in script


# -- what it may do, and who may ask ---------------------------------------------------------------


def test_an_action_without_the_runs_token_gets_403_and_changes_nothing(dashboard, state_on_broker):
    before = snapshot(dashboard)
    letter = {"queue": QUEUE, "message_id": state_on_broker.dead.message_id}
    answers = [request(dashboard, "POST", path, body, token=token)[0]
               for path, body in (("/api/requeue", letter), ("/api/purge", {"queue": QUEUE}))
               for token in (None, "", "not-" + dashboard.token, dashboard.token[:-1])]
    assert answers == [403] * 8
    after = snapshot(dashboard)
    assert (after["queues"], after["dead_letters"]) == (before["queues"], before["dead_letters"])


def test_a_get_never_changes_data(dashboard, state_on_broker):
    before = snapshot(dashboard)
    paths = ["/", "/dashboard.js", "/api/status", "/nosuch",
             f"/api/requeue?queue={QUEUE}&message_id={state_on_broker.dead.message_id}&token={dashboard.token}",
             f"/api/purge?queue={QUEUE}&token={dashboard.token}"]
    answers = {path.split("?")[0]: request(dashboard, "GET", path, token=dashboard.token)[0] for path in paths}
    assert answers == {"/": 200, "/dashboard.js": 200, "/api/status": 200, "/nosuch": 404,
                       "/api/requeue": 405, "/api/purge": 405}
    after = snapshot(dashboard)
    assert (after["queues"], after["dead_letters"]) == (before["queues"], before["dead_letters"])


def test_a_bad_action_body_is_400_and_an_unknown_letter_or_queue_404(dashboard):
    token = dashboard.token
    assert request(dashboard, "POST", "/api/requeue", {"queue": QUEUE}, token=token)[0] == 400
    assert request(dashboard, "POST", "/api/purge", {"queue": 5}, token=token)[0] == 400
    status, answer = request(dashboard, "POST", "/api/requeue", {"queue": QUEUE, "message_id": "nosuch"}, token=token)
    assert (status, answer) == (404, {"error": f"no dead letter nosuch in {QUEUE}"})
    assert request(dashboard, "POST", "/api/purge", {"queue": "nosuch"}, token=token)[0] == 404


def test_purge_from_the_page_removes_ready_and_delayed_and_keeps_dead_letters_and_in_flight(dashboard):
    status, answer = request(dashboard, "POST", "/api/purge", {"queue": QUEUE}, token=dashboard.token)
    assert (status, answer) == (200, {"done": f"Removed 2 message(s) from {QUEUE}: 1 ready, 1 delayed."})
    assert counts(snapshot(dashboard)) == {"ready": 0, "delayed": 0, "in_flight": 1, "dead": 1}


def test_a_requeued_dead_letter_keeps_its_retry_count_and_fails_straight_back(broker, recorder, start_worker):
    # Given an actor that always fails, with 1 retry, whose message is in the dead letters after 2 tries
    @dramatiq.actor(queue_name=QUEUE, max_retries=1, min_backoff=10, max_backoff=10)
    def doomed(n: int) -> None:
        raise ValueError(f"{n} is doomed")

    sent = doomed.send(7)
    start_worker(threads=1)
    assert lab.wait_until(lambda: len(lab.dead_letters(broker, QUEUE)) == 1, timeout=10)
    [stored] = lab.dead_letters(broker, QUEUE)
    # when the page requeues it
    with serving(RedisSource(broker, newest=5)) as server:
        status, answer = request(server, "POST", "/api/requeue", {"queue": QUEUE, "message_id": sent.message_id},
                                 token=server.token)
        assert (status, answer) == (200, {"done": f"Requeued doomed ({sent.message_id}) to the end of {QUEUE}."})
        # then it runs once more, as it was stored (same id, retries=1), and goes straight back: 3 tries, not 4
        assert lab.wait_until(lambda: len(recorder.attempts_of("doomed")) == 3
                              and len(lab.dead_letters(broker, QUEUE)) == 1, timeout=10)
        [letter] = snapshot(server)["dead_letters"]
    [again] = lab.dead_letters(broker, QUEUE)
    assert again.message.message_id == sent.message_id and again.message.options["retries"] == 1
    assert stored.message.options["retries"] == 1
    assert (letter["tries"], letter["why"]) == (2, "ValueError: 7 is doomed")
    assert len(recorder.attempts_of("doomed")) == 3


# -- where it listens, and bad input -----------------------------------------------------------------


def run_until_listening(*args: str) -> tuple[int, str, str]:
    """``python -m lab dashboard ARGS`` in this process; Ctrl-C (SIGINT to this process) once it answers."""
    port = free_port()

    def press_ctrl_c() -> None:
        def answers() -> bool:
            try:
                with socket.create_connection((args[args.index("--host") + 1] if "--host" in args else "127.0.0.1",
                                               port), timeout=0.2):
                    return True
            except OSError:
                return False

        if lab.wait_until(answers, timeout=10):
            os.kill(os.getpid(), signal.SIGINT)

    presser = threading.Thread(target=press_ctrl_c)
    presser.start()
    result = CliRunner().invoke(cli, ["dashboard", "--port", str(port), *args], prog_name="python -m lab")
    presser.join()
    return result.exit_code, result.stdout, own_lines(result.stderr)


def test_it_listens_on_loopback_and_ctrl_c_stops_it_with_0(real_redis_url):
    code, out, err = run_until_listening("--redis", real_redis_url)
    assert code == 0, out + err
    ready, stopped = out.splitlines()
    assert ready.startswith(f"Dashboard of {real_redis_url} on http://127.0.0.1:") and stopped == "Stopped."
    assert err == ""


def test_another_host_gets_a_warning_line(real_redis_url):
    # 127.0.0.2 is loopback on Linux, but not a name the dashboard knows as such: it warns as for any other
    code, out, err = run_until_listening("--redis", real_redis_url, "--host", "127.0.0.2")
    assert code == 0 and "on http://127.0.0.2:" in out
    assert err.startswith("warning: listening on 127.0.0.2, not loopback: whoever reaches port ")
    assert err.count("\n") == 1


def test_a_page_reached_by_another_host_name_is_refused(dashboard):
    # what a web page sees after pointing its own name at 127.0.0.1 (DNS rebinding): no page, no token
    assert request(dashboard, "GET", "/", host="evil.example:80")[0] == 403
    assert request(dashboard, "GET", "/api/status", host=f"localhost:{dashboard.server_address[1]}")[0] == 200


def test_a_port_in_use_is_one_line_and_exit_4(real_redis_url):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(cli, ["dashboard", "--redis", real_redis_url, "--port", str(port)],
                                    prog_name="python -m lab")
    assert result.exit_code == 4
    assert own_lines(result.output) == (f"python -m lab: port {port} on 127.0.0.1 is in use by another program; "
                                        "pick another with --port N (0: any free one)\n")


@pytest.mark.parametrize(("args", "code", "line"), [
    (["--port", "70000"], 2, "Invalid value for '--port': 70000 is not in the range 0<=x<=65535."),
    (["--redis", "memory://"], 2, "memory:// lives inside one process"),
    (["--redis", "redis://127.0.0.1:{free}/0"], 3, "cannot reach Redis at redis://127.0.0.1:{free}/0."),
])
def test_bad_input_is_one_line_and_its_exit_code(args, code, line):
    free = free_port()
    result = CliRunner().invoke(cli, ["dashboard", *(a.format(free=free) for a in args)], prog_name="python -m lab")
    output = own_lines(result.output)
    assert result.exit_code == code
    assert output.count("\n") == 1 and result.output.endswith(output) and "Traceback" not in result.output
    assert line.format(free=free) in output
