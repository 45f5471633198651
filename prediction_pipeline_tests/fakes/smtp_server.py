"""A real SMTP server on loopback (aiosmtpd), recording what it receives, with scripted faults.

`FakeSMTPServer` runs an aiosmtpd `Controller` on 127.0.0.1 (a free port) in a thread. It
records every message accepted (envelope, raw bytes, parsed `email.message.EmailMessage`) and
every RCPT TO seen, and can be told to:

- reject a recipient for good: ``server.reject("bad@example.com", "550 5.1.1 No such user")``;
- fail the n-th RCPT (1-based, over the server's life) with a reply and drop the connection:
  ``server.fail_rcpt(3, "421 4.3.0 Service not available")``;
- be down: ``server.down("421 4.3.2 Try again later")`` answers every RCPT with it and drops
  the connection, until ``server.up()``; ``server.down_after(2)`` goes down once two messages
  have been accepted;
- accept a message and drop the connection before replying to its data (the client cannot
  know it was accepted): ``server.lose_reply_after_data(2)``;
- require AUTH (PLAIN/LOGIN, allowed without TLS on loopback): ``FakeSMTPServer(auth=(u, p))``.

As a sink for benchmarks (its own process, so it does not share a core with the sender):
``python -m prediction_pipeline_tests.fakes.smtp_server --ids-file PATH [--latency-ms 10]``
prints ``PORT <n>``, accepts everything (each reply after the latency, as a remote server's
round trip), and on SIGTERM writes the Message-ID of every message received to PATH.
No pytest here: benchmarks use it too.
"""

from __future__ import annotations

import argparse
import asyncio
import email
import email.policy
import re
import signal
import socket
import sys
import threading
from collections import Counter
from dataclasses import dataclass, field
from email.message import EmailMessage

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class ReceivedMessage:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    message: EmailMessage = field(repr=False)

    @property
    def message_id(self) -> str:
        return str(self.message["Message-ID"])


class _Handler:
    def __init__(self, server: FakeSMTPServer) -> None:
        self.server = server

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        fake = self.server
        with fake._lock:
            fake.rcpts.append(address)
            n = len(fake.rcpts)
            reply, close = None, False
            if fake._down_after is not None and len(fake.messages) >= fake._down_after[0]:
                fake._down = fake._down_after[1]
            if fake._down is not None:
                reply, close = fake._down, True
            elif n in fake._rcpt_faults:
                reply, close = fake._rcpt_faults.pop(n)
            elif address.lower() in fake._rejected:
                reply = fake._rejected[address.lower()]
            if reply is not None:
                fake.counts[reply.split()[0]] += 1
        if reply is not None:
            if close:  # reply, then close the connection (as a server going away does)
                asyncio.get_running_loop().call_soon(server.transport.close)
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        fake = self.server
        data = (
            envelope.content if isinstance(envelope.content, bytes) else envelope.content.encode()
        )
        message = email.message_from_bytes(data, policy=email.policy.default)
        with fake._lock:
            fake.messages.append(
                ReceivedMessage(envelope.mail_from, list(envelope.rcpt_tos), data, message)
            )
            n = len(fake.messages)
            fake.counts["250"] += 1
            lose = n in fake._lose_reply
        if lose:  # accepted, but the client never hears it
            server.transport.abort()
        return f"250 2.0.0 Ok: queued as Q{n:06d}"


class FakeSMTPServer:
    def __init__(self, *, auth: tuple[str, str] | None = None, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = free_port(host)
        self.auth = auth
        self.messages: list[ReceivedMessage] = []
        self.rcpts: list[str] = []
        self.auth_attempts: list[tuple[str, bool]] = []  # (login, success)
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._rejected: dict[str, str] = {}
        self._rcpt_faults: dict[int, tuple[str, bool]] = {}
        self._lose_reply: set[int] = set()
        self._down: str | None = None
        self._down_after: tuple[int, str] | None = None
        kwargs = {}
        if auth is not None:
            kwargs = {
                "authenticator": self._authenticate,
                "auth_required": True,
                "auth_require_tls": False,
            }
        self._controller = Controller(
            _Handler(self), hostname=host, port=self.port, ready_timeout=10, **kwargs
        )

    # -- scripting ------------------------------------------------------------------------

    def reject(self, address: str, reply: str = "550 5.1.1 No such user here") -> None:
        with self._lock:
            self._rejected[address.lower()] = reply

    def fail_rcpt(self, n: int, reply: str = "421 4.3.0 Service not available", close=True):
        with self._lock:
            self._rcpt_faults[n] = (reply, close)

    def down(self, reply: str = "421 4.3.2 Service not available, try again later") -> None:
        with self._lock:
            self._down = reply

    def down_after(
        self, accepted: int, reply: str = "421 4.3.2 Service not available, try again later"
    ) -> None:
        """Go down (as `down`) once `accepted` messages have been accepted."""
        with self._lock:
            self._down_after = (accepted, reply)

    def up(self) -> None:
        with self._lock:
            self._down = None
            self._down_after = None

    def lose_reply_after_data(self, n: int) -> None:
        """The n-th accepted message (1-based) is stored but its 250 reply never arrives."""
        with self._lock:
            self._lose_reply.add(n)

    # -- reading --------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self.auth:
            return f"smtp://{self.auth[0]}:{self.auth[1]}@{self.host}:{self.port}?starttls=false"
        return f"smtp://{self.host}:{self.port}?starttls=false"

    def received(self) -> list[ReceivedMessage]:
        with self._lock:
            return list(self.messages)

    def received_by(self) -> Counter[str]:
        """How many messages each recipient received."""
        with self._lock:
            return Counter(r for m in self.messages for r in m.rcpt_tos)

    def rcpt_count(self, address: str) -> int:
        with self._lock:
            return sum(a.lower() == address.lower() for a in self.rcpts)

    # -- lifecycle ------------------------------------------------------------------------

    def _authenticate(self, server, session, envelope, mechanism, auth_data) -> AuthResult:
        ok = (
            isinstance(auth_data, LoginPassword)
            and self.auth is not None
            and auth_data.login.decode() == self.auth[0]
            and auth_data.password.decode() == self.auth[1]
        )
        login = auth_data.login.decode() if isinstance(auth_data, LoginPassword) else "?"
        with self._lock:
            self.auth_attempts.append((login, ok))
        return AuthResult(success=ok, handled=False)

    def start(self) -> FakeSMTPServer:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()

    def __enter__(self) -> FakeSMTPServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# -- sink process for benchmarks ------------------------------------------------------------

_MESSAGE_ID = re.compile(rb"^Message-ID:\s*(\S+)", re.IGNORECASE | re.MULTILINE)


class _SinkHandler:
    """Accepts everything; answers EHLO, MAIL, RCPT and the end of DATA after `latency`
    seconds each (a remote server's round trip), and keeps the Message-IDs it received."""

    def __init__(self, latency: float = 0.0) -> None:
        self.latency = latency
        self.ids: list[bytes] = []

    async def _wait(self) -> None:
        if self.latency > 0:
            await asyncio.sleep(self.latency)

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        await self._wait()
        return responses

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        await self._wait()
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        await self._wait()
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        await self._wait()
        head = envelope.original_content[:4096] if envelope.original_content else b""
        match = _MESSAGE_ID.search(head)
        self.ids.append(match.group(1) if match else b"-")
        return "250 OK"


def run_sink(ids_file: str, latency: float = 0.0, host: str = "127.0.0.1") -> None:
    handler = _SinkHandler(latency)
    port = free_port(host)
    controller = Controller(handler, hostname=host, port=port, ready_timeout=10)
    controller.start()
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    print(f"PORT {port}", flush=True)
    stopped.wait()
    controller.stop()
    with open(ids_file, "wb") as out:
        out.write(b"\n".join(handler.ids))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ids-file", required=True, help="Where to write received Message-IDs.")
    parser.add_argument(
        "--latency-ms", type=float, default=0.0, help="Delay before each reply (EHLO, MAIL, ...)."
    )
    args = parser.parse_args(argv)
    run_sink(args.ids_file, args.latency_ms / 1000)


if __name__ == "__main__":
    main(sys.argv[1:])
