"""The email a user gets when a prediction session finishes (plain text, no markup)."""

from __future__ import annotations

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
    """(subject, body) of the session notification."""
    subject = f"Your forecast session is {status}: {question[:80]}"
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
