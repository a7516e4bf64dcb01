"""Helper e13-B's mutations: Experiment 13's lessons on private servers (consumer_timeout, a restart, throughput).

Each stands for one careless change, upstream or in the lab, that would make its bullet false. Every one
plays tests/test_e13_private_servers.py's fixture once (a private RabbitMQ, booted and restarted): ~30 s each.
"""

W = "dramatiq:worker.py"
RMQ = "dramatiq:brokers/rabbitmq.py"
PROCESSES = "lab:lab/processes.py"

MUTATIONS = [
    dict(name="e13-redelivered-flag-dropped", lesson="runs longer than RabbitMQ's consumer_timeout runs twice",
         edits=[(RMQ, "            method.redelivered,\n", "            False,\n")],
         why="Dramatiq no longer passes RabbitMQ's redelivered flag on: a second run looks like a first"),
    dict(name="e13-ack-requeues", lesson="The fix that works with Dramatiq 2.2.1 on RabbitMQ 3.10.8",
         edits=[(RMQ, "partial(self.channel.basic_ack, message._tag),",
                 "partial(self.channel.basic_nack, message._tag, requeue=True),")],
         why="an ack that hands the message back: even with the timeout raised, the task runs again"),
    dict(name="e13-dq-acked-when-held", lesson="A delayed message longer than consumer_timeout goes back",
         edits=[(W, 'self.delay_queue.put(_WorkQueueItem(message.options.get("eta", 0), message))',
                 'self.delay_queue.put(_WorkQueueItem(message.options.get("eta", 0), message))\n'
                 '                self.consumer.ack(message)')],
         why="the delay-queue consumer acks a delayed message as soon as it holds it: no timeout, no redelivery"),
    dict(name="e13-acked-when-handed-to-a-thread", lesson="The timeout counts from the delivery, not from the start",
         edits=[(W, "self.work_queue.put(_WorkQueueItem(actor.priority, message))",
                 "self.work_queue.put(_WorkQueueItem(actor.priority, message))\n"
                 "                self.consumer.ack(message)")],
         why="the consumer acks a message as soon as it queues it for a thread: nothing waits unacked"),
    dict(name="e13-transient-messages", lesson="Durable queues and persistent messages survive a RabbitMQ restart",
         edits=[(RMQ, "delivery_mode=2,", "delivery_mode=1,")],
         why="Dramatiq publishes transient messages: a restart drops them from the durable queue"),
    dict(name="e13-redis-appendonly-ignored", lesson="redis-server keeps its queues across a restart only",
         edits=[(PROCESSES, '"--appendonly", "yes" if self.appendonly else "no"', '"--appendonly", "no"')],
         why="the lab's RedisServer(appendonly=True) no longer turns the AOF on"),
    dict(name="e13-each-message-to-two-threads", lesson="Throughput beside e10: each broker's drain is a fraction",
         edits=[(W, "self.work_queue.put(_WorkQueueItem(actor.priority, message))",
                 "self.work_queue.put(_WorkQueueItem(actor.priority, message))\n"
                 "                self.work_queue.put(_WorkQueueItem(actor.priority, message))")],
         why="the consumer hands each message to two worker threads: it runs twice"),
]
