"""``python -m lab status --watch`` fits a terminal: the workers and dead letters stay on screen.

These tests need no Redis: they render snapshots built by hand, at a terminal's size.
"""

import time

from lab.keys import QueueCounts
from lab.status import DeadLetterRow, Heartbeat, Snapshot, render

from rich.console import Console


def snapshot(busy: int, idle: int, workers: int, dead: int) -> Snapshot:
    now = int(time.time() * 1000)
    queues = ([QueueCounts(f"busy{i:02d}", ready=i + 1) for i in range(busy)]
              + [QueueCounts(f"idle{i:02d}") for i in range(idle)])
    beats = [Heartbeat(f"worker-{i}", now - 100 * i, True, i) for i in range(workers)]
    letters = [DeadLetterRow("busy00", "unhandled", [17], {}, f"id-{i}", now - 1000 * i, 4,
                             "ValueError: a long error message that would wrap over several lines " * 2)
               for i in range(dead)]
    return Snapshot("redis://127.0.0.1:6379/0", now, 60_000, queues, beats, letters)


def screen(view, columns: int = 80, lines: int = 24) -> list[str]:
    console = Console(width=columns, height=lines, record=True, force_terminal=False)
    console.print(view)
    return console.export_text().splitlines()


def test_status_watch_at_80x24_keeps_the_workers_and_dead_letters_on_screen_with_17_queues():
    # Given 17 queues (5 busy, 12 idle), 5 workers and 5 dead letters
    state = snapshot(busy=5, idle=12, workers=5, dead=5)

    # When the live view renders them in an 80x24 terminal (a line kept for the cursor and one for the footer)
    shown = screen(render(state, (80, 23)))

    # Then it fits, the idle queues are one line, and the workers and the dead letters are there
    assert len(shown) == 23, "\n".join(shown)  # fits, and what the queues leave goes to workers and dead letters
    assert max(map(len, shown)) <= 80
    assert all(f"busy{i:02d}" in "\n".join(shown) for i in range(5))
    assert [line for line in shown if "idle queue(s)" in line] == [
        next(line for line in shown if line.startswith("12 idle queue(s): idle00, idle01"))]
    assert "Alive: 5" in "\n".join(shown) and "worker-0" in "\n".join(shown)
    dead_rows = [line for line in shown if "unhandled" in line]
    assert len(dead_rows) >= 3, "\n".join(shown)


def test_busy_queues_come_first_and_the_ones_that_do_not_fit_are_counted():
    # Given 20 busy queues: more than 24 lines can hold beside the workers and the dead letters
    state = snapshot(busy=20, idle=0, workers=3, dead=3)

    # When it renders at 80x24
    shown = screen(render(state, (80, 23)))

    # Then the fullest queues come first, the rest are counted, and the workers and dead letters still show
    text = "\n".join(shown)
    assert len(shown) <= 23, text
    rows = [line.split()[0] for line in shown if line.strip().startswith("busy")]
    assert rows[:2] == ["busy19", "busy18"], text
    assert f"... and {20 - len(rows)} more busy queue(s)" in text
    assert "worker-2" in text and len([line for line in shown if "unhandled" in line]) == 3


def test_a_plain_status_shows_every_busy_queue_worker_and_dead_letter():
    # Given the same 20 busy queues; When status prints once, with no terminal size to fit
    shown = screen(render(snapshot(busy=20, idle=2, workers=6, dead=5)), lines=200)

    # Then nothing is cut: every busy queue, every worker, every dead letter, and the idle ones in one line
    text = "\n".join(shown)
    assert all(f"busy{i:02d}" in text for i in range(20))
    assert all(f"worker-{i}" in text for i in range(6))
    assert "2 idle queue(s): idle00, idle01" in text and "more busy" not in text
