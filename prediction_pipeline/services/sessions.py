"""The end of a multi-model session: the user's notification email, sent once, and the
verdict that fails the run when a model of the session failed.

`notify_session` builds the message first, then claims the notification, then sends it; the
claim is released on any failure after it, so a retry sends it. A message that cannot be
built is never claimed, so a retry cannot mistake it for one already sent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa

from prediction_pipeline.clients.email import EmailTransport, OutgoingEmail, envelope_address
from prediction_pipeline.core.notifications import session_message, session_summary
from prediction_pipeline.store import markets as market_store
from prediction_pipeline.store import queue_items
from prediction_pipeline.store import sessions as session_store
from prediction_pipeline.store import users as user_store


@dataclass(frozen=True)
class SessionNotice:
    sent: bool  # False: the session had been notified already (by an earlier attempt)
    recipient: str


@dataclass(frozen=True)
class SessionVerdict:
    succeeded: bool
    failed_models: dict[str, str]  # model -> its error (or its status when it has none)
    detail: str  # what went wrong, for the run's failure message; "" when nothing did


def session_email(
    session: sa.Row, recipient: str, market: sa.Row, *, sender: str, message_id_domain: str
) -> OutgoingEmail:
    """The notification as it goes to the transport (raises if it cannot be built)."""
    probabilities = {
        m: entry["probability"]
        for m, entry in session.progress.items()
        if entry.get("probability") is not None
    }
    subject, body = session_summary(
        question=market.question,
        status=session.status,
        models=session.models,
        progress=session.progress,
        probabilities=probabilities,
        credits_charged=session.credits_charged,
        credits_refunded=session.credits_refunded,
        market_price=market.yes_price,
    )
    message_id = f"<session-{session.id}@{message_id_domain}>"
    data = session_message(subject, body, sender=sender, recipient=recipient, message_id=message_id)
    return OutgoingEmail(
        sender=envelope_address(sender), recipient=recipient, message_id=message_id, data=data
    )


def notify_session(
    engine: sa.Engine,
    session_id: str,
    open_transport: Callable[[], EmailTransport],
    *,
    sender: str,
    message_id_domain: str,
) -> SessionNotice:
    """Email the session's user once (see the module's docstring for the order of steps).
    `open_transport` is called only when there is a message to send."""
    with engine.connect() as conn:
        session = session_store.get_session(conn, session_id)
        user = user_store.get_user_by_id(conn, session.user_id)
        market = market_store.get_market(conn, session.market_id)
    claimed = False
    if session.notified_at is None:
        outgoing = session_email(
            session, user.email, market, sender=sender, message_id_domain=message_id_domain
        )
        with engine.begin() as conn:
            claimed = session_store.mark_notified(conn, session_id)
    if not claimed:
        return SessionNotice(sent=False, recipient=user.email)
    try:
        mail = open_transport().session()
        try:
            mail.send(outgoing)
        finally:
            mail.close()
    except BaseException:
        with engine.begin() as conn:
            session_store.release_notification(conn, session_id)
        raise
    return SessionNotice(sent=True, recipient=user.email)


def session_verdict(engine: sa.Engine, session_id: str, settled_status: str) -> SessionVerdict:
    """Whether the session succeeded: it settled COMPLETED and every model succeeded."""
    with engine.connect() as conn:
        session = session_store.get_session(conn, session_id)
    failed = {
        model: entry.get("error") or entry.get("status")
        for model, entry in session.progress.items()
        if entry.get("status") != queue_items.SUCCEEDED
    }
    if settled_status == queue_items.COMPLETED and not failed:
        return SessionVerdict(succeeded=True, failed_models={}, detail="")
    details = "; ".join(f"{model}: {error}" for model, error in failed.items())
    return SessionVerdict(
        succeeded=False, failed_models=failed, detail=details or str(session.error)
    )
