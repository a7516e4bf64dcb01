"""Experiment 10's report, for people: rich tables, the README's reST tables, or JSON.

Everything here reads the report dict that ``benchmarks/e10_bench.py`` returns; nothing measures.
``python benchmarks/e10_report.py saved.json [--rst]`` shows a saved ``--json`` report again.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script, benchmarks/ comes first on the path, not the lab
    sys.path.insert(0, str(ROOT))

from lab import stats  # noqa: E402

Tables = list[tuple[str, tuple[str, ...], list[tuple[str, ...]]]]  # (title, header, rows)


def rate(value: float) -> str:
    return f"{value:,.0f}"


def span(fig: dict[str, Any] | None, fmt: str = "{:,.0f}") -> str:
    """A figure's range over its runs, "low-high", as README.rst prints every range."""
    return "n/a" if fig is None else stats.span([fig["min"], fig["max"]], fmt)


def med(fig: dict[str, Any] | None, fmt: str = "{:,.0f}") -> str:
    """A figure as "median (low-high)"."""
    return "n/a" if fig is None else f"{fmt.format(fig['median'])} ({span(fig, fmt)})"


def conditions_line(report: dict[str, Any]) -> str:
    c = report["conditions"]
    load = c.get("load_average") or []
    load = f", load average {load[0]:.1f} at the start and {load[-1]:.1f} at the end" if load else ""
    return (f"{c['server']} at {c['url']}; Python {c['python']}, Dramatiq {c['dramatiq']}, redis-py {c['redis_py']}, "
            f"{c['cores']} cores{load}; every figure a median and its range over {report['runs']} runs, "
            f"limits and drains alternating ({report['plan']} plan, {report['elapsed_s']:.0f} s in all)")


def tables(report: dict[str, Any]) -> Tables:
    """Every figure of the report, as three tables: Redis's limit, drains against the protocol limit, the rest."""
    out: Tables = []
    benchmarked = [m for m in report["limits"] if m["redis_benchmark"].get("available")]
    if benchmarked:
        names = [k for k, v in benchmarked[0]["redis_benchmark"].items() if isinstance(v, dict)]
        seen, body = set(), []
        for m in benchmarked:
            if m["clients"] in seen:
                continue
            seen.add(m["clients"])
            rb = m["redis_benchmark"]
            body.append((str(m["clients"]), *(f"{rate(rb[n]['single']['median'])} / "
                                               f"{rate(rb[n]['pipelined']['median'])}"
                                               for n in names)))
        out.append(("redis-benchmark on the same server, requests/s, one at a time / 16 per round trip "
                    "(clients: a consumer and its threads per worker process)", ("clients", *names), body))
    body = []
    for m in report["limits"]:
        drain = next(r for r in report["processing"] if r["config"] == m["config"] and r["kind"] == "noop")
        body.append((m["config"], str(m["prefetch"]), med(m["rate"]), med(drain["rate"]),
                     med(m["of_limit"], "{:.0%}"), f"{drain['cpu_ms_per_message']['median']:.3f}",
                     f"{m['cpu_ms_per_message']['median']:.3f}",
                     "n/a" if drain["server_cpu_ms_per_message"] is None
                     else f"{drain['server_cpu_ms_per_message']['median']:.3f} "
                          f"({drain['server_cpu_ms_per_message_with_polls']['median']:.3f})",
                     f"{drain['bench_core_share']['median']:.1%}"))
    out.append(("does_nothing drained by the workers, against Dramatiq's protocol limit at the same processes, "
                "threads and prefetch (the dispatch script driven with no actor and no worker); msg/s; CPU ms a "
                "message; redis-server's net of the bench's polls (with them)",
                ("setup", "prefetch", "limit", "drain", "drain / limit", "CPU workers", "CPU drivers",
                 "CPU redis", "bench, of a core"), body))
    body = []
    one, many = report["enqueue"]["one_sender"], report["enqueue"].get("senders")
    body.append(("Enqueue, send() from 1 process, msg/s", med(one["rate"])))
    if many:
        body.append((f"Enqueue, send() from {many['processes']} processes together, msg/s", med(many["rate"])))
    e2e = report.get("end_to_end")
    if e2e:
        body.append((f"End to end, {e2e['messages']:,} no-ops sent by {e2e['senders']} processes while {e2e['config']} "
                     "drains, first send to last ack, msg/s", med(e2e["rate"])))
    for r in report["processing"]:
        if r["kind"] != "noop":
            body.append((f"Drain, {r['config']}, {r['actor']}, msg/s", med(r["rate"])))
    for load, name in (("light", "light load"), ("saturated", "near saturation")):
        info = report["latency"].get(load)
        if info:
            for p in (50, 95, 99):
                body.append((f"Latency p{p}, {name} ({rate(info['achieved_rate']['median'])} msg/s, {info['actor_ms']} "
                             f"ms actor, {info['samples']} samples), ms", med(info[f"p{p}"], "{:.1f}")))
    for key in ("idle_1000", "idle_100"):
        info = report["latency"].get(key)
        if info:
            body.append((f"First message after idle, worker_timeout {info['worker_timeout']} ms "
                         f"({info['samples']} samples), ms", med(info["ms"])))
    out.append(("Enqueue, end to end, the other actors, latency (due time to actor start)",
                ("figure", "median (range)"), body))
    peers = report.get("peers") or {}
    if peers.get("available"):
        limit = peers.get("redis_limit")
        body = [(f"{r['library']} {r['version']}", r["kind"] + (f" {r['ms']} ms" if r["ms"] else ""),
                 f"{r['setup']}: {r['workers']}", med(r["rate"]), f"{r['of_redis']:.1%}" if "of_redis" in r else "n/a",
                 med(r["enqueue"]), f"{r['cpu_ms_per_job']['median']:.2f}", f"{r['commands_per_job']['median']:.1f}",
                 "yes" if r["ran_once"] else "NO") for r in peers["rows"]]
        out.append(("The same jobs on the same Redis, Dramatiq beside RQ, Huey and Celery, each at its defaults "
                    "and at 2 processes x 8 threads (RQ: 2 processes, a fork per job), alternating; jobs/s; of "
                    f"{limit['what'] if limit else 'the Redis limit'}",
                    ("library", "job", "workers", "drain", "of Redis", "enqueue", "CPU ms a job",
                     "Redis commands a job", "each ran once"), body))
    return out


def trap_text(report: dict[str, Any]) -> list[str]:
    """The 1-thread trap, explained with this run's numbers."""
    trap, lines = report["trap"], []
    one = trap.get("one_thread")
    if one is None:
        return lines
    lines.append(
        f"1 thread ran {rate(one['rate'])} msg/s. Its consumer fetches at most prefetch = {one['prefetch']} "
        f"messages (2 x threads), and while it holds that many unacked it does not wait for an ack: it sleeps "
        f"{trap['sleep_range_ms'][0]}-{trap['sleep_range_ms'][1]} ms (Dramatiq's compute_backoff, mean "
        f"{trap['sleep_ms']:.1f} ms). So at most {one['prefetch']} / {trap['sleep_ms']:.1f} ms = "
        f"{rate(one['bound'])} msg/s.")
    if "messages_per_fetch" in one:
        lines.append(f"Counted on the server: {one['messages_per_fetch']:.1f} messages per fetch, one fetch every "
                     f"{one['ms_per_fetch']:.1f} ms.")
    raised = trap.get("raised")
    if raised is not None:
        lines.append(
            f"With prefetch {raised['prefetch']} ({raised['config']}) it ran {rate(raised['rate'])} msg/s: "
            f"{raised['per_message_ms']:.2f} ms per message, its ack's round trip included."
            + (f" Sleep plus work: {one['prefetch']} / ({trap['sleep_ms']:.1f} + {one['prefetch']} x "
               f"{raised['per_message_ms']:.2f}) ms = {rate(one['model'])} msg/s predicted for 1 thread."
               if "model" in one else ""))
    eight = trap.get("eight_threads")
    if eight is not None:
        lines.append(f"8 threads (prefetch {eight['prefetch']}) meet the same wall at {eight['prefetch']} / "
                     f"{trap['sleep_ms']:.1f} ms = {rate(eight['bound'])} msg/s; measured {rate(eight['rate'])}.")
    return lines


def recommended_text(report: dict[str, Any]) -> str:
    rec = report["recommended"]
    if not rec:
        return ""
    return (f"Recommended here: {rec['processes']} x {rec['threads']} (processes x threads), "
            f"dramatiq_queue_prefetch={rec['prefetch']}: {rate(rec['rate'])} msg/s, {rec['of_limit']:.0%} of "
            f"Dramatiq's protocol limit at the same concurrency ({rate(rec['limit'])} msg/s). Where the rest goes: "
            f"{rec['why']}.")


def consistency_text(report: dict[str, Any]) -> str:
    c = report["consistency"]
    processes = sum(len(w["pids"]) for w in c["workers"])
    if c["ok"]:
        return (f"Consistency: {c['sent']:,} messages sent to workers in {c['batches']} batches, {c['processed']:,} "
                f"run; nothing left in any queue; {len(c['workers'])} dramatiq workers ({processes} processes) "
                "stopped with exit code 0.")
    return "Consistency: NOT OK: " + "; ".join(c["problems"])


def polling_text(report: dict[str, Any]) -> str:
    """What the bench's own polling cost, measured, and what was subtracted for it."""
    cost, shares = report.get("polling"), [r["bench_core_share"]["max"] for r in report["processing"]]
    if not cost or not shares:
        return ""
    server = (f" and redis-server {cost['server_us']:.1f} µs, subtracted from its CPU per message for every poll "
              "a drain made" if cost["server_us"] is not None else "")
    return (f"The bench's polling: one poll cost the bench {cost['bench_us']:.0f} µs of CPU ({cost['polls']} back to "
            f"back){server}; during the drains the bench process took at most {max(shares):.1%} of one core.")


def peers_text(report: dict[str, Any]) -> list[str]:
    peers = report.get("peers")
    if not peers:
        return []
    return [peers["note"]] if peers.get("note") else []


def show_rich(report: dict[str, Any], out: Console) -> None:
    out.rule("Experiment 10: throughput and latency")
    out.print(escape(conditions_line(report)))
    if report["conditions"]["note"]:
        out.print(f"[bold red]{escape(report['conditions']['note'])}[/]")
    for title, header, body in tables(report):
        table = Table(*header, box=None, title=escape(title), title_justify="left")
        for cells in body:
            table.add_row(*map(escape, cells))
        out.print(table)
    out.print("[bold]The 1-thread trap[/]")
    for line in trap_text(report):
        out.print(f"  {escape(line)}")
    out.print(escape(recommended_text(report)))
    out.print(escape(polling_text(report)))
    for line in peers_text(report):
        out.print(escape(line))
    colour = "green" if report["consistency"]["ok"] else "red"
    out.print(f"[{colour}]{escape(consistency_text(report))}[/]")


def rst_table(header: tuple[str, ...], body: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in (header, *body)) for i in range(len(header))]
    rule = "  ".join("=" * w for w in widths)

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(cell.ljust(w) for cell, w in zip(cells, widths, strict=True)).rstrip()

    return [rule, line(header), rule, *(line(r) for r in body), rule]


def rst(report: dict[str, Any]) -> str:
    """README.rst's tables of this run, with its conditions: paste them over the old ones."""
    note = report["conditions"]["note"]
    lines = textwrap.wrap(f"Measured by ``python e10_throughput.py --rst``: {conditions_line(report)}.", 78)
    if note:
        lines += ["", *textwrap.wrap(f"**{note}**", 78)]
    for title, header, body in tables(report):
        lines += ["", *textwrap.wrap(title + ":", 78), "", *rst_table(header, body)]
    lines += ["", "From the same run:", ""]
    for text in (*trap_text(report), recommended_text(report), polling_text(report), *peers_text(report),
                 consistency_text(report)):
        lines += textwrap.wrap(text, 76, initial_indent="- ", subsequent_indent="  ")
    return "\n".join(lines)


def show(report: dict[str, Any], *, as_json: bool = False, as_rst: bool = False) -> None:
    if as_json:
        print(json.dumps(report, indent=2))
    elif as_rst:
        print(rst(report))
    else:
        show_rich(report, Console(highlight=False))


if __name__ == "__main__":  # python benchmarks/e10_report.py REPORT.json [--rst]: show a saved --json report again
    with open(sys.argv[1], encoding="utf-8") as saved:
        show(json.load(saved), as_rst="--rst" in sys.argv[2:])
