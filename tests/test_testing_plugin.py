"""The pytest plugin as a user's test suite meets it: installed, not imported.

Each test writes a small application and its tests into a fresh directory and
runs pytest on them in a child process (``pytester.runpytest_subprocess``),
which finds the plugin through the ``pytest11`` entry point as a user's
pytest does.  The servers of the inner tests bind port 0, so inner sessions
never clash with each other or with this one.  The inner tests hold the
detailed assertions; each outer test checks how many of them ran and passed,
and reads the output where the output is the point (a wait that timed out).
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from process_helpers import TIMEOUT

pytest_plugins = ["pytester"]

# The application under test: it sends a confirmation mail in the background, as a web
# app hands it to a task queue, a little after the sign-up request returns.
APP = '''
import smtplib
import threading
from email.message import EmailMessage

PDF = b"%PDF-1.4 terms\\x00\\xff"


def confirmation(address):
    message = EmailMessage()
    message["From"] = "Shop <noreply@shop.example>"
    message["To"] = f"New Customer <{address}>"
    message["Cc"] = "sales@shop.example"
    message["Reply-To"] = "help@shop.example"
    message["Subject"] = "Confirm your address"
    message["X-Shop-Campaign"] = "sign-up"
    message.set_content(
        "Welcome!\\n\\nConfirm your address: https://shop.example/confirm?token=t0k3n.\\n"
        "Questions? See https://shop.example/help\\n"
    )
    message.add_alternative(
        '<p>Welcome! <a href="https://shop.example/confirm?token=t0k3n">Confirm</a></p>'
        '<p><a href="https://shop.example/help">Help</a> <img src="https://shop.example/l.png">'
        '<a href="https://shop.example/unsubscribe?u=7&amp;list=news">Unsubscribe</a></p>'
        "<style>p { background: url(https://shop.example/bg.png) }</style>",
        subtype="html",
    )
    message.add_attachment(PDF, maintype="application", subtype="pdf", filename="terms.pdf")
    return message


def sign_up(address, smtp_host, smtp_port, delay=0.3):
    """Send the confirmation after ``delay`` seconds, from a thread; the audit copy is
    sent to an address no header names (as Bcc)."""

    def send():
        with smtplib.SMTP(smtp_host, smtp_port) as smtp:
            recipients = [address, "sales@shop.example", "audit@shop.example"]
            smtp.send_message(confirmation(address), to_addrs=recipients)

    sender = threading.Timer(delay, send)
    sender.start()
    return sender


def send(smtp_host, smtp_port, subject, sender="app@shop.example", to="bob@example.org"):
    content = f"From: {sender}\\r\\nTo: {to}\\r\\nSubject: {subject}\\r\\n\\r\\nHi\\r\\n"
    with smtplib.SMTP(smtp_host, smtp_port) as smtp:
        smtp.sendmail(sender, [to], content)
'''

WAITING = """
from datetime import UTC, datetime

import httpx
import pytest

from app import PDF, send, sign_up
from mailgate.model import Address


def test_waits_for_the_mail_the_app_sends_later(mailgate_server):
    send(mailgate_server.host, mailgate_server.port, "Not this one", to="ann@example.org")
    started = datetime.now(UTC)
    sender = sign_up("bob@example.org", mailgate_server.host, mailgate_server.port)
    mail = mailgate_server.wait_for('to:bob@example.org subject:"Confirm your"', timeout=20)
    sender.join()
    assert mail.received_at >= started  # the one sent while it waited
    assert mail.subject == "Confirm your address"
    assert mail.from_ == Address("Shop", "noreply@shop.example")
    assert mail.to == (Address("New Customer", "bob@example.org"),)
    assert mail.cc == (Address("", "sales@shop.example"),)
    assert mail.bcc == (Address("", "audit@shop.example"),)  # from the envelope
    assert mail.reply_to == (Address("", "help@shop.example"),)
    assert mail.text.startswith("Welcome!\\n\\nConfirm your address:")
    assert '<a href="https://shop.example/confirm?token=t0k3n">' in mail.html
    assert mail.headers["x-shop-campaign"] == mail.headers["X-SHOP-CAMPAIGN"] == "sign-up"
    assert "subject" in mail.headers and "bcc" not in mail.headers
    assert len(mail.headers.get_all("Received")) == 1  # mailgate's trace header
    assert mail.headers.get("Bcc", "none") == "none"
    [attachment] = mail.attachments
    assert (attachment.filename, attachment.content_type, attachment.data) == (
        "terms.pdf",
        "application/pdf",
        PDF,
    )
    assert mail.links == (
        "https://shop.example/confirm?token=t0k3n",
        "https://shop.example/help",
        "https://shop.example/unsubscribe?u=7&list=news",
    )
    assert mail.raw.startswith(b"Return-Path: <noreply@shop.example>\\r\\nReceived: from ")
    assert b'filename="terms.pdf"' in mail.raw
    assert (mail.read, mail.tags) == (False, ())  # waiting marks nothing read
    assert mail.envelope.rcpt_to == ("bob@example.org", "sales@shop.example", "audit@shop.example")
    assert mailgate_server.message(mail.id) == mail


def test_a_stored_match_is_returned_at_once(mailgate_server):
    for subject in ("Code 111", "Code 222", "Receipt"):
        send(mailgate_server.host, mailgate_server.port, subject)
    assert mailgate_server.wait_for("subject:code", timeout=0).subject == "Code 222"  # newest
    assert mailgate_server.wait_for("is:unread -subject:code").subject == "Receipt"
    listed = mailgate_server.messages(query="subject:code")
    assert [m.subject for m in listed] == ["Code 222", "Code 111"]
    assert [m.subject for m in mailgate_server.messages()] == ["Receipt", "Code 222", "Code 111"]
    assert mailgate_server.wait_for_messages(3, timeout=1)[0].subject == "Receipt"
    with pytest.raises(KeyError):
        mailgate_server.message("01HXXXXXXXXXXXXXXXXXXXXXXX")


def test_has_attachment_and_tags(mailgate_server):
    sign_up("carol@example.org", mailgate_server.host, mailgate_server.port, delay=0).join()
    send(mailgate_server.host, mailgate_server.port, "Plain")
    mail = mailgate_server.wait_for("has:attachment")
    assert mail.to[0].address == "carol@example.org"
    with httpx.Client(base_url=mailgate_server.http_url, timeout=30) as http:
        tagged = http.put("/api/v1/tags", json={"IDs": [mail.id], "Tags": ["welcome"]})
        assert tagged.status_code == 200
    tagged = mailgate_server.wait_for("tag:welcome")
    assert (tagged.id, tagged.tags) == (mail.id, ("welcome",))


def test_the_mailpit_api_at_http_url(mailgate_server):
    sign_up("dan@example.org", mailgate_server.host, mailgate_server.port, delay=0).join()
    mail = mailgate_server.wait_for("to:dan@example.org")
    with httpx.Client(base_url=mailgate_server.http_url, timeout=30) as http:
        listed = http.get("/api/v1/search", params={"query": "subject:confirm"}).json()
        assert [m["ID"] for m in listed["messages"]] == [mail.id]
        message = http.get(f"/api/v1/message/{mail.id}").json()
        assert message["Bcc"] == [{"Name": "", "Address": "audit@shop.example"}]
        assert message["Attachments"][0]["FileName"] == "terms.pdf"
        raw = http.get(f"/api/v1/message/{mail.id}/raw")
        assert raw.content == mail.raw
    assert mailgate_server.message(mail.id).read  # the API's GET marked it read


def test_the_factory_with_domains(mailgate_server_factory):
    import smtplib

    local = mailgate_server_factory(domains=["example.org"], hostname="mx.example.org")
    other = mailgate_server_factory(http=False)
    assert local.port != other.port and other.http_url == ""
    with smtplib.SMTP(local.host, local.port) as smtp:
        assert b"mx.example.org" in smtp.ehlo()[1]
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            smtp.sendmail("a@elsewhere.example", ["x@elsewhere.example"], b"\\r\\nx")
        [(code, _)] = refused.value.recipients.values()
        assert 500 <= code < 600
    send(local.host, local.port, "For a local domain")
    assert local.wait_for("subject:local").to[0].address == "bob@example.org"
    assert other.messages() == []


@pytest.mark.mailgate(domains=["example.net"], http=False)
def test_the_marker_sets_the_fixture_options(mailgate_server):
    import smtplib

    assert mailgate_server.http_url == ""
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        send(mailgate_server.host, mailgate_server.port, "x", to="bob@example.org")
    send(mailgate_server.host, mailgate_server.port, "Local", to="bob@example.net")
    assert mailgate_server.wait_for("to:example.net").subject == "Local"


def test_tls_and_users(mailgate_server_factory):
    import smtplib
    import ssl

    server = mailgate_server_factory(tls=True, users={"shop": "s3cret"})
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the certificate is self-signed
    with smtplib.SMTP(server.host, server.port_of("submission")) as smtp:
        smtp.starttls(context=context)
        smtp.login("shop", "s3cret")
        smtp.sendmail("noreply@shop.example", ["eve@example.org"], b"Subject: In\\r\\n\\r\\n.")
    mail = server.wait_for("subject:in")
    assert mail.envelope.auth_user == "shop"
    assert mail.envelope.tls is not None
"""

TIMING_OUT = """
from app import send


def test_the_mail_never_comes(mailgate_server):
    send(mailgate_server.host, mailgate_server.port, "Password reset", to="ann@example.org")
    send(mailgate_server.host, mailgate_server.port, "Weekly news", sender="News <n@shop.example>")
    mailgate_server.wait_for('to:bob@example.org subject:"Welcome"', timeout=0.5)
"""


@pytest.fixture
def suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A user's project: the app, pytest configured strictly, the plugin found as installed."""
    for name in list(os.environ):
        if name.startswith("MAILGATE_") or name in ("PYTEST_ADDOPTS", "PYTEST_PLUGINS"):
            monkeypatch.delenv(name)
    monkeypatch.delenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    if os.environ.get("PYTHONPATH"):  # a compiled build first on it, relative to the repository
        paths = os.environ["PYTHONPATH"].split(os.pathsep)
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join(str(Path(p).resolve()) for p in paths))
    pytester.makepyfile(app=APP)
    return pytester


def strict_ini(extra: str = "") -> str:
    return textwrap.dedent(
        """
        [pytest]
        addopts = -p no:cacheprovider -p no:asyncio --strict-markers
        filterwarnings = error
        """
    ) + textwrap.dedent(extra)


def test_a_users_suite_waits_for_mail_by_query(suite: pytest.Pytester) -> None:
    suite.makeini(strict_ini())
    suite.makepyfile(test_signup=WAITING)
    result = suite.runpytest_subprocess("-v", timeout=TIMEOUT * 4)
    assert result.ret == 0, result.stdout.str() + result.stderr.str()
    result.assert_outcomes(passed=7)


def test_a_wait_that_times_out_lists_what_did_arrive(suite: pytest.Pytester) -> None:
    suite.makeini(strict_ini())
    suite.makepyfile(test_late=TIMING_OUT)
    result = suite.runpytest_subprocess(timeout=TIMEOUT * 2)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "E*mailgate.testing.WaitTimeoutError: no message matching"
            " 'to:bob@example.org subject:\"Welcome\"' arrived within 0.5 seconds;"
            " the store holds 2 messages:",
            "E*  Subject: 'Weekly news'  From: News <n@shop.example>  To: bob@example.org",
            "E*  Subject: 'Password reset'  From: app@shop.example  To: ann@example.org",
        ]
    )


def test_ini_options_set_the_fixtures_defaults(suite: pytest.Pytester) -> None:
    suite.makeini(
        strict_ini(
            """
            mailgate_hostname = mx.shop.example
            mailgate_domains = shop.example example.net
            mailgate_http = false
            """
        )
    )
    suite.makepyfile(
        test_defaults="""
        import smtplib

        import pytest

        from app import send


        def test_the_defaults(mailgate_server, mailgate_server_factory):
            assert mailgate_server.http_url == ""
            with smtplib.SMTP(mailgate_server.host, mailgate_server.port) as smtp:
                assert smtp.ehlo()[1].startswith(b"mx.shop.example")
            send(mailgate_server.host, mailgate_server.port, "One", to="a@example.net")
            with pytest.raises(smtplib.SMTPRecipientsRefused):
                send(mailgate_server.host, mailgate_server.port, "Two", to="a@example.org")
            assert mailgate_server_factory(http=True).http_url.startswith("http://127.0.0.1:")


        @pytest.mark.mailgate("example.org")
        def test_a_marker_takes_keywords_only(mailgate_server):
            pass
        """
    )
    result = suite.runpytest_subprocess(timeout=TIMEOUT * 2)
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*@pytest.mark.mailgate takes keyword options only*"])
