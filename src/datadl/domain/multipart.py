"""Framing of multipart/byteranges bodies (RFC 9110 §14.6), computed before any byte is sent."""

from __future__ import annotations

import re
from collections.abc import Sequence

import attrs

from datadl.domain.ranges import ByteRange

_BOUNDARY = re.compile(r"^[0-9A-Za-z'()+_,./:=?-]{1,70}$")
_TOKEN = re.compile(r"[0-9A-Za-z'+_.-]+")


@attrs.frozen
class MultipartLayout:
    """Each part's header bytes before its range, the closing delimiter, the total length."""

    boundary: str
    parts: tuple[tuple[bytes, ByteRange], ...]
    closing: bytes

    @property
    def content_type(self) -> str:
        """The Content-Type of the whole body."""
        # Boundary characters such as "/" or ":" are not token characters: quote them.
        boundary = self.boundary if _TOKEN.fullmatch(self.boundary) else f'"{self.boundary}"'
        return f"multipart/byteranges; boundary={boundary}"

    @property
    def content_length(self) -> int:
        """The exact length of the whole body."""
        return sum(len(h) + r.length for h, r in self.parts) + len(self.closing)


def layout(
    ranges: Sequence[ByteRange], *, size: int, content_type: str, boundary: str
) -> MultipartLayout:
    """Lay out a multipart/byteranges body for ``ranges`` of a ``size``-byte representation."""
    if not _BOUNDARY.fullmatch(boundary):
        raise ValueError("invalid multipart boundary")
    parts = []
    for index, byte_range in enumerate(ranges):
        lead = b"" if index == 0 else b"\r\n"
        header = (
            f"--{boundary}\r\n"
            f"Content-Type: {content_type}\r\n"
            f"Content-Range: {byte_range.content_range(size)}\r\n\r\n"
        ).encode("ascii")
        parts.append((lead + header, byte_range))
    return MultipartLayout(boundary, tuple(parts), f"\r\n--{boundary}--\r\n".encode("ascii"))
