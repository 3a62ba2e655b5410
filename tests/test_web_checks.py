"""Mailpit's attachment thumbnails, on a live mailgate with mail sent over SMTP.

Thumbnails are read back with Pillow.
"""

from __future__ import annotations

import io
import os
import smtplib
import struct
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest

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


# -- as a user runs it -------------------------------------------------------------------------


def test_serve_without_pillow(tmp_path: Path, launcher: Launcher) -> None:
    # A PIL package that fails to import stands in for a machine without Pillow.
    hidden = tmp_path / "no-pillow" / "PIL"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ImportError('Pillow is not installed here')\n")
    path = os.pathsep.join([str(hidden.parent), *filter(None, [environment().get("PYTHONPATH")])])
    served = launcher.serve(
        "--smtp", "127.0.0.1:0", "--http", "127.0.0.1:0", "--data", str(tmp_path / "data"),
        env={"PYTHONPATH": path},
    )  # fmt: skip
    send(served.port, with_attachments({"a.png": ("image/png", stripes())}))
    api = f"{served.http_url}api/v1/message/latest"
    part = httpx.get(api, timeout=30).json()["Attachments"][0]["PartID"]
    answer = httpx.get(f"{api}/part/{part}/thumb", timeout=30)
    assert answer.status_code == 501
    assert answer.json() == {
        "Error": "attachment thumbnails need Pillow: pip install 'mailgate[images]'"
    }
    served.stop_cleanly()
