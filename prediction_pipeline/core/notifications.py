"""The email a user gets when a prediction session finishes (plain text, no markup)."""

from __future__ import annotations

import email.message
import email.utils
from collections.abc import Mapping, Sequence


def session_summary(
    *,
    question: str,
    status: str,
    models: Sequence[str],
    progress: Mapping[str, Mapping],
    probabilities: Mapping[str, float],
    credits_charged: int,
    credits_refunded: int,
    market_price: float | None,
) -> tuple[str, str]:
    """(subject, body) of the session notification. The subject is one line whatever the
    question holds (a header value with a line break is refused by `email`)."""
    subject = f"Your forecast session is {one_line(status)}: {one_line(question)[:80]}"
    lines = [f"Question: {question}", ""]
    if market_price is not None:
        lines.append(f"Market price (YES): {market_price:.1%}")
    for model in models:
        entry = progress.get(model, {})
        if model in probabilities:
            lines.append(f"- {model}: {probabilities[model]:.1%} YES")
        else:
            lines.append(f"- {model}: failed ({entry.get('error', 'no answer')[:200]}); refunded")
    lines += [
        "",
        f"Session status: {status}. Credits charged: {credits_charged}, refunded: "
        f"{credits_refunded}.",
    ]
    return subject, "\n".join(lines) + "\n"


def one_line(text: str) -> str:
    """`text` with every run of whitespace (line breaks included) as one space."""
    return " ".join(text.split())


def session_message(
    subject: str, body: str, *, sender: str, recipient: str, message_id: str
) -> bytes:
    """The notification as RFC 5322 bytes (raises ValueError on an unusable header)."""
    message = email.message.EmailMessage()
    message["From"] = sender
    message["To"] = recipient
    message["Subject"] = subject
    message["Date"] = email.utils.formatdate(usegmt=True)
    message["Message-ID"] = message_id
    message.set_content(body)
    return message.as_bytes()
