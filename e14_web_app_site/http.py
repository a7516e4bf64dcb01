"""Experiment 14's views speak JSON: bad input is a 400 with one line, never a 500 with a traceback."""

from __future__ import annotations

from collections.abc import Callable

import redis
from django.http import HttpRequest, JsonResponse
from dramatiq.errors import BrokerConnectionError


class BadRequest(Exception):
    """What a view raises for input it cannot use: a 400 and its message."""


class Refused(Exception):
    """What a receiver of `signing_up` raises to refuse a sign-up: its transaction rolls back."""


def api(method: str) -> Callable:
    """Answer only `method` (else 405), BadRequest and Refused with 400, an unreachable Redis or RabbitMQ with 503."""
    def wrap(view):
        def checked(request, *args, **kwargs):
            try:
                if request.method != method:
                    return JsonResponse({"error": f"use {method}"}, status=405)
                return view(request, *args, **kwargs)
            except (BadRequest, Refused) as exc:
                return JsonResponse({"error": str(exc)}, status=400)
            except (redis.RedisError, BrokerConnectionError):  # RabbitMQ's: Dramatiq's ConnectionClosed
                return JsonResponse({"error": "the task queue is unreachable"}, status=503)
        return checked
    return wrap


def parsed(value: str, parse: Callable[[str], object], error: str) -> str:
    """`value` if `parse` reads it, else BadRequest(error): `parse` says what a valid value is."""
    try:
        parse(value)
    except ValueError:
        raise BadRequest(error) from None
    return value


def choice(request: HttpRequest, name: str, allowed: tuple[str, ...]) -> str:
    """The query or form field `name`, one of `allowed` (the first when it is missing)."""
    value = request.GET.get(name, request.POST.get(name, allowed[0]))
    if value not in allowed:
        raise BadRequest(f"{name} must be one of {', '.join(allowed)}, not {value[:40]!r}")
    return value
