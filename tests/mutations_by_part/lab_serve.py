"""Helper A's mutations: the serve lessons of the lab's own section (lab/server.py).

Each entry is one careless lab change that makes one README lesson false. The first half of
the first lesson (fakeredis 2.40 closes the connection) is fakeredis's own behaviour: no target
here can mutate it; `python -m lab canary` is what watches it (it fails on fakeredis 2.41).
"""

MUTATIONS = [
    dict(name="serve-error-reply-closes-again", lesson="The kept connection alone is enough",
         edits=[("lab:lab/server.py",
                 "            return exc  # encoded as an error reply, like the handler does before it disconnects",
                 "            raise")],
         why="the wrapper prints the error reply, then re-raises it, so fakeredis 2.40 closes the connection"),
    dict(name="serve-scripts-loaded-with-another-sha", lesson="under the same SHA1s that Dramatiq's",
         edits=[("lab:lab/server.py",
                 "{name: client.script_load(source) for name, source in dramatiq_scripts().items()}",
                 '{name: client.script_load(source + "\\n") for name, source in dramatiq_scripts().items()}')],
         why="the scripts are loaded with a newline added, so the server caches them under other SHA1s than Dramatiq's"),
    dict(name="serve-scripts-not-loaded", lesson="the server sends no error reply at all",
         edits=[("lab:lab/server.py", "        self.script_shas = self._load_scripts()\n",
                 "        self.script_shas: dict[str, str] = {}\n")],
         why="the embedded server no longer preloads Dramatiq's scripts: every first EVALSHA gets NOSCRIPT"),
    dict(name="serve-catches-the-wrong-error", lesson="The lab's server keeps it open",
         edits=[("lab:lab/server.py", "        except redis.ResponseError as exc:\n            self._on_error(exc)",
                 "        except redis.ConnectionError as exc:\n            self._on_error(exc)")],
         why="the wrapper catches the wrong class, so a NOSCRIPT reply reaches fakeredis and closes the connection"),
    dict(name="serve-scripts-loaded-into-another-server", lesson="carries a real 4-thread worker and a sender",
         edits=[("lab:lab/server.py", "        client = fakeredis.FakeRedis(server=self.server.fake_server)\n",
                 "        client = fakeredis.FakeRedis()\n")],
         why="serve loads the scripts into a private FakeServer of its own, not the one it serves"),
]
