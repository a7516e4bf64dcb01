"""Experiment 14's models: a user who signs up, the e-mails "sent" (written here), a cached quote."""

from django.db import models


class User(models.Model):
    email = models.EmailField(unique=True)

class Email(models.Model):
    """The outbox: a welcome e-mail lands here instead of in anyone's inbox."""

    to = models.EmailField()
    subject = models.CharField(max_length=200)
    sent_at = models.DateTimeField(auto_now_add=True)

class Quote(models.Model):
    """A price from a slow remote API, kept here; the page answers from it and refreshes it when stale."""

    symbol = models.CharField(max_length=10, primary_key=True)
    price = models.FloatField(null=True)
    updated_at = models.DateTimeField(null=True)

