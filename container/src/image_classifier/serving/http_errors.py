"""The front's error answers: JSON ``{"error": ...}`` with a real status, and path values checked before use."""

from __future__ import annotations

from aiohttp import web

from image_classifier.serving.codec import RequestError


def json_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def path_text(value, what: str) -> str:
    """A non-empty string that can go into a URL or a path (no lone surrogates), else a 400."""
    if not isinstance(value, str) or not value:
        raise RequestError(400, f"{what} must be a non-empty string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise RequestError(400, f"{what} is not valid text") from None
    return value
