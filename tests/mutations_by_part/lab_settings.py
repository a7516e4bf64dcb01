"""Helper BC's mutations: the lab's checks of the settings read from the environment (README.rst, Configuration)."""

MUTATIONS = [
    dict(
        name="settings-isdigit",
        lesson="An experiment's own setting is read through",
        edits=[("lab:lab/settings.py", 'if not re.fullmatch(r"[0-9]+", value):', "if not value.isdigit():")],
        why="str.isdigit() accepts '²' (int() then dies with a traceback) and '٣' (int() reads 3): "
            "the check the lab had before, which let e05_heartbeat_timeout=² through",
    ),
    dict(
        name="settings-empty-refused",
        lesson="An experiment's own setting is read through",
        edits=[("lab:lab/settings.py", '    value = os.environ.get(variable, "")\n    if value == "":\n        return None\n',
                '    value = os.environ.get(variable, "")\n')],
        why="an empty e05_* value would be refused, where the README says it means unset",
    ),
    dict(
        name="dramatiq-settings-checked-after-import",
        lesson="Dramatiq's settings are checked by",
        edits=[("lab:lab/__init__.py",
                "from . import settings\nfrom .broker import connect, make_broker, setup_broker, use_broker\n",
                "from .broker import connect, make_broker, setup_broker, use_broker\nfrom . import settings\n")],
        why="lab/broker.py imports dramatiq, which reads dramatiq_queue_prefetch first: Dramatiq's traceback",
    ),
    dict(
        name="dramatiq-setting-forgotten",
        lesson="Dramatiq's settings are checked by",
        edits=[("lab:lab/settings.py",
                '    "dramatiq_restart_delay": (0, 3_600_000, "at import, dramatiq/worker.py; in ms"),\n', "")],
        why="one of the numbers Dramatiq reads at import is no longer checked",
    ),
    dict(
        name="dramatiq-empty-accepted",
        lesson="Dramatiq's settings are checked by",
        edits=[("lab:lab/settings.py", "if value is not None and parse_whole_number(value, low, high) is None:",
                "if value and parse_whole_number(value, low, high) is None:")],
        why="an empty dramatiq_* value passes the lab's check, and Dramatiq dies on int('')",
    ),
    dict(
        name="boot-error-through-the-pipe",
        lesson="Dramatiq's CLI can lose every line of a worker that fails at boot",
        edits=[("lab:lab/settings.py", "        return sys.__stderr__\n", "        return sys.stderr\n")],
        why="the lab's one line goes through the master's log pipe again: a worker failing at boot can lose it",
    ),
    dict(
        name="boot-error-dramatiq-drains-its-pipes",
        lesson="Dramatiq's CLI can lose every line of a worker that fails at boot",
        edits=[("dramatiq:cli.py", "        while pipes and not stop.is_set():\n",
                "        while pipes and not (stop.is_set() and not multiprocessing.connection.wait(pipes, timeout=0)):\n")],
        why="an upstream fix: the log watcher reads what is left in the pipes before it stops, and nothing is lost",
    ),
]
