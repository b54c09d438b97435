"""Personal data the default redaction rules must catch, as values to put on spans."""

from __future__ import annotations

EMAIL = "ada.lovelace@example.com"
