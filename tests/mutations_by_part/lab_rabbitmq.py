"""rabbit-lab's mutations: the broker chosen by its URL, and RabbitMQ's one-line failures.

Each entry is one careless lab change that makes one lesson of README's "Configuration and exit codes" false.
"""

MUTATIONS = [
    dict(name="rabbit-redis-url-wins", lesson="The broker is chosen by its URL",
         edits=[("lab:lab/urls.py", "return os.environ.get(BROKER_URL_ENV) or os.environ.get(URL_ENV) or default",
                 "return os.environ.get(URL_ENV) or os.environ.get(BROKER_URL_ENV) or default")],
         why="DRAMATIQ_REDIS_URL wins over DRAMATIQ_BROKER_URL"),
    dict(name="rabbit-no-redis-beside", lesson="The broker is chosen by its URL",
         edits=[("lab:lab/urls.py", "    return beside if beside and not is_amqp(beside) else None",
                 "    return None")],
         why="results on RabbitMQ never use the Redis beside it"),
    dict(name="rabbit-auth-is-unreachable", lesson="RabbitMQ's failures are Redis's twins",
         edits=[("lab:lab/failures.py", "    if isinstance(exc, pe.ProbableAuthenticationError | pe.AuthenticationError):",
                 "    if False:")],
         why="a refused password exits 3 instead of 5"),
    dict(name="rabbit-vhost-is-unreachable", lesson="RabbitMQ's failures are Redis's twins",
         edits=[("lab:lab/failures.py", '    if isinstance(exc, pe.ProbableAccessDeniedError) or "NOT_ALLOWED - vhost" in str(exc):',
                 "    if False:")],
         why="a missing vhost exits 3 instead of 2"),
    dict(name="rabbit-lost-not-unwrapped", lesson="RabbitMQ's failures are Redis's twins",
         edits=[("lab:lab/failures.py", "        return explain(exc.message, url)  # Dramatiq's ConnectionClosed around pika's error",
                 "        return None")],
         why="Dramatiq's ConnectionClosed around a lost connection shows a traceback"),
    dict(name="rabbit-lab-rabbitmq-ctrl-c-silent", lesson="A learner starts the same server with python -m lab rabbitmq",
         edits=[("lab:lab/private_rabbit.py", '    click.echo("Stopped; its data is gone.")', "    pass")],
         why="Ctrl-C stops the learner's RabbitMQ without saying so (the run's end checks it)"),
    dict(name="rabbit-lab-rabbitmq-ctrl-c-exit-1", lesson="A learner starts the same server with python -m lab rabbitmq",
         edits=[("lab:lab/private_rabbit.py", '    click.echo("Stopped; its data is gone.")',
                 '    click.echo("Stopped; its data is gone.")\n    raise SystemExit(1)')],
         why="Ctrl-C ends the learner's RabbitMQ with exit code 1"),
    dict(name="rabbit-lab-rabbitmq-no-ready-time", lesson="A learner starts the same server with python -m lab rabbitmq",
         edits=[("lab:lab/private_rabbit.py", "ready in {server.ready_seconds:.1f} s; management API on",
                 "ready; management API on")],
         why="the learner is not told how long the start took"),
]
