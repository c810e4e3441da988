"""Tests for the framing of multipart/byteranges bodies."""

from __future__ import annotations

import string
from email.message import Message
from email.parser import BytesParser

import pytest
from hypothesis import given
from hypothesis import strategies as st

from datadl.domain.multipart import MultipartLayout, layout
from datadl.domain.ranges import ByteRange

DATA = bytes(range(256)) * 4  # every byte value, CR and LF included
BOUNDARY = "datadl-3vq7k2m9"
BOUNDARY_CHARS = string.ascii_letters + string.digits + "'()+_,./:=?-"


def assemble(made: MultipartLayout, data: bytes) -> bytes:
    """The body a server sends: each part's header, then its bytes, then the closing line."""
    return b"".join(header + data[r.start : r.end + 1] for header, r in made.parts) + made.closing


def parse(made: MultipartLayout, body: bytes) -> Message:
    """Parse the body with the standard library's MIME parser."""
    # The default (compat32) policy: the newer one misreads a bare "'" in a boundary.
    head = f"Content-Type: {made.content_type}\r\n\r\n".encode("ascii")
    return BytesParser().parsebytes(head + body)


def test_layout_of_three_ranges() -> None:
    """A worked example: the body has the exact length, headers and bytes a client expects."""
    ranges = [ByteRange(0, 9), ByteRange(100, 355), ByteRange(1023, 1023)]
    made = layout(ranges, size=len(DATA), content_type="text/csv", boundary=BOUNDARY)
    body = assemble(made, DATA)

    assert made.content_type == f"multipart/byteranges; boundary={BOUNDARY}"
    assert made.content_length == len(body)
    assert body.startswith(f"--{BOUNDARY}\r\n".encode())
    assert body.endswith(f"\r\n--{BOUNDARY}--\r\n".encode())
    crlf = "\r\n"
    first = f"--{BOUNDARY}{crlf}Content-Type: text/csv{crlf}Content-Range: bytes 0-9/1024"
    second = (
        f"{crlf}--{BOUNDARY}{crlf}Content-Type: text/csv{crlf}Content-Range: bytes 100-355/1024"
    )
    assert made.parts[0][0] == f"{first}{crlf}{crlf}".encode()
    assert made.parts[1][0] == f"{second}{crlf}{crlf}".encode()

    message = parse(made, body)
    assert message.is_multipart()
    assert not message.defects
    parts = list(message.get_payload())
    assert [p["Content-Range"] for p in parts] == [
        "bytes 0-9/1024",
        "bytes 100-355/1024",
        "bytes 1023-1023/1024",
    ]
    assert [p.get_content_type() for p in parts] == ["text/csv"] * 3
    assert [p.get_payload(decode=True) for p in parts] == [DATA[0:10], DATA[100:356], DATA[1023:]]


@st.composite
def layouts(draw: st.DrawFn) -> tuple[bytes, list[ByteRange], str]:
    """A representation, some ranges inside it and a valid boundary."""
    data = draw(st.binary(min_size=1, max_size=400))
    ranges = []
    for _ in range(draw(st.integers(min_value=1, max_value=5))):
        start = draw(st.integers(min_value=0, max_value=len(data) - 1))
        end = draw(st.integers(min_value=start, max_value=len(data) - 1))
        ranges.append(ByteRange(start, end))
    boundary = draw(st.text(alphabet=BOUNDARY_CHARS, min_size=8, max_size=70))
    return data, ranges, boundary


@given(layouts(), st.sampled_from(["text/csv", "application/vnd.apache.parquet"]))
def test_content_length_is_exactly_the_assembled_body(
    case: tuple[bytes, list[ByteRange], str], content_type: str
) -> None:
    """The announced length equals the bytes of the body built from the parts, for any ranges."""
    data, ranges, boundary = case
    made = layout(ranges, size=len(data), content_type=content_type, boundary=boundary)
    body = assemble(made, data)
    assert made.content_length == len(body)
    assert [r for _, r in made.parts] == ranges
    for header, r in made.parts:
        line = f"\r\nContent-Range: bytes {r.start}-{r.end}/{len(data)}\r\n".encode()
        assert line in header
        assert header.endswith(b"\r\n\r\n")
        assert f"Content-Type: {content_type}\r\n".encode() in header


@given(layouts())
def test_body_parses_back_to_the_ranges(case: tuple[bytes, list[ByteRange], str]) -> None:
    """A MIME parser reads back one part per range with its Content-Range and its bytes."""
    data, ranges, boundary = case
    # Without "-" the data cannot hold a delimiter line, as a random boundary ensures in practice.
    data = data.replace(b"-", b"+")
    made = layout(ranges, size=len(data), content_type="text/csv", boundary=boundary)
    parts = list(parse(made, assemble(made, data)).get_payload())
    assert [p["Content-Range"] for p in parts] == [
        f"bytes {r.start}-{r.end}/{len(data)}" for r in ranges
    ]
    assert [p.get_payload(decode=True) for p in parts] == [
        data[r.start : r.end + 1] for r in ranges
    ]


@pytest.mark.parametrize(
    "boundary",
    ["a", "datadl-abc123", "x" * 70, "'()+_,./:=?-", "AZaz09"],
)
def test_valid_boundaries_are_accepted(boundary: str) -> None:
    """Boundaries of 1 to 70 characters from the RFC 2046 set (space aside) are accepted."""
    made = layout([ByteRange(0, 0)], size=1, content_type="text/csv", boundary=boundary)
    assert made.boundary == boundary


@pytest.mark.parametrize(
    ("boundary", "parameter"),
    [
        ("datadl-3vq7k2m9", "boundary=datadl-3vq7k2m9"),
        ("it's_a+b.c", "boundary=it's_a+b.c"),
        ("a/b:c=d?", 'boundary="a/b:c=d?"'),
        ("(x,y)", 'boundary="(x,y)"'),
    ],
)
def test_content_type_quotes_boundaries_that_are_not_tokens(boundary: str, parameter: str) -> None:
    """A boundary with characters outside the token set is sent quoted, others bare."""
    made = layout([ByteRange(0, 0)], size=1, content_type="text/csv", boundary=boundary)
    assert made.content_type == f"multipart/byteranges; {parameter}"


@pytest.mark.parametrize(
    "boundary",
    [
        "",
        "x" * 71,
        "has space",
        'quo"te',
        "semi;colon",
        "trailing\n",
        "trailing\r\n",
        "line\r\nbreak",
        "ünïcode",
        "tab\t",
    ],
)
def test_invalid_boundaries_are_refused(boundary: str) -> None:
    """A boundary that is empty, too long or holds other characters is refused."""
    with pytest.raises(ValueError, match="boundary"):
        layout([ByteRange(0, 0)], size=1, content_type="text/csv", boundary=boundary)


def test_range_beyond_the_representation_is_refused() -> None:
    """A range that ends past the last byte cannot be framed."""
    with pytest.raises(ValueError, match="exceeds"):
        layout([ByteRange(0, 10)], size=10, content_type="text/csv", boundary=BOUNDARY)
