"""Email transports: SMTP against a real aiosmtpd server on loopback, and the outbox folder.
What is transient, what is permanent, what stops everything; no password in any message."""

from __future__ import annotations

import logging
from urllib.parse import quote

import pytest

from prediction_pipeline.clients.email import (
    FatalTransportError,
    OutboxTransport,
    OutgoingEmail,
    PermanentSendError,
    SmtpTransport,
    TransientSendError,
    envelope_address,
    open_transport,
    outbox_file_name,
    parse_smtp_url,
    safe_smtp_url,
    send_retrying,
)
from prediction_pipeline.clients.http_retry import RetryPolicy
from prediction_pipeline.resources import EmailTransportResource
from prediction_pipeline_tests.fakes.smtp_server import FakeSMTPServer, free_port

PASSWORD = "p@ss:w/rd s3cret"


def outgoing(n: int, to: str | None = None) -> OutgoingEmail:
    message_id = f"<digest-{n}-2026-11-02@prediction-pipeline>"
    data = (
        f"Message-ID: {message_id}\r\nSubject: digest {n}\r\n\r\nline one\r\n.starts with a dot\r\n"
    ).encode()
    return OutgoingEmail("digest@localhost", to or f"user{n}@example.com", message_id, data)


@pytest.fixture
def smtp():
    with FakeSMTPServer() as server:
        yield server


def test_smtp_delivers_and_returns_the_queue_id(smtp):
    session = SmtpTransport.from_url(smtp.url).session()
    assert session.send(outgoing(1)) == "Q000001"
    assert session.send(outgoing(2)) == "Q000002"
    session.close()
    first, second = smtp.received()
    assert first.mail_from == "digest@localhost" and first.rcpt_tos == ["user1@example.com"]
    assert first.data.endswith(b"line one\r\n.starts with a dot\r\n")  # dot-stuffing undone
    assert second.message_id == "<digest-2-2026-11-02@prediction-pipeline>"
    assert session.connections_opened == 1  # one connection for both


def test_a_550_recipient_is_permanent_and_the_connection_stays_usable(smtp):
    smtp.reject("gone@example.com", "550 5.1.1 <gone@example.com>: Recipient address rejected")
    session = SmtpTransport.from_url(smtp.url).session()
    with pytest.raises(PermanentSendError, match="550 5.1.1"):
        session.send(outgoing(1, "gone@example.com"))
    assert session.send(outgoing(2)) == "Q000001"
    assert session.connections_opened == 1


def test_421_with_a_hang_up_is_transient_and_the_next_send_reconnects(smtp):
    smtp.fail_rcpt(1, "421 4.3.0 Service not available")
    session = SmtpTransport.from_url(smtp.url).session()
    with pytest.raises(TransientSendError, match="421") as error:
        session.send(outgoing(1))
    assert not error.value.maybe_delivered
    assert session.send(outgoing(1)) == "Q000001"
    assert session.connections_opened == 2


def test_a_4xx_without_hang_up_is_transient(smtp):
    smtp.fail_rcpt(1, "451 4.7.1 Greylisted, try again", close=False)
    session = SmtpTransport.from_url(smtp.url).session()
    with pytest.raises(TransientSendError, match="451"):
        session.send(outgoing(1))
    assert session.send(outgoing(1)) == "Q000001"
    assert session.connections_opened == 1


def test_a_reply_lost_after_the_data_is_transient_and_maybe_delivered(smtp):
    smtp.lose_reply_after_data(1)
    session = SmtpTransport.from_url(smtp.url).session()
    with pytest.raises(TransientSendError, match="lost during DATA") as error:
        session.send(outgoing(1))
    assert error.value.maybe_delivered
    assert len(smtp.received()) == 1  # the server did accept it


def test_a_server_that_is_not_there_is_transient():
    session = SmtpTransport.from_url(f"smtp://127.0.0.1:{free_port()}?timeout=2").session()
    with pytest.raises(TransientSendError, match="cannot connect"):
        session.send(outgoing(1))


# AUTH without TLS is what a loopback test server wants; aiosmtpd warns about it.
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_auth_from_the_url_and_no_password_in_errors_or_logs(caplog):
    caplog.set_level(logging.DEBUG)
    with FakeSMTPServer(auth=("mailer", PASSWORD)) as server:
        url = f"smtp://mailer:{quote(PASSWORD, safe='')}@127.0.0.1:{server.port}?starttls=false"
        assert SmtpTransport.from_url(url).session().send(outgoing(1)) == "Q000001"
        assert server.auth_attempts == [("mailer", True)]

        wrong = f"smtp://mailer:{quote('wrong ' + PASSWORD, safe='')}@127.0.0.1:{server.port}"
        transport = SmtpTransport.from_url(wrong + "?starttls=false")
        with pytest.raises(FatalTransportError, match="535") as error:
            transport.session().send(outgoing(2))
        assert PASSWORD not in str(error.value) and quote(PASSWORD, safe="") not in str(error.value)
        assert PASSWORD not in transport.describe()
    assert PASSWORD not in caplog.text


def test_smtp_url_parsing_and_masking():
    s = parse_smtp_url(f"smtp://user%40corp:{quote(PASSWORD, safe='')}@mail.example.com:587")
    assert (s.host, s.port, s.username, s.password) == (
        "mail.example.com",
        587,
        "user@corp",
        PASSWORD,
    )
    assert s.starttls and not s.implicit_tls
    assert s.describe() == "smtp://user@corp:***@mail.example.com:587?starttls=true"
    assert parse_smtp_url("smtps://u:p@mail.example.com").port == 465
    assert parse_smtp_url("smtps://u:p@mail.example.com").implicit_tls
    default = parse_smtp_url("smtp://relay.local")  # submission port, STARTTLS on
    assert (default.port, default.starttls) == (587, True)
    plain = parse_smtp_url("smtp://relay.local?starttls=false")  # a local relay
    assert (plain.port, plain.starttls) == (25, False)
    assert not parse_smtp_url("smtp://relay.local:25").starttls
    assert not parse_smtp_url("smtp://h:587?starttls=false").starttls
    assert parse_smtp_url("smtp://h:25?timeout=5").timeout == 5.0
    for bad in (
        "http://h",
        "smtp://",
        "smtp://h:notaport",
        "smtp://h?starttls=maybe",
        "smtp://h?x=1",
    ):
        with pytest.raises(ValueError) as error:
            parse_smtp_url(bad.replace("h", f"u:{PASSWORD}@h", 1) if "h" in bad else bad)
        assert PASSWORD not in str(error.value)
    assert safe_smtp_url(f"smtp://u:{PASSWORD}@h:notaport") == "smtp://(unparseable URL)"


def test_transport_selection(tmp_path):
    assert open_transport(None, smtp_url=None, outbox_dir=tmp_path).kind == "outbox"
    assert open_transport(None, smtp_url="smtp://h:25", outbox_dir=tmp_path).kind == "smtp"
    assert open_transport("outbox", smtp_url="smtp://h:25", outbox_dir=tmp_path).kind == "outbox"
    with pytest.raises(ValueError, match="needs PREDICTION_PIPELINE_SMTP_URL"):
        open_transport("smtp", smtp_url=None, outbox_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown email transport"):
        open_transport("carrier-pigeon", smtp_url=None, outbox_dir=tmp_path)
    resource = EmailTransportResource(smtp_url=f"smtp://u:{quote(PASSWORD, safe='')}@h:587")
    assert resource.describe() == "smtp://u:***@h:587?starttls=true"
    assert envelope_address("Prediction Pipeline <digest@localhost>") == "digest@localhost"


def test_outbox_writes_one_file_per_message_id_atomically(tmp_path):
    outbox = OutboxTransport(tmp_path / "outbox")
    session = outbox.session()
    name = session.send(outgoing(1))
    assert name == "digest-1-2026-11-02@prediction-pipeline.eml"
    assert (tmp_path / "outbox" / name).read_bytes() == outgoing(1).data
    assert session.send(outgoing(1)) == name  # a re-send replaces, never duplicates
    session.send(outgoing(2))
    assert sorted(p.name for p in (tmp_path / "outbox").iterdir()) == [
        name,
        "digest-2-2026-11-02@prediction-pipeline.eml",
    ]
    assert outbox_file_name("<../../etc/passwd>") == "etc_passwd.eml"
    (tmp_path / "file").write_text("")
    with pytest.raises(FatalTransportError, match="cannot create outbox"):
        OutboxTransport(tmp_path / "file" / "outbox").session()


def test_send_retrying_retries_transient_errors_only():
    policy = RetryPolicy(max_attempts=3, initial_wait=0.001, max_wait=0.002)
    sleeps: list[float] = []
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise TransientSendError("421")
        return "ok"

    for attempt in send_retrying(policy, sleep=sleeps.append):
        with attempt:
            result = flaky()
    assert result == "ok" and len(calls) == 3 and len(sleeps) == 2

    calls.clear()
    with pytest.raises(PermanentSendError):
        for attempt in send_retrying(policy, sleep=sleeps.append):
            with attempt:
                calls.append(1)
                raise PermanentSendError("550")
    assert len(calls) == 1

    calls.clear()
    with pytest.raises(TransientSendError):
        for attempt in send_retrying(policy, sleep=sleeps.append):
            with attempt:
                calls.append(1)
                raise TransientSendError("421")
    assert len(calls) == 3


@pytest.mark.parametrize("jitter", ["none", "plus", "full"])
def test_sends_back_off_as_the_http_clients_do(jitter):
    """Email sends and HTTP calls share one mapping of the policy to waits (`backoff_wait`):
    `initial * 2^n` capped by `max_wait`, plus up to `initial` ("plus"), or uniform below
    it ("full")."""
    policy = RetryPolicy(max_attempts=5, initial_wait=0.5, max_wait=3.0, jitter=jitter)
    sleeps: list[float] = []
    with pytest.raises(TransientSendError):
        for attempt in send_retrying(policy, sleep=sleeps.append):
            with attempt:
                raise TransientSendError("421")
    ceilings = [0.5, 1.0, 2.0, 3.0]
    assert len(sleeps) == 4
    for slept, ceiling in zip(sleeps, ceilings, strict=True):
        if jitter == "none":
            assert slept == ceiling
        elif jitter == "plus":
            assert ceiling <= slept <= min(ceiling + 0.5, 3.0)
        else:
            assert 0 <= slept <= ceiling
