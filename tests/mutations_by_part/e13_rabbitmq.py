"""Helper e13-A's mutations: the lessons of Experiment 13 (RabbitMQ beside Redis).

Each entry is one careless upstream (or lab) change that makes one lesson of docs/e13_rabbitmq.rst false.
"""

MUTATIONS = [
    dict(name="e13-no-redelivered-flag", lesson="A worker killed with SIGKILL loses nothing on either broker",
         edits=[("dramatiq:brokers/rabbitmq.py", "            method.redelivered,\n", "            False,\n")],
         why="a message RabbitMQ delivers again after a lost connection no longer says so"),
    dict(name="e13-broker-priority-dropped", lesson="Per-message priority exists on RabbitMQ only",
         edits=[("dramatiq:brokers/rabbitmq.py", 'priority=message.options.get("broker_priority"),',
                 "priority=None,")],
         why="broker_priority is no longer published: the greeting waits its turn"),
    dict(name="e13-max-priority-constant", lesson="A RabbitMQ queue's arguments are fixed when the queue is made",
         edits=[("dramatiq:brokers/rabbitmq.py", 'arguments["x-max-priority"] = self.max_priority',
                 'arguments["x-max-priority"] = 10')],
         why="every broker declares the same x-max-priority: no 406 to see"),
    dict(name="e13-dead-letters-kept-a-week", lesson="RabbitMQ expires dead letters itself; Redis only",
         edits=[("dramatiq:brokers/rabbitmq.py", '"x-message-ttl": DEAD_MESSAGE_TTL,', '"x-message-ttl": 86400000 * 7,')],
         why="the .XQ ttl no longer follows dead_message_ttl"),
    dict(name="e13-rabbit-join-one-check", lesson="``join()`` means different things",
         edits=[("dramatiq:brokers/rabbitmq.py", "min_successes: int = 10,", "min_successes: int = 1,")],
         why="RabbitMQ's join returns at its first empty count"),
    dict(name="e13-publish-never-mandatory", lesson="Without ``confirm_delivery``, a message sent to a RabbitMQ queue",
         edits=[("dramatiq:brokers/rabbitmq.py", "mandatory=self.confirm_delivery,", "mandatory=False,")],
         why="an unroutable publish is confirmed, not returned: lost even with confirm_delivery"),
    dict(name="e13-qos-one-more", lesson="A worker holds its prefetch on both brokers",
         edits=[("dramatiq:brokers/rabbitmq.py", "self.channel.basic_qos(prefetch_count=prefetch)",
                 "self.channel.basic_qos(prefetch_count=prefetch + 1)")],
         why="the server lets a worker hold one more than its prefetch"),
    dict(name="e13-skip-counts-as-held", lesson="Without a RabbitMQ, ``python -m lab run e13`` skips every lesson",
         edits=[("lab:scenarios/e13_rabbitmq.py", "run.skip(test, NEEDS_RABBITMQ)", "run.check(test, True, NEEDS_RABBITMQ)")],
         why="without a RabbitMQ the run claims the lessons held"),
    dict(name="e13-sender-accepts-zero", lesson="Bad input to the sender is a one-line usage error",
         edits=[("lab:e13_rabbitmq.py", 'type=click.IntRange(1, 10_000)', 'type=click.IntRange(0, 10_000)')],
         why="work 0 is accepted and sends nothing"),
]
