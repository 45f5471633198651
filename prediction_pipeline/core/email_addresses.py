"""A user's email address and display name as the pipeline stores them."""

from __future__ import annotations

import re
import unicodedata

_LABEL = r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?"
_EMAIL = re.compile(rf"[^@\s\"(),:;<>\[\]\\]+@{_LABEL}(?:\.{_LABEL})*")


def normalize_email(value: str) -> str:
    """Stripped and lower-cased; raises ValueError unless it looks like one plain address
    (ASCII, no display name, no control characters, a dotted domain or `localhost`)."""
    address = (value or "").strip().lower()
    if len(address) > 254 or not address.isascii() or not _EMAIL.fullmatch(address):
        raise ValueError(f"not an email address: {value!r}")
    domain = address.rsplit("@", 1)[1]
    if "." not in domain and domain != "localhost":
        raise ValueError(f"not an email address (domain has no dot): {value!r}")
    return address


def clean_name(value: str | None) -> str | None:
    """A display name without control characters (no header injection), at most 200 chars."""
    if value is None:
        return None
    name = "".join(" " if unicodedata.category(c).startswith("C") else c for c in value)
    name = " ".join(name.split())[:200]
    return name or None
