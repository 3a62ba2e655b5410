"""``mailgate send`` as a user runs it: the console script, against MTAs on loopback."""

from __future__ import annotations

import email
import email.policy
from collections.abc import Callable
from pathlib import Path

from loopback import DnsZone, ReceivingMTAs, mta_for
from process_helpers import mailgate


def parsed(content: bytes) -> email.message.EmailMessage:
    message = email.message_from_bytes(content, policy=email.policy.default)
    assert isinstance(message, email.message.EmailMessage)
    return message


def test_send_to_a_server_with_a_transcript(tmp_path: Path, receiving_mta: ReceivingMTAs) -> None:
    mta = receiving_mta(hostname="smtp.example.test")
    attachment = tmp_path / "notes.txt"
    attachment.write_text("attached\n")
    done = mailgate(
        "send", "--server", f"{mta.host}:{mta.port}", "--from", "alice@here.test",
        "--to", "bob@there.test", "--cc", "carol@there.test", "--bcc", "dan@there.test",
        "--subject", "Hello Bob", "--body", "How are you?", "--attach", str(attachment),
        "--header", "X-Campaign: spring", "--transcript",
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("S: 220 ")
    assert lines[1] == "C: EHLO localhost"
    assert any(line.startswith("C: MAIL FROM:<alice@here.test>") for line in lines), lines
    for rcpt in ("bob@there.test", "carol@there.test", "dan@there.test"):
        assert any(line.startswith(f"C: RCPT TO:<{rcpt}>") for line in lines), lines
    assert lines[-2:] == ["C: QUIT", lines[-1]]
    assert lines[-1].startswith("S: 221")
    (received,) = mta.messages
    assert received.recipients == ("bob@there.test", "carol@there.test", "dan@there.test")
    message = parsed(received.content)
    assert message["Subject"] == "Hello Bob"
    assert message["Cc"] == "carol@there.test"
    assert message["Bcc"] is None  # Bcc only in the envelope
    assert message["X-Campaign"] == "spring"
    body = message.get_body(preferencelist=("plain",))
    assert body is not None
    assert body.get_content().replace("\r\n", "\n") == "How are you?\n"
    (part,) = message.iter_attachments()
    assert part.get_filename() == "notes.txt"


def test_send_with_starttls_verified_and_auth(tmp_path: Path, receiving_mta: ReceivingMTAs) -> None:
    mta = receiving_mta(hostname="smtp.example.test", tls=True, auth={"alice": "s3cret"})
    ca = tmp_path / "ca.pem"
    receiving_mta.ca.cert_pem.write_to_path(str(ca))
    argv = (
        "send", "--server", f"{mta.host}:{mta.port}", "--from", "alice@here.test",
        "--to", "bob@there.test", "--subject", "Signed in", "--body", "Hi",
        "--tls", "--ca", str(ca), "--auth-user", "alice", "--transcript",
    )  # fmt: skip
    done = mailgate(*argv, cwd=tmp_path, env={"MAILGATE_SEND_PASSWORD": "s3cret"})
    assert done.returncode == 0, done.stderr
    assert "C: STARTTLS" in done.stdout
    assert "s3cret" not in done.stdout  # AUTH secrets are masked in the transcript
    (received,) = mta.messages
    assert (received.tls, received.login) == (True, "alice")
    from_stdin = mailgate(*argv, cwd=tmp_path, stdin="wrong\n")
    assert from_stdin.returncode == 1
    assert "535" in from_stdin.stderr


def test_send_without_a_server_goes_to_each_domain_mx(
    tmp_path: Path, dns_zone: Callable[[], DnsZone], receiving_mta: ReceivingMTAs
) -> None:
    zone = dns_zone()
    mx = mta_for(zone, receiving_mta, "there.test", replies={"gone@there.test": "550 5.1.1 No"})
    done = mailgate(
        "send", "--from", "alice@here.test", "--to", "bob@there.test", "--to", "gone@there.test",
        "--subject", "Direct", "--body", "Hi", "--resolver", zone.nameserver,
        "--port", str(receiving_mta.port or 25),
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 1
    relay = f"mx.there.test[{mx.host}]:{receiving_mta.port or 25}"
    assert f"bob@there.test via {relay}: 250" in done.stdout
    assert f"gone@there.test via {relay}: 550 5.1.1 No" in done.stdout
    assert [m.recipients for m in mx.messages] == [("bob@there.test",)]


def test_send_needs_a_recipient_and_a_sender(tmp_path: Path) -> None:
    done = mailgate("send", "--from", "a@b.test", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr == "mailgate: error: name a recipient with --to, --cc or --bcc\n"
    done = mailgate("send", "--to", "a@b.test", cwd=tmp_path)
    assert done.returncode == 2
    assert "--from" in done.stderr
