"""The dashboard's mutations: `python -m lab dashboard` (lab/dashboard.py, its page script, lab/keys.py's requeue).

Each entry is one careless lab change that makes one lesson of README.rst's dashboard section false.
"""

MUTATIONS = [
    dict(name="dashboard-reads-its-own-snapshot", lesson="The page's numbers are status's",
         edits=[("lab:lab/dashboard.py", "return read_snapshot(self.broker, newest=self.newest).as_dict()",
                 "return read_snapshot(self.broker, newest=0).as_dict()")],
         why="the endpoint reads a snapshot of its own making (no dead letters), so it no longer is what status prints"),
    dict(name="dashboard-token-only-has-to-be-there", lesson="Nothing changes on a GET, and nothing without this run's token",
         edits=[("lab:lab/dashboard.py",
                 "if not hmac.compare_digest(self.headers.get(TOKEN_HEADER, \"\").encode(), self.server.token.encode()):",
                 "if TOKEN_HEADER not in self.headers:")],
         why="any token will do: only its header's presence is checked"),
    dict(name="dashboard-requeue-resets-the-retries", lesson="A requeued dead letter keeps its retry count",
         edits=[("lab:lab/keys.py", "        data = pipe.hget(xq_msgs, redis_id)\n",
                 "        data = (pipe.hget(xq_msgs, redis_id) or b\"\").replace(b'\"retries\":1', b'\"retries\":0') or None\n")],
         why="requeue gives the message a fresh set of retries, so failing again it is retried instead of dead at once"),
    dict(name="dashboard-purge-takes-the-dead-letters-too", lesson="Purge from the page removes what",
         edits=[("lab:lab/dashboard.py", "found = purge_queue(self.broker, queue)",
                 "found = purge_queue(self.broker, queue, dead_letters=True)")],
         why="the page's purge also deletes the dead letters, which `python -m lab purge` keeps without --dead-letters"),
    dict(name="dashboard-listens-everywhere", lesson="It listens on 127.0.0.1 unless told",
         edits=[("lab:lab/dashboard.py", 'LOOPBACK = "127.0.0.1"', 'LOOPBACK = "0.0.0.0"')],
         why="the default address is every interface, as Dramatiq's Prometheus exporter's is"),
    dict(name="dashboard-port-in-use-is-a-traceback", lesson="A port in use is one line and exit 4. A port out of range",
         edits=[("lab:lab/dashboard.py", "raise Failure(line, EXIT_CANNOT_LISTEN) from None", "raise")],
         why="the OSError of a port in use escapes as a traceback, exit 1"),
    dict(name="dashboard-page-never-refreshes", lesson="In a real browser, the page follows the queues",
         edits=[("lab:lab/dashboard.js", "setInterval(refresh, INTERVAL_MS);", "")],
         why="the page draws the first snapshot only: it changes on a reload, never by itself"),
]
