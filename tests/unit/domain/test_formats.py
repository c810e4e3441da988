"""Tests for recognising an upload's format from its declared type, its name and its first bytes."""

from __future__ import annotations

from importlib.resources import files

import pytest

from datadl.domain.errors import BadRequest, UnsupportedFormat
from datadl.domain.formats import SNIFF_BYTES, resolve_format, sniff
from datadl.domain.model import FileFormat

CSV, TSV, JSON, JSONL = FileFormat.CSV, FileFormat.TSV, FileFormat.JSON, FileFormat.JSONL
PARQUET, XLSX = FileFormat.PARQUET, FileFormat.XLSX


def sample_head(name: str) -> bytes:
    """The first SNIFF_BYTES of a sample file shipped with datadl."""
    return files("datadl.samples").joinpath(name).read_bytes()[:SNIFF_BYTES]


PENGUINS = sample_head("penguins.csv")
CARS = sample_head("cars.json")
# A parquet file opens with its magic and a page header; an xlsx is a zip archive.
PARQUET_HEAD = b"PAR1\x15\x04\x15\x80\x01\x15\x80\x01L\x15\x10\x15\x00\x12\x00\x00"
XLSX_HEAD = (
    b"PK\x03\x04\x14\x00\x06\x00\x08\x00\x00\x00!\x00b\xee\x9dh^\x01\x00\x00[Content_Types].xml"
)
JSON_HEAD = b'[{"id": 1, "name": "Ada"}, {"id": 2, "name": "Grace"}]'
JSONL_HEAD = b'{"id": 1, "name": "Ada"}\n{"id": 2, "name": "Grace"}\n'
TSV_HEAD = b"species\tisland\tbill_length_mm\nAdelie\tTorgersen\t39.1\n"
HTML_HEAD = b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body></body></html>"
BOM = b"\xef\xbb\xbf"


def test_samples_are_real() -> None:
    """The sample heads used below are the shipped files, not empty stand-ins."""
    assert PENGUINS.startswith(b"species,island,bill_length_mm")
    assert CARS.lstrip().startswith(b"[")
    assert len(CARS) == SNIFF_BYTES


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (PENGUINS, CSV),
        (CARS, JSON),
        (PARQUET_HEAD, PARQUET),
        (XLSX_HEAD, XLSX),
        (JSON_HEAD, JSON),
        (b"\r\n  \t[\n {}]", JSON),
        (JSONL_HEAD, JSONL),
        (TSV_HEAD, TSV),
        (b"a\tb,c\n", TSV),
        (b"a,b,c\td\n", CSV),
        (b"name\nAda\n", CSV),
        (BOM + PENGUINS, CSV),
        (BOM + JSON_HEAD, JSON),
        (BOM + JSONL_HEAD, JSONL),
        (BOM + TSV_HEAD, TSV),
    ],
)
def test_sniff(head: bytes, expected: FileFormat) -> None:
    """The leading bytes show the format: magic numbers, then the shape of the text."""
    assert sniff(head) is expected


@pytest.mark.parametrize(
    "head",
    [
        HTML_HEAD,
        b"\n\n   <html lang='en'>",
        b"<?xml version='1.0'?><rows/>",
        BOM + HTML_HEAD,
        b"   \r\n\t ",
        BOM,
        b"a,b\n\x00\x01\x02",
        b"a,b\n\x81\x8d\x8f,c\n",
    ],
)
def test_sniff_refuses_what_is_not_a_table(head: bytes) -> None:
    """HTML, XML, blank text, NUL bytes and bytes no supported encoding decodes are no table."""
    assert sniff(head) is None


def test_sniff_reads_cp1252_text() -> None:
    """Text that is not UTF-8 but is Windows-1252 is still read as a table."""
    head = "name,city\r\nJosé,Zürich\r\nRenée,Besançon\r\n".encode("cp1252")
    with pytest.raises(UnicodeDecodeError):
        head.decode("utf-8")
    assert sniff(head) is CSV
    assert resolve_format(declared=None, filename="people.csv", head=head) is CSV


def test_sniff_tolerates_a_character_cut_at_the_end_of_the_head() -> None:
    """A UTF-8 character split by the head's end does not make the text unreadable."""
    # The cut leaves 0xE6 0x9D; 0x9D and the 0x8D of "ō" are undefined in cp1252, so only
    # the UTF-8 reading, minus the cut tail, can succeed.
    whole = "city,country\nTōkyō,日本\nKyōto,東".encode()
    head = whole[:-1]
    with pytest.raises(UnicodeDecodeError):
        head.decode("utf-8")
    with pytest.raises(UnicodeDecodeError):
        head.decode("cp1252")
    assert sniff(head) is CSV
    assert sniff(whole) is CSV


def test_sniff_tolerates_any_cut_near_the_end() -> None:
    """Wherever the head's end falls in the last characters, UTF-8 text still reads as a table."""
    text = "name,city\n" + "Zoë,Kraków,東京\n" * 50
    data = text.encode()
    for cut in range(len(data) - 12, len(data)):
        assert sniff(data[:cut]) is CSV


@pytest.mark.parametrize(
    ("declared", "filename", "head", "expected"),
    [
        (None, "penguins.csv", PENGUINS, CSV),
        (None, None, PENGUINS, CSV),
        (CSV, None, PENGUINS, CSV),
        (None, "cars.json", CARS, JSON),
        (JSON, None, CARS, JSON),
        (None, None, CARS, JSON),
        (None, "table.parquet", PARQUET_HEAD, PARQUET),
        (PARQUET, "upload.bin", PARQUET_HEAD, PARQUET),
        (None, "book.XLSX", XLSX_HEAD, XLSX),
        (XLSX, None, XLSX_HEAD, XLSX),
        (None, "data.txt", TSV_HEAD, TSV),
        (None, "noextension", JSONL_HEAD, JSONL),
        (None, "rows.ndjson", JSONL_HEAD, JSONL),
        (JSON, None, JSONL_HEAD, JSONL),
        (JSONL, None, JSON_HEAD, JSON),
        (None, "cars.jsonl", CARS, JSON),
        (TSV, None, TSV_HEAD, TSV),
        (TSV, None, PENGUINS, TSV),
        (CSV, None, TSV_HEAD, CSV),
        (CSV, "data.tsv", TSV_HEAD, CSV),
        (None, "data.tsv", TSV_HEAD, TSV),
    ],
)
def test_resolve_format_agrees(
    declared: FileFormat | None, filename: str | None, head: bytes, expected: FileFormat
) -> None:
    """Declaration, filename and content agree on one format; within text formats content helps."""
    assert resolve_format(declared=declared, filename=filename, head=head) is expected


def test_declared_json_with_jsonl_content_is_jsonl() -> None:
    """Declared json whose content is one object per line is taken as jsonl."""
    assert resolve_format(declared=JSON, filename="rows.json", head=JSONL_HEAD) is JSONL


def test_tabs_under_a_csv_filename_need_an_explicit_declaration_to_stay_csv() -> None:
    """Only an explicit csv declaration keeps tab-separated content csv; a .csv name does not."""
    assert resolve_format(declared=CSV, filename="export.csv", head=TSV_HEAD) is CSV
    assert resolve_format(declared=None, filename="export.csv", head=TSV_HEAD) is TSV


@pytest.mark.parametrize(
    ("declared", "filename", "head"),
    [
        (None, "report.csv", HTML_HEAD),
        (CSV, None, HTML_HEAD),
        (None, None, HTML_HEAD),
        (PARQUET, None, b"\x00\x9a\x13\xff\xfe\x07garbage\x00\x00\x01"),
        (None, "table.parquet", b"\x00\x00\x00\x00"),
        (PARQUET, None, PENGUINS),
        (None, "table.parquet", PENGUINS),
        (PARQUET, None, XLSX_HEAD),
        (XLSX, None, PARQUET_HEAD),
        (None, "book.xlsx", JSON_HEAD),
        (CSV, None, PARQUET_HEAD),
        (None, "penguins.csv", XLSX_HEAD),
        (JSON, None, PENGUINS),
        (JSONL, None, TSV_HEAD),
        (CSV, None, JSON_HEAD),
        (None, "people.tsv", JSONL_HEAD),
        (None, "blank.csv", b"  \n\n  "),
    ],
)
def test_resolve_format_refuses_contradictions(
    declared: FileFormat | None, filename: str | None, head: bytes
) -> None:
    """Content that is no table, or that contradicts the declared kind, is unsupported."""
    with pytest.raises(UnsupportedFormat) as caught:
        resolve_format(declared=declared, filename=filename, head=head)
    assert caught.value.code == "unsupported_format"


def test_unsupported_message_names_the_claim() -> None:
    """The refusal says what the file was declared as, so the uploader can see the mismatch."""
    with pytest.raises(UnsupportedFormat, match="parquet"):
        resolve_format(declared=PARQUET, filename=None, head=PENGUINS)
    with pytest.raises(UnsupportedFormat, match="csv"):
        resolve_format(declared=None, filename="report.csv", head=HTML_HEAD)


@pytest.mark.parametrize("declared", [None, CSV, PARQUET])
def test_empty_body_is_a_bad_request(declared: FileFormat | None) -> None:
    """An empty upload is a bad request, whatever it was declared as."""
    with pytest.raises(BadRequest) as caught:
        resolve_format(declared=declared, filename="empty.csv", head=b"")
    assert caught.value.code == "bad_request"
