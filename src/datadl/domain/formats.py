"""Which format an uploaded file is: declared type, filename and the first bytes together."""

from __future__ import annotations

from datadl.domain.errors import BadRequest, UnsupportedFormat
from datadl.domain.model import FileFormat

#: How many leading bytes the sniffer wants to see.
SNIFF_BYTES = 64 * 1024

_PARQUET_MAGIC = b"PAR1"
_ZIP_MAGIC = b"PK\x03\x04"
_BOMS = (b"\xef\xbb\xbf",)


def _text_head(head: bytes) -> str | None:
    for bom in _BOMS:
        if head.startswith(bom):
            head = head[len(bom) :]
    if b"\x00" in head:
        return None
    for encoding in ("utf-8", "cp1252"):
        try:
            # The head may cut a multi-byte character in half; ignore only that tail.
            return head.decode(encoding, errors="strict")
        except UnicodeDecodeError as exc:
            if encoding == "utf-8" and exc.start >= len(head) - 3:
                return head[: exc.start].decode(encoding)
    return None


def _looks_like_html(text: str) -> bool:
    start = text.lstrip()[:512].lower()
    return start.startswith(("<!doctype html", "<html", "<?xml", "<head", "<body"))


def sniff(head: bytes) -> FileFormat | None:
    """The format the leading bytes show, or None when they fit no tabular format."""
    if head.startswith(_PARQUET_MAGIC):
        return FileFormat.PARQUET
    if head.startswith(_ZIP_MAGIC):
        return FileFormat.XLSX
    text = _text_head(head)
    if text is None or not text.strip() or _looks_like_html(text):
        return None
    stripped = text.lstrip()
    if stripped.startswith("["):
        return FileFormat.JSON
    if stripped.startswith("{"):
        return FileFormat.JSONL
    first_line = stripped.splitlines()[0] if stripped else ""
    if "\t" in first_line and first_line.count("\t") >= first_line.count(","):
        return FileFormat.TSV
    return FileFormat.CSV


def resolve_format(*, declared: FileFormat | None, filename: str | None, head: bytes) -> FileFormat:
    """Agree the declared type, the filename extension and the content on one format.

    An empty body is a bad request; content that fits no tabular format, or contradicts
    what was declared (HTML saved as .csv, text called parquet), is unsupported. Text
    formats are close cousins, so a declared csv whose first line holds tabs stays csv
    only when the declaration says so explicitly.
    """
    if not head:
        raise BadRequest("The uploaded file is empty.", hint="Send the file's bytes as the body.")
    sniffed = sniff(head)
    claimed = declared or (FileFormat.from_filename(filename) if filename else None)
    if sniffed is None:
        raise UnsupportedFormat(
            "The file's content is not a table datadl can read"
            + (f" (it was declared as {claimed})." if claimed else "."),
            hint="Upload csv, tsv, a json array of objects, jsonl, parquet or xlsx.",
        )
    if claimed is None:
        return sniffed
    binary = {FileFormat.PARQUET, FileFormat.XLSX}
    if claimed in binary or sniffed in binary:
        if claimed is not sniffed:
            raise UnsupportedFormat(
                f"The file was declared as {claimed} but its content is {sniffed}.",
                hint="Declare the right format, or upload the file that matches it.",
            )
        return claimed
    if {claimed, sniffed} <= {FileFormat.JSON, FileFormat.JSONL}:
        return sniffed
    if claimed in (FileFormat.JSON, FileFormat.JSONL) or sniffed in (
        FileFormat.JSON,
        FileFormat.JSONL,
    ):
        raise UnsupportedFormat(
            f"The file was declared as {claimed} but its content looks like {sniffed}.",
            hint="Declare the right format, or upload the file that matches it.",
        )
    if declared is None and sniffed is FileFormat.TSV:
        # A filename alone does not outweigh tabs in the content; an explicit declaration does.
        return sniffed
    return claimed
