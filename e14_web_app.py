"""Experiment 14: Dramatiq in a Django web app

Goal: put actors next to web requests and a database: send after commit, pass ids, keep connections short, 202 and poll.

The rest is in e14_web_app_site/: what Django imports by name (the settings, the models, the tasks module
rundramatiq imports: its __init__ says why), the views' JSON helpers (http.py), the sign-up's signal (signals.py)
and the commands (commands.py). Both SQLite files are in a temp dir, never in the checkout.

Run it, in three terminals (a Redis first: `redis-server` or `python -m lab serve`; on RabbitMQ, DRAMATIQ_BROKER_URL
and a Redis beside it in DRAMATIQ_REDIS_URL, for the refresh guard and the results):

    python e14_web_app.py runserver 8014             # the web app (creates its tables first)
    dramatiq --watch . e14_web_app                   # the worker, plain Dramatiq
    python e14_web_app.py rundramatiq -p 1 -t 4      # or the worker django_dramatiq's way
    curl -d email=ada@example.com localhost:8014/signup              # 201; the welcome e-mail is queued
    curl -d email=bob@example.com 'localhost:8014/signup?send=inside' # the trap: sent before the commit
    curl localhost:8014/quotes/ACME                  # answers at once; a stale quote queues one refresh
    curl -i -d kind=signups localhost:8014/reports   # 202 and a URL to poll: curl localhost:8014/tasks/ID
"""

import re
import sys
import time
import uuid
from datetime import timedelta

import lab

import django
import dramatiq
from django.db import transaction
from django.http import JsonResponse
from django.urls import path
from django.utils import timezone

# Importing e14_web_app_site points Django at e14_web_app_site.settings, as a manage.py does.
from e14_web_app_site.commands import main  # migrate, runserver, rundramatiq: this file is the project's manage.py
from e14_web_app_site.http import BadRequest, api, choice, parsed  # JSON in and out; bad input is a 400

lab.setup_broker()  # first: a bad URL is one line and exit 2, before Django has half started
django.setup()  # django_dramatiq's AppConfig asks settings.DRAMATIQ_BROKER for the broker: the lab's
from django_dramatiq.models import Task  # noqa: E402 (models load once Django is set up)
from dramatiq.results import ResultMissing, Results  # noqa: E402

from e14_web_app_site.broker import lab_broker  # noqa: E402
from e14_web_app_site.models import Email, Quote, User  # noqa: E402
from e14_web_app_site.signals import signing_up  # noqa: E402

broker = lab_broker()

QUEUE = "e14"
SMTP_MS = REMOTE_MS = REPORT_MS = 1000  # the slow calls: an SMTP server, a remote price API, a report
STALE_AFTER = timedelta(days=7)  # as in the Celery guide: a quote older than this gets refreshed
GUARD_MS = 60_000  # one refresh per symbol at a time; the key expires if its worker dies


@dramatiq.actor(queue_name=QUEUE, max_retries=3, min_backoff=200, throws=(User.DoesNotExist,))
def send_welcome(user_id: int) -> None:
    """Read the user as committed now (an id, never a copy), then 'e-mail' them: a row in Email."""
    user = User.objects.get(id=user_id)  # DoesNotExist if sent before the commit, or for a rolled-back row
    time.sleep(SMTP_MS / 1000)
    Email.objects.create(to=user.email, subject="Welcome!")


@dramatiq.actor(queue_name=QUEUE)
def welcome_from_copy(user: dict) -> None:
    """The anti-pattern: the user as a dict, copied when the request sent it, stale when this runs."""
    Email.objects.create(to=user["email"], subject="Welcome!")


@dramatiq.actor(queue_name=QUEUE, max_retries=3, min_backoff=1000)
def refresh_quote(symbol: str) -> None:
    time.sleep(REMOTE_MS / 1000)  # the remote API (a local sleep: never the network)
    price = sum(map(ord, symbol)) / 10
    Quote.objects.update_or_create(symbol=symbol, defaults={"price": price, "updated_at": timezone.now()})
    broker.client.delete(guard_key(symbol))  # the next stale request may queue the next refresh


@dramatiq.actor(queue_name=QUEUE, max_retries=0, store_results=True)
def build_report(kind: str) -> dict:
    time.sleep(REPORT_MS / 1000)
    if kind == "broken":
        raise RuntimeError("the reporting database is down")
    return {"signups": User.objects.count(), "emails": Email.objects.count()}


def guard_key(symbol: str) -> str:
    return lab.key(broker, f"e14-refresh:{symbol}")


# -- the views: JSON in and out; `api` answers bad input with a 400 and one line, never a 500 --------------

@api("POST")
def signup(request):
    """201 once the user is committed. send=on_commit (right), inside (the trap), inline (the user waits)."""
    email = request.POST.get("email", "").strip()
    if not re.fullmatch(r"[^@\s]{1,64}@[^@\s]{1,180}\.[a-z]{2,}", email):
        raise BadRequest("email: an address like ada@example.com is required")
    send = choice(request, "send", ("on_commit", "inside", "inline"))
    with transaction.atomic():
        if User.objects.filter(email=email).exists():
            raise BadRequest(f"{email} has signed up already")
        user = User.objects.create(email=email)
        if send == "inside":
            send_welcome.send(user.id)  # a worker may run it now, before the row is committed
        elif send == "on_commit":
            transaction.on_commit(lambda: send_welcome.send(user.id))  # only once the row is there; never on rollback
        signing_up.send(sender=User, user=user)  # other apps' receivers: one refuses, and all this rolls back
    if send == "inline":
        send_welcome(user.id)  # a direct call runs the actor here: the user waits for the SMTP server
    return JsonResponse({"user": user.id, "email": email, "welcome": "sent" if send == "inline" else "queued"},
                        status=201)


@api("GET")
def quote(request, symbol: str):
    """The quote as stored, at once; a stale one queues a refresh: one (guard=on) or one per request (off)."""
    if not re.fullmatch(r"[A-Z]{1,10}", symbol):
        raise BadRequest("symbol: 1 to 10 capital letters, like ACME")
    guarded = choice(request, "guard", ("on", "off")) == "on"
    row = Quote.objects.filter(symbol=symbol).first() or Quote(symbol=symbol)
    stale = row.updated_at is None or timezone.now() - row.updated_at > STALE_AFTER
    # SET NX: of a hundred requests that find the quote stale, one sets the key and queues the refresh.
    queued = stale and (not guarded or bool(broker.client.set(guard_key(symbol), 1, nx=True, px=GUARD_MS)))
    if queued:
        refresh_quote.send(symbol)
    return JsonResponse({"symbol": symbol, "price": row.price, "stale": stale, "refresh_queued": queued})


@api("POST")
def reports(request):
    """202 Accepted: the report is queued; poll the URL in Location."""
    message = build_report.send(choice(request, "kind", ("signups", "broken")))
    poll = f"/tasks/{message.message_id}"
    return JsonResponse({"task": message.message_id, "status": "enqueued", "poll": poll}, status=202,
                        headers={"Location": poll})


@api("GET")
def task_status(request, task_id: str):
    """What django_dramatiq's Task table says (enqueued, running, done, failed), and the result once done."""
    parsed(task_id, uuid.UUID, "a task id is a UUID")
    task = Task.tasks.using("tasks").filter(id=task_id).first()
    if task is None:
        return JsonResponse({"error": f"no task {task_id}"}, status=404)
    body = {"task": task_id, "status": task.status, "actor": task.actor_name}
    if task.status == Task.STATUS_DONE:
        results = next(m.backend for m in broker.middleware if isinstance(m, Results))
        try:
            body["result"] = task.message.get_result(backend=results)
        except ResultMissing:  # never stored (store_results=False), or older than result_ttl (10 min)
            body["result"] = None
    if task.status == Task.STATUS_FAILED:
        body["error"] = task.message.options.get("traceback", "").strip().splitlines()[-1:]
    return JsonResponse(body)


urlpatterns = [path("signup", signup), path("quotes/<str:symbol>", quote), path("reports", reports),
               path("tasks/<str:task_id>", task_status)]


if __name__ == "__main__":
    sys.exit(main())
