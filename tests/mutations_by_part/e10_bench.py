"""Helper I18's mutations: the lessons issue 18 added to Experiment 10 (limits at matched concurrency, the bench).

Each stands for one careless change in the lab that would make its bullet false.
"""

BENCH = "lab:benchmarks/e10_bench.py"
CEILINGS = "lab:benchmarks/e10_ceilings.py"
COMMON = "lab:benchmarks/e10_common.py"
DRAINS = "lab:benchmarks/e10_drains.py"
SENDERS = "lab:benchmarks/e10_senders.py"
PEERS = "lab:benchmarks/e10_peers.py"

MUTATIONS = [
    dict(name="e10-limit-fetches-one-at-a-time",
         lesson="The protocol limit is Dramatiq's own dispatch script",
         edits=[(CEILINGS, "fetched = broker.do_fetch(QUEUE, wanted)", "fetched = broker.do_fetch(QUEUE, 1)")],
         why="the limit's driver fetches one message per call, not the setup's prefetch"),
    dict(name="e10-limit-fetches-past-its-prefetch",
         lesson="The protocol limit is Dramatiq's own dispatch script",
         edits=[(CEILINGS, "lock.wait_for(lambda: held[0] < prefetch)\n            wanted = prefetch - held[0]",
                 "wanted = prefetch")],
         why="the driver fetches a whole prefetch whatever it holds: more unacked than the worker may hold"),
    dict(name="e10-drain-over-the-first-limit-only",
         lesson="Each no-op drain is divided by the limit measured just before it",
         edits=[(BENCH, 'ratios = [d["rate"] / m["rate"] for d, m in zip(runs, limit_runs, strict=True)]',
                 'ratios = [d["rate"] / limit_runs[0]["rate"] for d in runs]')],
         why="every drain is divided by the first limit run: the pairing, and so the alternation, is lost"),
    dict(name="e10-limit-at-one-client",
         lesson="Each no-op drain is divided by the limit measured just before it",
         edits=[(COMMON, "return self.processes * (self.threads + 1)", "return 1")],
         why="redis-benchmark runs with one client whatever the setup"),
    dict(name="e10-latency-from-the-actual-send",
         lesson="Latency counts from when the message was due",
         edits=[(SENDERS, "send(wall_us + round(i * 1_000_000 / rate))", "send(int(time.time() * 1_000_000))")],
         why="latency counted from the actual send: a sender's stall hides"),
    dict(name="e10-latency-in-whole-ms",
         lesson="Latency counts from when the message was due",
         edits=[("lab:e10_throughput.py", "tally.start(batch, latency_ms=(time.time() * 1_000_000 - due_us) / 1000)",
                 "tally.start(batch, latency_ms=(time.time() * 1_000_000 - due_us) // 1000)")],
         why="latency truncated to whole milliseconds"),
    dict(name="e10-interval-at-95",
         lesson="Each figure is a median over its runs, with its range",
         edits=[(COMMON, "if confidence < 0.9:", "if confidence < 0.95:")],
         why="the interval asks 95 %: 5 runs no longer give one"),
    dict(name="e10-bench-imports-the-experiment",
         lesson="The bench imports in one direction",
         edits=[(DRAINS, "import dramatiq\nimport redis\n", "import dramatiq\nimport e10_throughput  # noqa: F401\nimport redis\n")],
         why="a room of the bench imports the experiment: an import circle again"),
    dict(name="e10-bench-polls-every-20ms",
         lesson="The bench's own polling costs under 2 % of a core",
         edits=[(DRAINS, "time.sleep(max(poll_s, so_far / 50, left / 4))", "time.sleep(max(poll_s, so_far / 50))")],
         why="the bench polls every 20 ms all through a drain, however far its end is"),
    dict(name="e10-bench-trusts-the-first-rate",
         lesson="The bench's own polling costs under 2 % of a core",
         edits=[(DRAINS, "left = stored * so_far / done if done >= count / 10 else 0.0", "left = stored * so_far / done if done else 0.0")],
         why="the bench trusts the rate from its first poll and sleeps past the end of a drain that starts slowly"),
    dict(name="e10-bench-polls-not-subtracted",
         lesson="The bench's own polling costs under 2 % of a core",
         edits=[(DRAINS, '"server_cpu_ms_per_message": raw - polls * server_us_per_poll / 1000 / count if raw',
                 '"server_cpu_ms_per_message": raw if raw')],
         why="redis-server's CPU per message keeps what the bench's polls cost it"),
    dict(name="e10-peers-defaults-get-a-thread-pool",
         lesson="At its defaults, each library runs the concurrency its own source sets",
         edits=[(PEERS, '*(["--pool", "threads", "-c", "8"] if matched else [])', '*["--pool", "threads", "-c", "8"]')],
         why="Celery's defaults row runs a pool of 8 threads, not its own prefork default"),
    dict(name="e10-peers-install-line-lost",
         lesson="Without RQ, Huey or Celery installed",
         edits=[(PEERS, 'INSTALL = "pip install -r benchmarks/requirements-peers.txt"', 'INSTALL = "see the README"')],
         why="the report no longer says what to install"),
]
