"""What ``rundramatiq`` imports for this app (it imports every installed app's ``tasks``): e14's actors."""

from e14_web_app import build_report, refresh_quote, send_welcome, welcome_from_copy  # noqa: F401
