"""`python -m lab dashboard` in a real browser: Debian's chromium, headless, driven by selenium.

Everything is real and separate, as a learner runs it: the dashboard (``python -m lab dashboard``),
a ``dramatiq`` worker, both on the test's redis-server, and chromium through the installed
chromedriver. Selenium is given both paths, so Selenium Manager never looks for (or downloads) a
driver. Without chromium or chromedriver the test skips, except in CI (``CI=true``), where it fails.

Each process is stopped by its id at teardown, also when an assertion fails: the dashboard by
Ctrl-C (SIGINT; it must exit 0), the worker by the fixture, the browser by ``quit()`` and then, by
pid, whatever of chromedriver's process tree is left, or still carries this test's mark in its
environment (chromedriver passes its environment to chromium). The screenshot goes to the test's
temp dir; with ``LAB_SCREENSHOT=docs/dashboard.png`` it is also written there, for README.rst.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import lab
from lab.processes import carrying, guard, release

import dramatiq
import pytest
import redis

from conftest import IN_CI, ROOT, lab_env

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
QUEUE = "dash"
MARK = "LAB_BROWSER_TEST"  # in chromedriver's environment, so in chromium's: what is left at teardown, by pid

# The worker's actors, a module of its own in the test's temp dir: a nap that takes a while, and one
# that fails until a Redis key exists (then counts its success in another key).
ACTORS = '''
import time

import lab

import dramatiq

broker = lab.setup_broker()


@dramatiq.actor(queue_name="dash", max_retries=0)
def nap(ms: int) -> None:
    time.sleep(ms / 1000)


@dramatiq.actor(queue_name="dash", max_retries=1, min_backoff=20, max_backoff=20)
def fragile(flag: str) -> None:
    if not broker.client.exists(flag):
        raise RuntimeError(f"{flag} is not set")
    broker.client.incr(f"{flag}:ran")
'''


def need_chromium() -> None:
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    if missing:
        why = f"{' and '.join(missing)} not installed (apt-get install chromium chromium-driver)"
        pytest.fail(why) if IN_CI else pytest.skip(why)


@pytest.fixture
def dashboard(real_redis_url, tmp_path) -> Iterator[tuple[subprocess.Popen, Path]]:
    """``python -m lab dashboard`` as a process of its own; its stdout in a file. Ctrl-C at teardown."""
    out = tmp_path / "dashboard.out"
    with out.open("w") as stdout:
        process = guard(subprocess.Popen(
            [sys.executable, "-m", "lab", "dashboard", "--port", "0", "--interval", "0.25"], cwd=ROOT,
            env=lab_env(real_redis_url), stdout=stdout, stderr=subprocess.STDOUT, start_new_session=True))
    try:
        yield process, out
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        release(process)


@pytest.fixture
def worker(real_redis_url, dramatiq_worker, tmp_path):
    """A 1-thread ``dramatiq`` worker on ``dash_actors`` (written to the temp dir), booting while the rest starts."""
    (tmp_path / "dash_actors.py").write_text(ACTORS)
    return dramatiq_worker("--threads", "1", "dash_actors", url=real_redis_url, cwd=tmp_path, ready=False,
                           PYTHONPATH=str(ROOT))


@pytest.fixture
def browser(tmp_path) -> Iterator:
    """Headless chromium through the installed chromedriver, with a fresh profile; gone at teardown."""
    need_chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    mark = secrets.token_hex(4)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="lab-chromium-", dir=tmp_path)
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--no-first-run", "--window-size=1280,1000", f"--user-data-dir={profile}"):
        options.add_argument(argument)
    service = Service(CHROMEDRIVER, env=dict(os.environ, **{MARK: mark}))
    driver = None
    started: set[int] = set()
    try:
        driver = webdriver.Chrome(service=service, options=options)
        yield driver
    finally:
        try:
            if service.process is not None:
                started = descendants(service.process.pid)  # chromium's renderers and zygotes write over their
            if driver is not None:                            # environment, so the mark does not reach them
                driver.quit()
        finally:
            for pid in started | set(carrying(MARK, mark)):  # what quit() did not stop
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if service.process is not None:
                service.process.wait(timeout=10)
            shutil.rmtree(profile, ignore_errors=True)


def descendants(pid: int) -> set[int]:
    """``pid``'s children, their children, and so on, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(parent, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def page_state(driver) -> dict:
    """What the page shows now: the dash queue's busy row, dead letters, workers, the chart, and a marker
    set when the test opened it (gone if the page reloaded)."""
    return driver.execute_script("""
        const row = document.querySelector('tr[data-queue="dash"]');
        const cells = row ? Object.fromEntries([...row.querySelectorAll("td[data-field]")]
                                             .map(td => [td.dataset.field, Number(td.textContent)])) : null;
        return {
            dash: cells,
            letters: [...document.querySelectorAll("#dead tbody tr")].map(tr => ({
                id: tr.dataset.messageId, text: [...tr.cells].map(td => td.textContent)})),
            alive: document.getElementById("workers-title").textContent,
            points: Number(document.getElementById("chart").dataset.points || 0),
            peak: Number(document.getElementById("chart").dataset.peak || 0),
            marker: window.labTestMarker || null,
        };""")


def click(browser, selector: str) -> bool:
    """Click what ``selector`` finds; False when the page redrew it between the find and the click (it redraws
    its tables every refresh), so that the caller tries again."""
    from selenium.common.exceptions import StaleElementReferenceException

    try:
        browser.find_element("css selector", selector).click()
    except StaleElementReferenceException:
        return False
    return True


def test_the_page_follows_the_queues_and_requeues_a_dead_letter_only_with_the_token(
        real_redis_url, dashboard, worker, browser, tmp_path):
    from selenium.webdriver.support.wait import WebDriverWait

    def until(condition, timeout: float = 15):
        return WebDriverWait(browser, timeout, poll_frequency=0.05).until(lambda _: condition())

    # Given the dashboard, a 1-thread worker on queue "dash", and the page open in chromium
    process, out = dashboard
    assert lab.wait_until(lambda: re.search(r"on (http://\S+)", out.read_text()), timeout=15), out.read_text()
    url = re.search(r"on (http://\S+)", out.read_text())[1]
    worker.ready()
    browser.get(url)
    browser.execute_script("window.labTestMarker = 'opened once'")
    until(lambda: page_state(browser)["alive"].startswith("Alive: 1"))

    # when 10 naps of 80 ms are sent
    sender = lab.make_broker(real_redis_url)
    nap = dramatiq.actor(lambda ms: None, actor_name="nap", queue_name=QUEUE, broker=sender)
    fragile = dramatiq.actor(lambda flag: None, actor_name="fragile", queue_name=QUEUE, broker=sender)
    client = redis.Redis.from_url(real_redis_url)
    try:
        for _ in range(10):
            nap.send(80)
        # then the page shows them waiting, then running down to none, without a reload
        seen = []
        until(lambda: seen.append(page_state(browser)["dash"]) or (seen[-1] or {}).get("ready", 0) > 0)
        until(lambda: seen.append(page_state(browser)["dash"]) or seen[-1] is None)
        waiting = [row["ready"] + row["in_flight"] for row in seen if row]
        assert max(waiting) >= 2 and waiting != sorted(waiting), f"no decrease seen: {waiting}"
        until(lambda: page_state(browser)["peak"] > 0)

        # when a message fails twice (1 retry) and lands in the dead letters
        flag = f"dash-flag-{secrets.token_hex(3)}"
        sent = fragile.send(flag)
        # then its row appears with the actor, its arguments, its tries and the error stored
        until(lambda: any(letter["id"] == sent.message_id for letter in page_state(browser)["letters"]))
        [letter] = page_state(browser)["letters"]
        assert letter["text"][1:6] == [QUEUE, "fragile", f'"{flag}"', "2", f"RuntimeError: {flag} is not set"]
        browser.save_screenshot(str(tmp_path / "dashboard.png"))
        if os.environ.get("LAB_SCREENSHOT"):
            shutil.copyfile(tmp_path / "dashboard.png", ROOT / os.environ["LAB_SCREENSHOT"])

        # when the page's origin POSTs a requeue without the token, then it is refused and nothing moves
        refused = browser.execute_async_script("""
            const done = arguments[arguments.length - 1];
            fetch("api/requeue", {method: "POST", headers: {"Content-Type": "application/json"},
                                  body: JSON.stringify({queue: "dash", message_id: arguments[0]})})
              .then(r => done(r.status), e => done(String(e)));""", sent.message_id)
        assert refused == 403
        assert client.zcard(f"dramatiq:{QUEUE}.XQ") == 1

        # when the flag is set and the requeue button is clicked, and the page's question answered yes
        client.set(flag, 1)
        until(lambda: click(browser, f'tr[data-message-id="{sent.message_id}"] button'), timeout=5)
        until(lambda: _alert(browser) is not None, timeout=5)
        question = browser.switch_to.alert.text
        browser.switch_to.alert.accept()
        # then the message ran once more, succeeded, and its row is gone from the page
        until(lambda: client.get(f"{flag}:ran") == b"1")
        until(lambda: page_state(browser)["letters"] == [])
        assert question.startswith(f"Put fragile({sent.message_id}) back at the end of {QUEUE}?")
        until(lambda: browser.execute_script("return document.getElementById('said').textContent")
              .startswith("Requeued fragile"))
        assert page_state(browser)["marker"] == "opened once", "the page reloaded"
    finally:
        client.close()
        sender.close()

    # and Ctrl-C stops the dashboard with 0
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=10) == 0 and out.read_text().endswith("Stopped.\n")


def _alert(driver):
    from selenium.common.exceptions import NoAlertPresentException

    try:
        return driver.switch_to.alert
    except NoAlertPresentException:
        return None
