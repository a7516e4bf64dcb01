"""Helper e15's mutations: the lessons of Experiment 15 (monitoring with Prometheus).

Each entry is one careless upstream (or lab) change that makes one lesson false.
"""

PROM = "dramatiq:middleware/prometheus.py"
RMQ = "dramatiq:brokers/rabbitmq.py"  # the RabbitMQ proofs: a change there, Redis never sees it

MUTATIONS = [
    dict(name="e15-prometheus-on-by-default", lesson="The Prometheus middleware is not on by default",
         edits=[("dramatiq:middleware/__init__.py", "default_middleware = [\n    AgeLimit,",
                 "from .prometheus import Prometheus  # noqa: E402\n\ndefault_middleware = [\n    Prometheus,\n    AgeLimit,")],
         why="Dramatiq puts Prometheus back among its default middleware, as 1.x had it"),
    dict(name="e15-default-host-loopback", lesson="Unset, the exposition server listens on every interface",
         edits=[(PROM, 'os.getenv("dramatiq_prom_host", "0.0.0.0")', 'os.getenv("dramatiq_prom_host", "127.0.0.1")')],
         why="the exposition server listens on loopback unless told"),
    dict(name="e15-lab-listens-everywhere", lesson="The lab starts its workers with",
         edits=[("lab:scenarios/e15_monitoring.py", 'dramatiq_prom_host="127.0.0.1"', 'dramatiq_prom_host="0.0.0.0"')],
         why="the lab's workers listen on every interface"),
    dict(name="e15-total-counts-successes-only", lesson="dramatiq_messages_total counts attempts",
         edits=[(PROM, "        self.total_messages.labels(*labels).inc()\n",
                 "        if exception is None:\n            self.total_messages.labels(*labels).inc()\n")],
         why="the messages counter counts only attempts that succeeded"),
    dict(name="e15-rejects-count-acks", lesson="dramatiq_message_errors_total counts failed attempts",
         edits=[(PROM, "    def after_nack(self, broker, message):", "    def after_ack(self, broker, message):")],
         why="the rejects counter counts acks instead of nacks"),
    dict(name="e15-retries-counted-once", lesson="dramatiq_message_retries_total counts each retry twice",
         edits=[(PROM, '        if "retries" in message.options:', '        if "retries" in message.options and delay:')],
         why="a retry is counted when Retries enqueues it, not again when it leaves the delay queue"),
    dict(name="e15-histogram-skips-failures", lesson="The duration histogram",
         edits=[(PROM, "        self.message_durations.labels(*labels).observe(message_duration)\n",
                 "        if exception is None:\n"
                 "            self.message_durations.labels(*labels).observe(message_duration)\n")],
         why="only successful attempts are timed"),
    dict(name="e15-inprogress-counts-twice", lesson="dramatiq_messages_inprogress was 1 while",
         edits=[(PROM, "        self.inprogress_messages.labels(*labels).inc()\n",
                 "        self.inprogress_messages.labels(*labels).inc(2)\n")],
         why="a running message counts 2 in progress"),
    dict(name="e15-delayed-gauge-fixed", lesson="dramatiq_delayed_messages_inprogress never comes back down",
         edits=[(PROM, "from ..common import current_millis", "from ..common import current_millis, q_name"),
                (PROM, "    def before_delay_message(self, broker, message):\n"
                       "        labels = (message.queue_name, message.actor_name)",
                 "    def before_delay_message(self, broker, message):\n"
                 "        labels = (q_name(message.queue_name), message.actor_name)")],
         why="the delayed gauge counts up on the canonical queue's label (upstream pull request 876)"),
    dict(name="e15-db-cleared-at-start", lesson="Counters survive a restart when dramatiq_prom_db is kept",
         edits=[(PROM, "os.makedirs(DB_PATH, exist_ok=True)",
                 "import shutil  # noqa: E402\nshutil.rmtree(DB_PATH, ignore_errors=True)\n"
                 "os.makedirs(DB_PATH, exist_ok=True)")],
         why="the directory is cleared whenever a process imports the middleware, as its comment says"),
    dict(name="e15-metrics-on-worker-boot", lesson="Under a plain dramatiq.Worker (no CLI) every hook",
         edits=[(PROM, "    def after_worker_shutdown(self, broker, worker):",
                 "    def after_worker_boot(self, broker, worker):\n        self.after_process_boot(broker)\n\n"
                 "    def after_worker_shutdown(self, broker, worker):")],
         why="the metrics are made at worker boot too (upstream pull request 891)"),
    dict(name="e15-process-boot-after-modules", lesson="Loaded as a worker's second module",
         edits=[("dramatiq:cli.py", '        broker.emit_after("process_boot")\n\n'
                 '        logger.debug("Loading modules...")\n'
                 "        for module in args.modules:\n            importlib.import_module(module)\n",
                 '        logger.debug("Loading modules...")\n'
                 "        for module in args.modules:\n            importlib.import_module(module)\n"
                 '        broker.emit_after("process_boot")\n')],
         why="the CLI emits process_boot once every module is imported"),
    dict(name="e15-port-from-0", lesson="Bad input is one line: a usage error with exit 2, a bad",
         edits=[("lab:e15_monitoring.py", 'whole_number("dramatiq_prom_port", 1, 65_535)',
                 'whole_number("dramatiq_prom_port", 0, 65_535)')],
         why="the lab lets port 0 through"),
    dict(name="e15-rabbitmq-nack-requeues", lesson="dramatiq_message_errors_total counts failed attempts",
         edits=[(RMQ, "partial(self.channel.basic_nack, tag, requeue=False)",
                 "partial(self.channel.basic_nack, tag, requeue=True)")],
         why="on RabbitMQ a nack puts the message back instead of dead-lettering it: fail and expire run again"),
    dict(name="e15-rabbitmq-delayed-enqueue-unseen", lesson="dramatiq_message_retries_total counts each retry twice",
         edits=[(RMQ, '                self.emit_after("enqueue", message, delay)\n',
                 '                if delay is None:\n                    self.emit_after("enqueue", message, delay)\n')],
         why="RabbitMQ's broker stops telling middleware about a delayed enqueue: a retry is counted once"),
    dict(name="e15-rabbitmq-delays-on-the-queue-itself", lesson="never comes back down on 2.2.1",
         edits=[(RMQ, "            queue_name = dq_name(queue_name)\n", "")],
         why="RabbitMQ's broker keeps a delayed message on its own queue (with its eta), not on <queue>.DQ"),
]
