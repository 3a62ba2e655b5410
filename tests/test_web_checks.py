"""Mailpit's attachment thumbnails and link check, on a live mailgate with mail sent over SMTP.

Thumbnails are read back with Pillow; the links point at a real HTTP server on
loopback that this module runs and that records what it was asked.
"""

from __future__ import annotations

import io
import os
import smtplib
import socket
import struct
import threading
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import pytest

from loopback import HttpSite
from mailgate.web import WebSettings
from process_helpers import Launcher, environment
from web_helpers import LiveInbox, require_module

Image = require_module("PIL.Image")

# -- images -----------------------------------------------------------------------------------


def image_bytes(image: Any, kind: str) -> bytes:
    out = io.BytesIO()
    image.save(out, kind)
    return out.getvalue()


def stripes() -> bytes:
    """360x120: red, green and blue thirds."""
    image = Image.new("RGB", (360, 120), "red")
    image.paste((0, 255, 0), (120, 0, 240, 120))
    image.paste((0, 0, 255), (240, 0, 360, 120))
    return image_bytes(image, "PNG")


def png_bomb(width: int, height: int) -> bytes:
    """A real grey PNG of ``width`` x ``height`` zeros: a few kilobytes that unpack to
    ``width * height`` octets."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    squeeze = zlib.compressobj(9)
    rows = bytes((width + 1) * max(1, (1 << 20) // (width + 1)))  # each row: filter 0, zeros
    per_block = len(rows) // (width + 1)
    packed = []
    for start in range(0, height, per_block):
        packed.append(squeeze.compress(rows[: (width + 1) * min(per_block, height - start)]))
    packed.append(squeeze.flush())
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", b"".join(packed))
        + chunk(b"IEND", b"")
    )


def upside_down() -> bytes:
    """The stripes as a camera held upside down saves them: EXIF orientation 3 (180°)."""
    image = Image.open(io.BytesIO(stripes())).rotate(180)
    exif = Image.Exif()
    exif[0x0112] = 3
    out = io.BytesIO()
    image.save(out, "JPEG", exif=exif, quality=95)
    return out.getvalue()


def attachments() -> dict[str, tuple[str, bytes]]:
    photo = Image.new("RGB", (1200, 800), (200, 40, 40))
    clear = Image.new("RGBA", (300, 200), (0, 0, 0, 0))
    good_png = stripes()
    return {
        "stripes.png": ("image/png", good_png),
        "photo.jpg": ("image/jpeg", image_bytes(photo, "JPEG")),
        "turned.jpg": ("image/jpeg", upside_down()),
        "small.png": ("image/png", image_bytes(Image.new("RGB", (60, 40), "black"), "PNG")),
        "clear.png": ("image/png", image_bytes(clear, "PNG")),
        "report.pdf": ("application/pdf", b"%PDF-1.4 not an image\n"),
        "logo.svg": ("image/svg+xml", b'<svg xmlns="http://www.w3.org/2000/svg"/>'),
        "noise.png": ("image/png", b"not a picture at all\n" * 100),
        "cut.png": ("image/png", good_png[: len(good_png) // 2]),
        "bomb.png": ("image/png", png_bomb(10_000, 10_000)),
        "large.png": ("image/png", png_bomb(5_000, 5_000)),
    }


def send(port: int, message: EmailMessage) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.send_message(message)


def with_attachments(files: dict[str, tuple[str, bytes]]) -> EmailMessage:
    message = EmailMessage()
    message["From"] = "app@example.com"
    message["To"] = "dev@example.org"
    message["Subject"] = "Pictures"
    message.set_content("See the attachments.")
    for name, (content_type, data) in files.items():
        maintype, _, subtype = content_type.partition("/")
        message.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    return message


def decoded(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/jpeg"
    assert response.content.startswith(b"\xff\xd8\xff")  # a JPEG's SOI marker
    image = Image.open(io.BytesIO(response.content))
    assert (image.format, image.size) == ("JPEG", (180, 120))
    return image.convert("RGB")


def near(pixel: tuple[int, int, int], colour: tuple[int, int, int]) -> bool:
    return all(abs(a - b) <= 24 for a, b in zip(pixel, colour, strict=True))


# -- thumbnails --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pictures(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[LiveInbox, dict[str, str]]]:
    with LiveInbox(tmp_path_factory.mktemp("thumbs")) as inbox:
        send(inbox.smtp_port, with_attachments(attachments()))
        message = httpx.get(f"{inbox.url}/api/v1/message/latest", timeout=30).json()
        parts = {a["FileName"]: a["PartID"] for a in message["Attachments"]}
        yield inbox, parts


def thumb(inbox: LiveInbox, part: str, message: str = "latest") -> httpx.Response:
    return httpx.get(f"{inbox.url}/api/v1/message/{message}/part/{part}/thumb", timeout=30)


def test_a_png_is_scaled_to_cover_and_cropped(pictures: tuple[LiveInbox, dict[str, str]]) -> None:
    inbox, parts = pictures
    image = decoded(thumb(inbox, parts["stripes.png"]))
    # 360x120 covers 180x120 as it is; the middle 180 columns are kept: a quarter of the
    # red third, all of the green one, a quarter of the blue one.
    assert near(image.getpixel((5, 60)), (255, 0, 0))
    assert near(image.getpixel((90, 60)), (0, 255, 0))
    assert near(image.getpixel((174, 60)), (0, 0, 255))


def test_a_jpeg_photo_is_thumbnailed(pictures: tuple[LiveInbox, dict[str, str]]) -> None:
    inbox, parts = pictures
    image = decoded(thumb(inbox, parts["photo.jpg"]))
    for corner in ((0, 0), (179, 0), (0, 119), (179, 119), (90, 60)):
        assert near(image.getpixel(corner), (200, 40, 40)), corner


def test_the_exif_orientation_is_applied(pictures: tuple[LiveInbox, dict[str, str]]) -> None:
    inbox, parts = pictures
    image = decoded(thumb(inbox, parts["turned.jpg"]))
    assert near(image.getpixel((5, 60)), (255, 0, 0))
    assert near(image.getpixel((174, 60)), (0, 0, 255))


def test_a_small_image_is_padded_and_transparency_is_white(
    pictures: tuple[LiveInbox, dict[str, str]],
) -> None:
    inbox, parts = pictures
    small = decoded(thumb(inbox, parts["small.png"]))
    assert near(small.getpixel((90, 60)), (0, 0, 0))  # 60x40, centred, not enlarged
    assert near(small.getpixel((5, 5)), (255, 255, 255))
    assert near(small.getpixel((90, 5)), (255, 255, 255))
    clear = decoded(thumb(inbox, parts["clear.png"]))
    assert clear.getextrema() == ((255, 255), (255, 255), (255, 255))


@pytest.mark.parametrize("name", ["report.pdf", "logo.svg"])
def test_a_part_that_is_not_an_image_gets_a_blank_thumbnail(
    pictures: tuple[LiveInbox, dict[str, str]], name: str
) -> None:
    inbox, parts = pictures
    image = decoded(thumb(inbox, parts[name]))
    assert image.getextrema() == ((255, 255), (255, 255), (255, 255))


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("noise.png", "the part is not an image mailgate reads (JPEG, PNG, GIF, WEBP, BMP, TIFF)"),
        ("cut.png", "the image is damaged: "),
        ("bomb.png", "the image has over 20,000,000 pixels: too large to thumbnail"),
        ("large.png", "the image has over 20,000,000 pixels: too large to thumbnail"),
    ],
)
def test_an_image_that_cannot_be_thumbnailed_is_a_clear_422(
    pictures: tuple[LiveInbox, dict[str, str]], name: str, reason: str
) -> None:
    inbox, parts = pictures
    response = thumb(inbox, parts[name])
    assert response.status_code == 422, response.text
    assert response.text.startswith(reason)
    # The inbox is still answering.
    assert httpx.get(f"{inbox.url}/api/v1/messages", timeout=30).json()["total"] >= 1


def test_no_such_part_or_message_is_404(pictures: tuple[LiveInbox, dict[str, str]]) -> None:
    inbox, _ = pictures
    assert (thumb(inbox, "9.9").status_code, thumb(inbox, "9.9").text) == (404, "part not found")
    missing = thumb(inbox, "2", message="01NOSUCHMESSAGE0000000000")
    assert (missing.status_code, missing.text) == (404, "message not found")


def test_many_thumbnails_at_once_get_a_thumbnail_or_a_503(
    pictures: tuple[LiveInbox, dict[str, str]],
) -> None:
    inbox, parts = pictures
    names = ["photo.jpg", "bomb.png", "stripes.png", "large.png"] * 3
    with ThreadPoolExecutor(len(names)) as pool:
        answers = list(pool.map(lambda name: (name, thumb(inbox, parts[name])), names))
    for name, response in answers:
        if response.status_code == 503:
            assert response.headers["retry-after"] == "1"
        elif name.startswith(("bomb", "large")):
            assert response.status_code == 422, response.text
        else:
            decoded(response)
    assert any(r.status_code == 200 for _, r in answers)


# -- link check --------------------------------------------------------------------------------


class Site:
    """A real HTTP server on loopback: each path answers one way; every request is noted."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str]] = []
        self.release = threading.Event()
        self.http = HttpSite(self.answer)
        self.url = self.http.url

    def answer(self, handler: BaseHTTPRequestHandler) -> None:
        method, path = handler.command, handler.path
        self.asked.append((method, path))
        status, headers = 200, {}
        if path == "/missing":
            status = 404
        elif path == "/moved":
            status, headers = 301, {"Location": "/ok"}
        elif path == "/again":
            status, headers = 302, {"Location": "/again"}
        elif path == "/slow" or path.startswith("/slow/"):
            self.release.wait(30)
        elif path == "/get-only" and method == "HEAD":
            status = 405
        body = b"a body that is never read\n" if method == "GET" else b""
        handler.send_response(status)
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(body) or 26))
        handler.end_headers()
        handler.wfile.write(body)

    def close(self) -> None:
        self.release.set()
        self.http.close()


@pytest.fixture
def site() -> Iterator[Site]:
    started = Site()
    try:
        yield started
    finally:
        started.close()


def refused_url() -> str:
    with socket.socket() as spare:
        spare.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{spare.getsockname()[1]}/gone"


def with_links(html: str, text: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = "app@example.com"
    message["To"] = "dev@example.org"
    message["Subject"] = "Links"
    message.set_content(text)
    message.add_alternative(html, subtype="html")
    return message


def link_check(inbox: LiveInbox, query: str = "") -> Any:
    response = httpx.get(f"{inbox.url}/api/v1/message/latest/link-check{query}", timeout=60)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    return response.json()


LOOPBACK = WebSettings(allow_internal_http_requests=True, link_check_timeout=1.0)


def test_links_are_found_once_and_checked(tmp_path: Path, site: Site) -> None:
    gone = refused_url()
    html = (
        f'<p><a href="{site.url}/ok">ok</a> <a href="{site.url}/missing">missing</a>'
        f' <img src="{site.url}/moved"> <a href="mailto:dev@example.org">mail</a>'
        f' <link rel="stylesheet" href="{site.url}/get-only"> <a href="{site.url}/ok">again</a>'
        f' <a href="{site.url}/slow">slow</a> <a href="{site.url}/again">loop</a></p>'
    )
    text = (
        f"Open {site.url}/ok. Or {gone}, ftp://example.org/file and\n<{site.url}/ok?long=\n yes>\n"
    )
    with LiveInbox(tmp_path, LOOPBACK) as inbox:
        send(inbox.smtp_port, with_links(html, text))
        report = link_check(inbox)
        links = [  # Mailpit's order: <a>, then stylesheets, then <img>, then the text
            [site.url + "/ok", 200, "OK"],
            [site.url + "/missing", 404, "Not Found"],
            [site.url + "/slow", 0, "timed out"],
            [site.url + "/again", 302, "Found"],
            [site.url + "/get-only", 200, "OK"],  # HEAD refused: asked again with GET
            [site.url + "/moved", 301, "Moved Permanently"],
            [gone, 0, "connection refused"],
            [site.url + "/ok?long=yes", 200, "OK"],  # a link folded in <...>
        ]
        assert report == {
            "Errors": 3,
            "Links": [{"URL": u, "StatusCode": c, "Status": s} for u, c, s in links],
        }
        assert ("GET", "/get-only") in site.asked
        assert {method for method, path in site.asked if path != "/get-only"} == {"HEAD"}

        followed = link_check(inbox, "?follow=true")
        statuses = {link["URL"]: (link["StatusCode"], link["Status"]) for link in followed["Links"]}
        assert statuses[site.url + "/moved"] == (200, "OK")
        assert statuses[site.url + "/again"] == (0, "too many redirects")
        assert followed["Errors"] == 4
        # 1 + MAX_REDIRECTS requests for the loop.
        assert site.asked.count(("HEAD", "/again")) == 1 + 4


def test_loopback_links_are_refused_unless_allowed(tmp_path: Path, site: Site) -> None:
    with LiveInbox(tmp_path) as inbox:
        port = site.url.rpartition(":")[2]
        text = f"localhost too: http://localhost:{port}/ok"
        send(inbox.smtp_port, with_links(f'<a href="{site.url}/ok">ok</a>', text))
        report = link_check(inbox)
    blocked = {"StatusCode": 451, "Status": "Blocked private/reserved address"}
    assert report["Errors"] == 2
    assert [{k: v for k, v in link.items() if k != "URL"} for link in report["Links"]] == [
        blocked,
        blocked,
    ]
    assert site.asked == []


def test_the_check_stops_when_its_time_is_spent(tmp_path: Path, site: Site) -> None:
    # Twenty slow links of one host, two at a time, 0.3 seconds each: the check's budget
    # (six timeouts) runs out before the last are asked.
    html = "".join(f'<a href="{site.url}/slow/{n}">{n}</a>' for n in range(20))
    settings = WebSettings(allow_internal_http_requests=True, link_check_timeout=0.3)
    with LiveInbox(tmp_path, settings) as inbox:
        send(inbox.smtp_port, with_links(html, "slow links"))
        report = link_check(inbox)
    statuses = [link["Status"] for link in report["Links"]]
    assert len(statuses) == 20
    assert report["Errors"] == 20
    assert set(statuses) == {"timed out", "the check ran out of time"}
    assert statuses[-1] == "the check ran out of time"
    assert len(site.asked) < 20


def test_a_message_without_links_and_one_that_does_not_exist(tmp_path: Path) -> None:
    with LiveInbox(tmp_path) as inbox:
        send(inbox.smtp_port, with_links("<p>No links.</p>", "None here."))
        assert link_check(inbox) == {"Errors": 0, "Links": []}
        missing = httpx.get(f"{inbox.url}/api/v1/message/01NOSUCHMESSAGE0000000000/link-check")
        assert (missing.status_code, missing.text) == (404, "message not found")
        for check in ("html-check", "sa-check"):
            answer = httpx.get(f"{inbox.url}/api/v1/message/latest/{check}")
            assert answer.status_code == 501
            assert "mailgate does not support" in answer.json()["Error"]
        paths = httpx.get(f"{inbox.url}/api/v1/openapi.json").json()["paths"]
        assert "200" in paths["/api/v1/message/{ID}/link-check"]["get"]["responses"]
        assert "200" in paths["/api/v1/message/{ID}/part/{PartID}/thumb"]["get"]["responses"]


# -- as a user runs it -------------------------------------------------------------------------


def test_serve_with_internal_requests_allowed_and_without_pillow(
    tmp_path: Path, launcher: Launcher, site: Site
) -> None:
    # A PIL package that fails to import stands in for a machine without Pillow.
    hidden = tmp_path / "no-pillow" / "PIL"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ImportError('Pillow is not installed here')\n")
    path = os.pathsep.join([str(hidden.parent), *filter(None, [environment().get("PYTHONPATH")])])
    served = launcher.serve(
        "--smtp", "127.0.0.1:0", "--http", "127.0.0.1:0", "--data", str(tmp_path / "data"),
        "--allow-internal-http-requests",
        env={"PYTHONPATH": path},
    )  # fmt: skip
    message = with_links(f'<a href="{site.url}/missing">x</a>', "see the picture")
    message.add_attachment(stripes(), maintype="image", subtype="png", filename="a.png")
    send(served.port, message)
    api = f"{served.http_url}api/v1/message/latest"
    report = httpx.get(f"{api}/link-check", timeout=30).json()
    assert report == {
        "Errors": 1,
        "Links": [{"URL": f"{site.url}/missing", "StatusCode": 404, "Status": "Not Found"}],
    }
    part = httpx.get(api, timeout=30).json()["Attachments"][0]["PartID"]
    answer = httpx.get(f"{api}/part/{part}/thumb", timeout=30)
    assert answer.status_code == 501
    assert answer.json() == {
        "Error": "attachment thumbnails need Pillow: pip install 'mailgate[images]'"
    }
    served.stop_cleanly()
