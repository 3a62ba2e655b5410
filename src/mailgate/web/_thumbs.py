"""Mailpit's attachment thumbnails: ``GET /api/v1/message/{ID}/part/{PartID}/thumb``.

As in Mailpit, the answer is a 180x120 JPEG (quality 70) on white: an image
at least that large is scaled to cover the box and cropped at its centre, a
smaller one is scaled down to fit and padded; a transparent one shows white,
and the EXIF orientation is applied.  A part that is not an image (by its
``Content-Type``, or an SVG, which is not decoded: it may hold script) gets a
blank white thumbnail, as in Mailpit.

Where mailgate parts from Mailpit is the image it cannot thumbnail: Mailpit
answers those with the blank image too, which hides a damaged attachment;
mailgate answers ``422`` with one line saying why (not a format it reads,
damaged, or too large).  No message or part: ``404``, as ``/part/{PartID}``.

An image comes from whoever sent the mail, so decoding it is guarded:

- only JPEG, PNG, GIF, WebP, BMP and TIFF are decoded (no other Pillow plugin
  sees the bytes: fewer parsers facing hostile input);
- the size the image declares is read before any pixel is, and over
  ``MAX_THUMBNAIL_PIXELS`` (20 megapixels, Mailpit's limit, about 80 MB
  decoded) it is refused without decoding: a decompression bomb of a few
  kilobytes that unpacks to gigabytes costs a header read.  Pillow's own
  ``MAX_IMAGE_PIXELS`` check (a warning, then an error at twice it) is left as
  it is, process-wide, and answered the same way if it fires first;
- the work runs in a small thread pool (``THUMBNAIL_THREADS``), never on the
  event loop, and at most ``MAX_THUMBNAIL_JOBS`` may be running or waiting:
  more get ``503`` with ``Retry-After``, so a flood of thumbnails neither
  stalls the inbox nor queues without bound.

Pillow is the optional extra ``mailgate[images]``; without it this endpoint
answers ``501`` saying how to install it, and the rest of the inbox is
unaffected.
"""

from __future__ import annotations

import asyncio
import functools
import io
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response

from mailgate.web._context import Inbox, json_error, text_error
from mailgate.web._mime import Part

if TYPE_CHECKING:
    from PIL.Image import Image

__all__ = [
    "MAX_THUMBNAIL_PIXELS",
    "ThumbnailError",
    "render_thumbnail",
    "thumbnail",
]

THUMBNAIL_SIZE = (180, 120)
"""Width and height in pixels, as Mailpit's."""
JPEG_QUALITY = 70  # Mailpit's
MAX_THUMBNAIL_PIXELS = 20_000_000
"""The most pixels (width x height, as the image declares them) decoded for a thumbnail:
Mailpit's ``maxDecodedPixels``, 80 MB as RGBA."""
MAX_THUMBNAIL_SOURCE_OCTETS = 32 * 1024 * 1024
"""The largest attachment decoded: past it, decoding alone takes seconds of a thread."""
THUMBNAIL_THREADS = 2
MAX_THUMBNAIL_JOBS = 8
"""Thumbnails being made or waiting for a thread, for the whole process."""
FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")
"""The Pillow plugins an attachment is offered to."""
TOO_LARGE = f"the image has over {MAX_THUMBNAIL_PIXELS:,} pixels: too large to thumbnail"
NO_PILLOW = "attachment thumbnails need Pillow: pip install 'mailgate[images]'"

_EXECUTOR = ThreadPoolExecutor(THUMBNAIL_THREADS, thread_name_prefix="mailgate-thumbnail")
_JOBS = threading.BoundedSemaphore(MAX_THUMBNAIL_JOBS)


class ThumbnailError(Exception):
    """An image that cannot be thumbnailed; the message says why, for the client."""


class PillowMissingError(Exception):
    """Pillow is not installed."""


@functools.cache
def _pillow_installed() -> bool:
    try:
        import PIL.Image  # noqa: F401, PLC0415 - an optional dependency, looked for once
    except ImportError:
        return False
    return True


def _jpeg(image: Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=JPEG_QUALITY)
    return out.getvalue()


@functools.cache
def blank_thumbnail() -> bytes:
    """The white JPEG Mailpit answers for a part that is not an image."""
    from PIL import Image  # noqa: PLC0415 - optional: only when Pillow is installed

    return _jpeg(Image.new("RGB", THUMBNAIL_SIZE, "white"))


def render_thumbnail(data: bytes) -> bytes:
    """A 180x120 JPEG of the image ``data``, as Mailpit makes it.

    Raises ``ThumbnailError`` for data that is not an image of a format
    read here, is damaged, or is larger than the limits; ``ImportError``
    without Pillow.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError  # noqa: PLC0415 - optional

    if len(data) > MAX_THUMBNAIL_SOURCE_OCTETS:
        mib = MAX_THUMBNAIL_SOURCE_OCTETS // (1024 * 1024)
        raise ThumbnailError(f"the image is over {mib} MiB: too large to thumbnail")
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as source:
            if source.width * source.height > MAX_THUMBNAIL_PIXELS:
                raise ThumbnailError(TOO_LARGE)
            # JPEG decodes at 1/2, 1/4 or 1/8 of its size if that still covers the box.
            source.draft("RGB", THUMBNAIL_SIZE)
            ImageOps.exif_transpose(source, in_place=True)
            # Scaled first and converted after: one full-size copy of the pixels, not three.
            if source.mode not in ("RGB", "RGBA", "L", "LA"):
                small = _shrink(source.convert("RGBA"))  # palette, CMYK, 16-bit...
            else:
                small = _shrink(source)
            small = small.convert("RGBA")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # Pillow's own limit, checked before ours can be: the image is larger still.  (Its
        # warning is an error where warnings are made errors; elsewhere ours follows it.)
        raise ThumbnailError(TOO_LARGE) from None
    except UnidentifiedImageError:
        names = ", ".join(FORMATS)
        raise ThumbnailError(f"the part is not an image mailgate reads ({names})") from None
    except ThumbnailError:
        raise
    except Exception as error:  # Pillow's decoders raise many kinds on hostile data
        raise ThumbnailError(f"the image is damaged: {_reason(error)}") from None
    width, height = THUMBNAIL_SIZE
    canvas = Image.new("RGB", THUMBNAIL_SIZE, "white")
    canvas.paste(small, ((width - small.width) // 2, (height - small.height) // 2), small)
    return _jpeg(canvas)


def _shrink(image: Image) -> Image:
    """Mailpit's scaling: cover the box and crop the middle; an image smaller than the box
    either way is shrunk to fit in it instead (and padded), never enlarged."""
    from PIL.Image import Resampling  # noqa: PLC0415 - optional

    width, height = THUMBNAIL_SIZE
    if image.width < width or image.height < height:
        image.thumbnail(THUMBNAIL_SIZE, Resampling.LANCZOS)
        return image
    scale = max(width / image.width, height / image.height)
    left = (image.width - width / scale) / 2
    top = (image.height - height / scale) / 2
    box = (left, top, image.width - left, image.height - top)
    # reducing_gap: a cheap box reduction first, Lanczos over the last factor of 3.
    return image.resize(THUMBNAIL_SIZE, Resampling.LANCZOS, box=box, reducing_gap=3.0)


def _reason(error: Exception) -> str:
    text = " ".join(str(error).split())[:200]
    return text or type(error).__name__


def _is_image(part: Part) -> bool:
    return part.content_type.startswith("image/") and part.content_type != "image/svg+xml"


def _job(part: Part) -> bytes:
    try:
        return render_thumbnail(part.data) if _is_image(part) else blank_thumbnail()
    finally:
        _JOBS.release()


async def thumbnail(inbox: Inbox, request: Request) -> Response:
    """``GET /api/v1/message/{id}/part/{part}/thumb``."""
    if not _pillow_installed():
        return json_error(501, NO_PILLOW)
    loaded = await inbox.load(request.path_params["id"])
    if loaded is None:
        return text_error(404, "message not found")
    part = (await inbox.parse(loaded[1])).part(request.path_params["part"])
    if part is None:
        return text_error(404, "part not found")
    if not _JOBS.acquire(blocking=False):
        busy = text_error(503, "too many thumbnails are being made: try again in a moment")
        busy.headers["Retry-After"] = "1"
        return busy
    try:
        pending = asyncio.get_running_loop().run_in_executor(_EXECUTOR, _job, part)
    except RuntimeError:  # the executor is shut down: the interpreter is exiting
        _JOBS.release()
        raise
    try:
        jpeg = await pending
    except ThumbnailError as error:
        return text_error(422, str(error))
    return Response(jpeg, media_type="image/jpeg", headers={"X-Content-Type-Options": "nosniff"})
