"""rabbit-lab-2's mutations: status, purge and `python -m lab rabbitmq` on RabbitMQ, and the lessons of
e01-e12 that hold on RabbitMQ too (tests/test_rabbitmq_lessons.py).

Each entry is one careless change that makes one lesson false. Where the lesson also holds on Redis, the
change is to Dramatiq's RabbitMQ broker (or the lab's RabbitMQ side), so only the RabbitMQ proof can catch it.
"""

RABBIT = "dramatiq:brokers/rabbitmq.py"
STATUS = "lab:lab/rabbit_status.py"

MUTATIONS = [
    # -- status, purge, dashboard on RabbitMQ (README, "A private RabbitMQ") --
    dict(name="rabbit2-status-no-in-flight", lesson="python -m lab status --broker amqp://... shows, per queue",
         edits=[(STATUS, 'in_flight=count(q, "messages_unacknowledged")', "in_flight=0")],
         why="status forgets the unacknowledged messages a worker holds"),
    dict(name="rabbit2-status-held-delayed-lost", lesson="python -m lab status --broker amqp://... shows, per queue",
         edits=[(STATUS, '(count(f"{q}.DQ", "messages_unacknowledged")\n', '(0\n')],
         why="delayed counts only the delayed messages no worker took, with the management API"),
    dict(name="rabbit2-status-silent-fallback", lesson="python -m lab status --broker amqp://... shows, per queue",
         edits=[(STATUS, 'via = f"AMQP only ({listed}): in flight unknown', 'via = f"AMQP ({listed}): in flight')],
         why="the AMQP fallback does not say what it cannot count"),
    dict(name="rabbit2-purge-skips-delay-queue", lesson="python -m lab status --broker amqp://... shows, per queue",
         edits=[(STATUS, '(f"{queue}.DQ", "delayed"), ', "")],
         why="purge leaves the delayed messages in q.DQ"),
    dict(name="rabbit2-dashboard-requeues", lesson="python -m lab status --broker amqp://... shows, per queue",
         edits=[("lab:lab/dashboard.py", '        raise LookupError(f"no dead letter {message_id} listed in {queue}: ',
                 '        return (f"no dead letter {message_id} listed in {queue}: ')],
         why="the dashboard pretends to requeue on RabbitMQ"),
    dict(name="rabbit2-port-in-use-exit-3", lesson="A learner starts the same server with python -m lab rabbitmq",
         edits=[("lab:lab/private_rabbit.py", "                          EXIT_CANNOT_LISTEN) from None\n\n\n@click",
                 "                          EXIT_UNREACHABLE) from None\n\n\n@click")],
         why="a port in use exits 3 instead of 4"),
    dict(name="rabbit2-missing-server-no-apt", lesson="A learner starts the same server with python -m lab rabbitmq",
         edits=[("lab:lab/private_rabbit.py", 'raise Failure("rabbitmq-server is not installed: apt-get install '
                 'rabbitmq-server (the system service "',
                 'raise Failure("rabbitmq-server is not installed (the system service "')],
         why="a missing rabbitmq-server does not say how to install it"),
    # -- the lessons of e01-e12 on RabbitMQ (docs/eNN_*.rst) --
    dict(name="rabbit2-e01-send-misses-its-queue", lesson="only enqueues, and a worker thread runs the message, once",
         edits=[(RABBIT, "                    routing_key=queue_name,\n",
                 "                    routing_key=queue_name if delay else canonical_queue_name + '.DQ',\n")],
         why="a send that does not put the message in its queue"),
    dict(name="rabbit2-e02-retry-not-delayed", lesson="One example draw with min_backoff=100",
         edits=[(RABBIT, "        if delay is not None:\n            queue_name = dq_name(queue_name)",
                 "        if delay is not None and not message.options.get('retries'):\n"
                 "            queue_name = dq_name(queue_name)")],
         why="a retry skips the delay queue"),
    dict(name="rabbit2-e02-dead-letters-dropped", lesson="The actor named by on_retry_exhausted receives the message",
         edits=[(RABBIT, '"x-dead-letter-routing-key": xq_name(queue_name),',
                 '"x-dead-letter-routing-key": xq_name(queue_name) + "-nowhere",')],
         why="a message that fails for good is dropped, not dead-lettered"),
    dict(name="rabbit2-e03-delay-in-the-queue", lesson="e03.msgs stay empty",
         edits=[(RABBIT, "        if delay is not None:\n            queue_name = dq_name(queue_name)",
                 "        if delay is not None:\n            queue_name = queue_name")],
         why="a delayed message goes straight to its queue"),
    dict(name="rabbit2-e04-no-redis-beside", lesson="power(2, 8) = 256, not power(8, 2)",
         edits=[("lab:lab/rabbitmq.py", "    broker.lab_redis_url = redis_beside(url)", "    broker.lab_redis_url = None")],
         why="on RabbitMQ, results never reach the Redis beside it"),
    dict(name="rabbit2-e08-failed-is-acked", lesson="AgeLimit's default max_age is None",
         edits=[(RABBIT, "            partial(self.channel.basic_nack, tag, requeue=False),",
                 "            partial(self.channel.basic_ack, tag),")],
         why="a message that fails for good is acked away instead of dead-lettered"),
    dict(name="rabbit2-e11-body-not-json", lesson="send_receipt converts the key back with int()",
         edits=[(RABBIT, "                    body=message.encode(),",
                 "                    body=message.encode().replace(b'{\"1\":2', b'{\"2\":2'),")],
         why="the body on the wire is not the message sent"),
    dict(name="rabbit2-e12-skip-is-dead-lettered", lesson="A middleware that wants the message in the dead letters",
         edits=[(RABBIT, "                partial(self.channel.basic_ack, message._tag),",
                 "                partial(self.channel.basic_nack, message._tag, requeue=False),")],
         why="a skipped (or any finished) message is dead-lettered instead of acked"),
    # -- e07 and e09 on RabbitMQ (docs/e07_scheduling.rst, docs/e09_rate_limits.rst) --
    dict(name="rabbit2-e07-ack-requeues", lesson="Run exactly one scheduler: every scheduler sends every run",
         edits=[(RABBIT, "                partial(self.channel.basic_ack, message._tag),",
                 "                partial(self.channel.basic_nack, message._tag, requeue=True),")],
         why="an ack puts the message back: each scheduled run runs again and again"),
    dict(name="rabbit2-e07-scheduler-pings-redis", lesson="The scheduler process only enqueues, and stops cleanly",
         edits=[("lab:e07_scheduling.py", "    check_redis(broker)  # its broker (Redis or RabbitMQ) down",
                 "    broker.client.ping()  # its broker (Redis or RabbitMQ) down")],
         why="on RabbitMQ the scheduler checks a Redis it does not need, not RabbitMQ"),
    dict(name="rabbit2-e09-failed-is-requeued", lesson="By default a busy limiter raises RateLimitExceeded",
         edits=[(RABBIT, "            partial(self.channel.basic_nack, tag, requeue=False),",
                 "            partial(self.channel.basic_nack, tag, requeue=True),")],
         why="a message whose retries ran out goes back to its queue, never to the dead letters"),
    dict(name="rabbit2-e09-sends-without-redis", lesson="On RabbitMQ this reads differently (Experiment 13): the queues",
         edits=[("lab:e09_rate_limits.py", "    broker.client.ping()  # the counts and limiters live in Redis",
                 "    ...  # the counts and limiters live in Redis")],
         why="without a Redis beside RabbitMQ, send sends work no worker can do"),
]
