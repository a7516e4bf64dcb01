"""The broker django_dramatiq asks for (``settings.DRAMATIQ_BROKER["BROKER"]``): the lab's, one URL (a RedisBroker,
or a RabbitmqBroker for an ``amqp://`` one)."""

from __future__ import annotations

import lab

from dramatiq import Broker, Middleware


def lab_broker(middleware: list[Middleware] | None = None) -> Broker:
    """The process's lab broker, with django_dramatiq's middleware (from settings when not given) added once.

    django_dramatiq calls this when Django starts. Experiment 14 calls it again on import, because the tests
    and ``lab run`` give the process a new broker after Django started.
    """
    from django.conf import settings
    from django_dramatiq.utils import load_middleware

    broker = lab.setup_broker()
    if middleware is None:
        middleware = [load_middleware(path) for path in settings.DRAMATIQ_BROKER["MIDDLEWARE"]]
    for one in middleware:
        if not any(type(present) is type(one) for present in broker.middleware):
            broker.add_middleware(one)
    return broker
