"""What else happens when a user signs up: a signal the sign-up sends inside its transaction, and a receiver."""

from django.dispatch import Signal, receiver

from e14_web_app_site.http import Refused
from e14_web_app_site.models import User

signing_up = Signal()  # the rest of a sign-up, inside its transaction: other apps listen (a profile, a block list)


@receiver(signing_up)
def refuse_blocked_domains(user: User, **_: object) -> None:
    """Refuse a domain: the view answers 400 and the sign-up's transaction rolls back, its user with it."""
    if user.email.endswith("@blocked.example"):
        raise Refused(f"{user.email}: that domain may not sign up")
