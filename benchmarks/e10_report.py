"""Experiment 10's report, for people: rich tables and a bar chart, the README's reST table, or JSON.

Everything here reads the report dict that ``benchmarks/e10_bench.py`` returns; nothing measures.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path
from typing import Any

from rich.bar import Bar
from rich.console import Console
from rich.markup import escape
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script, benchmarks/ comes first on the path, not the lab
    sys.path.insert(0, str(ROOT))

from lab import stats  # noqa: E402

ACTORS = {"noop": "does_nothing", "io": "waits_on_io", "cpu": "burns_cpu"}


def rate(value: float) -> str:
    return f"{value:,.0f}"


def span(fig: dict[str, Any] | None, fmt: str = "{:,.0f}") -> str:
    """A figure's range over its runs, "low-high", as README.rst prints every range."""
    return "n/a" if fig is None else stats.span([fig["min"], fig["max"]], fmt)


def ms(fig: dict[str, Any] | None, digits: int = 1) -> str:
    return "n/a" if fig is None else f"{fig['median']:.{digits}f}"


def conditions_line(report: dict[str, Any]) -> str:
    c = report["conditions"]
    load = c.get("load_average") or []
    load = f", load average {load[0]:.1f} at the start and {load[-1]:.1f} at the end" if load else ""
    return (f"{c['server']} at {c['url']}; Python {c['python']}, Dramatiq {c['dramatiq']}, redis-py {c['redis_py']}, "
            f"{c['cores']} cores{load}; every figure a median and its range over {report['runs']} runs "
            f"({report['plan']} plan, {report['elapsed_s']:.0f} s in all)")


def rows(report: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(figure, median, range, fraction of the single-client ceiling) for every figure of the report."""
    ceiling = report["ceiling"]["single"]["median"]

    def of(value: float) -> str:
        return f"{value / ceiling:.0%}"

    runs = len(report["ceiling"]["single"]["runs"])
    out = [(f"Raw ceiling, 1 client, LPUSH+RPOP pairs/s ({runs} runs: start, end)", rate(ceiling),
            span(report["ceiling"]["single"]), "100%"),
           ("Raw ceiling, 1 client, pipelined, 100 pairs per round trip",
            rate(report["ceiling"]["pipelined"]["median"]), span(report["ceiling"]["pipelined"]),
            of(report["ceiling"]["pipelined"]["median"]))]
    one, many = report["enqueue"]["one_sender"], report["enqueue"].get("senders")
    out.append(("Enqueue, send() from 1 process, msg/s", rate(one["rate"]["median"]), span(one["rate"]),
                of(one["rate"]["median"])))
    if many:
        out.append((f"Enqueue, send() from {many['processes']} processes together, msg/s",
                    rate(many["rate"]["median"]), span(many["rate"]), of(many["rate"]["median"])))
    for row in report["processing"]:
        prefetch = f"prefetch {row['prefetch']}" + ("" if row["prefetch_set"] else " (default)")
        out.append((f"Drain, {row['processes']}×{row['threads']}, {prefetch}, {row['actor']}, msg/s",
                    rate(row["rate"]["median"]), span(row["rate"]), of(row["rate"]["median"])))
    latency = report["latency"]
    for load, name in (("light", "light load"), ("saturated", "near saturation")):
        info = latency.get(load)
        if info is None:
            continue
        for p in (50, 95, 99):
            out.append((f"Latency p{p}, {name} ({rate(info['achieved_rate']['median'])} msg/s, "
                        f"{info['actor_ms']} ms actor), ms",
                        ms(info[f"p{p}"]), span(info[f"p{p}"], "{:.1f}"), ""))
    for key in ("idle_1000", "idle_100"):
        info = latency.get(key)
        if info is not None:
            out.append((f"First message after idle, worker_timeout {info['worker_timeout']} ms "
                        f"({info['samples']} samples), ms", ms(info["ms"], 0), span(info["ms"]), ""))
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
    lines.append("Set dramatiq_queue_prefetch to at least what one worker process runs in 10 ms (64 covers "
                 "6,400 msg/s per process), or run more threads.")
    return lines


def recommended_text(report: dict[str, Any]) -> str:
    rec = report["recommended"]
    if not rec:
        return ""
    verdict = "reaches" if rec["met"] else "does NOT reach"
    text = (f"Recommended here: {rec['processes']} processes x {rec['threads']} threads, "
            f"dramatiq_queue_prefetch={rec['prefetch']}: {rate(rec['rate'])} msg/s, {rec['of_ceiling']:.0%} of the "
            f"single-client ceiling ({rate(rec['ceiling'])} pairs/s); it {verdict} the {rec['target']:.0%} goal.")
    return text + (f" Why: {rec['why']}." if rec["why"] else "")


def consistency_text(report: dict[str, Any]) -> str:
    c = report["consistency"]
    processes = sum(len(w["pids"]) for w in c["workers"])
    if c["ok"]:
        return (f"Consistency: {c['sent']:,} messages sent to workers in {c['batches']} batches, {c['processed']:,} "
                f"run; nothing left in any queue; {len(c['workers'])} dramatiq workers ({processes} processes) "
                "stopped with exit code 0.")
    return "Consistency: NOT OK: " + "; ".join(c["problems"])


def show_rich(report: dict[str, Any], out: Console) -> None:
    out.rule("Experiment 10: throughput and latency")
    out.print(escape(conditions_line(report)))
    if report["conditions"]["note"]:
        out.print(f"[bold red]{escape(report['conditions']['note'])}[/]")
    table = Table("figure", "median", "range", "of ceiling", box=None, title="Measured")
    for name, median, low_high, of in rows(report):
        table.add_row(escape(name), median, low_high, of)
    out.print(table)

    chart = Table("", "", "msg/s", box=None, title="Drains, msg/s, beside the single-client ceiling (pairs/s)")
    ceiling = report["ceiling"]["single"]["median"]
    bars = [("raw ceiling, 1 client", ceiling, "cyan")]
    bars += [(f"{r['config']}, {r['actor']}", r["rate"]["median"], "green" if r["kind"] == "noop" else "yellow")
             for r in report["processing"]]
    top = max(value for _, value, _ in bars)
    for label, value, colour in bars:
        chart.add_row(escape(label), Bar(top, 0, value, width=40, color=colour), rate(value))
    out.print(chart)

    latency = Table("latency, ms (send to actor start)", "rate, msg/s", "p50", "p95", "p99", box=None)
    for load, name in (("light", "light load"), ("saturated", "near saturation")):
        info = report["latency"].get(load)
        if info:
            latency.add_row(f"{name} ({info['senders']} sender process(es))",
                            f"{rate(info['offered_rate'])} offered, {rate(info['achieved_rate']['median'])} sent",
                            *(f"{ms(info[f'p{p}'])} ({span(info[f'p{p}'], '{:.1f}')})" for p in (50, 95, 99)))
    for key in ("idle_1000", "idle_100"):
        info = report["latency"].get(key)
        if info:
            latency.add_row(f"first after idle, worker_timeout {info['worker_timeout']}", f"{info['samples']} samples",
                            f"{ms(info['ms'], 0)} ({span(info['ms'])})", "", "")
    out.print(latency)
    out.print("[bold]The 1-thread trap[/]")
    for line in trap_text(report):
        out.print(f"  {escape(line)}")
    out.print(escape(recommended_text(report)))
    colour = "green" if report["consistency"]["ok"] else "red"
    out.print(f"[{colour}]{escape(consistency_text(report))}[/]")


def rst(report: dict[str, Any]) -> str:
    """README.rst's table of this run, with its conditions: paste it over the old one."""
    header = ("figure", "median", f"range, {report['runs']} runs", "of ceiling")
    body = rows(report)
    widths = [max(len(r[i]) for r in (header, *body)) for i in range(4)]
    rule = "  ".join("=" * w for w in widths)

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(cell.ljust(w) for cell, w in zip(cells, widths, strict=True)).rstrip()

    note = report["conditions"]["note"]
    lines = textwrap.wrap(f"Measured by ``python e10_throughput.py --rst``: {conditions_line(report)}.", 78)
    if note:
        lines += ["", *textwrap.wrap(f"**{note}**", 78)]
    lines += ["", rule, line(header), rule, *(line(r) for r in body), rule, "", "From the same run:", ""]
    for text in (*trap_text(report), recommended_text(report), consistency_text(report)):
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
