"""The digest's unsubscribe link: GET shows a confirm button (link scanners that prefetch
URLs must not unsubscribe anyone), POST unsubscribes at once (RFC 8058 one-click, body
`List-Unsubscribe=One-Click`, which mailbox providers send; the page's form sends the same).
Both are idempotent; a tampered or unknown token gets 400 and changes nothing."""

from __future__ import annotations

import html

import sqlalchemy as sa
from fastapi import APIRouter, Query
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool

from prediction_pipeline.core.digests import InvalidUnsubscribeToken
from prediction_pipeline.services import subscriptions

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport"
content="width=device-width, initial-scale=1"><title>{title}</title></head>
<body style="font-family: sans-serif; max-width: 32rem; margin: 3rem auto">
<h1>{title}</h1>{body}</body></html>"""

INVALID = "This unsubscribe link is not valid. Use the link from your latest digest."


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(PAGE.format(title=html.escape(title), body=body), status_code=status)


def router(engine: sa.Engine, secret: str) -> APIRouter:
    routes = APIRouter(tags=["unsubscribe"])

    @routes.get("/unsubscribe", response_class=HTMLResponse)
    async def confirm(token: str = Query(max_length=500)) -> HTMLResponse:
        """A page with one button that unsubscribes the token's user from the digest."""
        try:
            email = await run_in_threadpool(subscriptions.check, engine, token, secret)
        except InvalidUnsubscribeToken:
            return _page("Link not valid", f"<p>{INVALID}</p>", 400)
        form = (
            f"<p>Stop the daily digest for <strong>{html.escape(email)}</strong>?</p>"
            f'<form method="post" action="/unsubscribe?token={html.escape(token)}">'
            '<input type="hidden" name="List-Unsubscribe" value="One-Click">'
            '<button type="submit">Unsubscribe</button></form>'
        )
        return _page("Unsubscribe", form)

    @routes.post("/unsubscribe", response_class=HTMLResponse)
    async def one_click(token: str = Query(max_length=500)) -> HTMLResponse:
        """RFC 8058 one-click: unsubscribes at once."""
        try:
            email = await run_in_threadpool(subscriptions.unsubscribe, engine, token, secret)
        except InvalidUnsubscribeToken:
            return _page("Link not valid", f"<p>{INVALID}</p>", 400)
        done = f"<p>{html.escape(email)} will get no more digests.</p>"
        return _page("Unsubscribed", done)

    return routes
