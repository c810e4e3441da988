"""What a first pass learns about a file without a declared schema, and shared reader helpers."""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import attrs
import pyarrow as pa

from datadl.adapters.tables._infer import ColumnPlan, Finding
from datadl.domain.errors import UnsupportedFormat


@attrs.frozen
class TextPlan:
    """The schema and reading parameters of a csv, tsv, json, jsonl or xlsx file.

    ``complete`` is False for a plan made from the first rows only (a quick preview).
    ``read_schema`` is what the json reader is told to expect (temporal text stays text
    until ``ColumnPlan.convert``); ``stringify`` names json columns whose values disagree in
    type and are therefore written as text.
    """

    columns: tuple[ColumnPlan, ...]
    row_count: int
    encoding: str = "utf8"
    delimiter: str = ","
    header: bool = True
    complete: bool = True
    read_schema: pa.Schema | None = None
    stringify: frozenset[str] = frozenset()

    @property
    def schema(self) -> pa.Schema:
        """The typed schema of the batches the second pass yields."""
        return pa.schema([pa.field(c.name, c.arrow_type) for c in self.columns])

    def selection(self, columns: Sequence[int] | None) -> tuple[list[int], pa.Schema]:
        """The column indexes asked for (all by default) and the schema of just those."""
        wanted = list(range(len(self.columns))) if columns is None else list(columns)
        fields = [pa.field(self.columns[i].name, self.columns[i].arrow_type) for i in wanted]
        return wanted, pa.schema(fields)

    @property
    def findings(self) -> tuple[Finding, ...]:
        """Consistency findings made while inferring types."""
        return tuple(f for c in self.columns for f in c.findings)


def unique_names(raw: Sequence[str | None]) -> list[str]:
    """Column names made usable: blanks named by position, repeats numbered."""
    names: list[str] = []
    seen: set[str] = set()
    for index, name in enumerate(raw):
        base = name if name is not None and name.strip() else f"column_{index + 1}"
        candidate, suffix = base, 2
        while candidate in seen:
            candidate, suffix = f"{base}_{suffix}", suffix + 1
        seen.add(candidate)
        names.append(candidate)
    return names


class Regroup:
    """Batches pushed in, batches of about ``rows`` out: large ones sliced, small ones joined.

    Readers hand out batches of whatever their blocks held; every later step has a cost
    per batch, so small ones are gathered (one copy) and large ones sliced (no copy). The
    batches out depend only on the sequence of rows pushed, not on how it was split.
    """

    def __init__(self, rows: int) -> None:
        self._rows = rows
        self._pending: list[pa.RecordBatch] = []
        self._held = 0

    def push(self, batch: pa.RecordBatch) -> list[pa.RecordBatch]:
        """Take ``batch``; return the whole batches of ``rows`` now ready."""
        if batch.num_rows == 0:
            return []
        self._pending.append(batch)
        self._held += batch.num_rows
        if self._held < self._rows:
            return []
        pending, held, rows = self._pending, self._held, self._rows
        joined = pending[0] if len(pending) == 1 else pa.concat_batches(pending)
        whole = held - held % rows
        ready = [joined.slice(start, rows) for start in range(0, whole, rows)]
        self._pending = [joined.slice(whole)] if whole < held else []
        self._held = held - whole
        return ready

    def flush(self) -> list[pa.RecordBatch]:
        """The rows still held, as one batch (or none)."""
        pending, self._pending, self._held = self._pending, [], 0
        if not pending:
            return []
        return [pending[0] if len(pending) == 1 else pa.concat_batches(pending)]


def rechunk(batches: Iterable[pa.RecordBatch], rows: int) -> Iterator[pa.RecordBatch]:
    """The same rows in batches of about ``rows`` (see ``Regroup``)."""
    regroup = Regroup(rows)
    for batch in batches:
        yield from regroup.push(batch)
    yield from regroup.flush()


class Ahead:
    """Work done on a first pass's rows while their types are still being inferred.

    A first pass over delimited text may hand its rows on, in batches of ``batch_rows``
    typed with the columns' types as inferred so far, to work that would otherwise need a
    second pass (a profile's statistics). It stops as soon as a type changes; the work is
    valid only when ``held`` after the pass, that is when the final plan reads every row
    exactly as the tentative one did. Subclasses do the work in ``start`` and ``feed``.
    """

    def __init__(self, batch_rows: int) -> None:
        self.batch_rows = batch_rows
        self.active = True
        self.held = False

    def start(self, schema: pa.Schema) -> None:
        """Begin (again) with rows of ``schema``; anything fed before is void."""

    def feed(self, batch: pa.RecordBatch) -> None:
        """Take the next typed batch."""

    def stop(self) -> None:
        """A type changed: the work is void and nothing more will be fed."""
        self.active = False


class _Failed:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


_DONE = object()
_POLL = 0.1


def prefetch(batches: Iterator[pa.RecordBatch], depth: int = 2) -> Iterator[pa.RecordBatch]:
    """The same batches, read ahead by a background thread while the caller works on them.

    At most ``depth`` batches wait; when the caller stops early the reader stops too, and
    the source iterator is closed in the thread that iterated it.
    """
    waiting: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def offer(item: object) -> bool:
        while not stop.is_set():
            try:
                waiting.put(item, timeout=_POLL)
            except queue.Full:
                continue
            return True
        return False

    def produce() -> None:
        try:
            for batch in batches:
                if not offer(batch):
                    return
            offer(_DONE)
        except BaseException as exc:
            offer(_Failed(exc))
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()

    reader = threading.Thread(target=produce, name="datadl-prefetch", daemon=True)
    reader.start()
    try:
        while True:
            item = waiting.get()
            if item is _DONE:
                return
            if isinstance(item, _Failed):
                raise item.exc
            yield item
    finally:
        stop.set()
        reader.join()


def column_pool() -> ThreadPoolExecutor:
    """Threads for per-column work within one batch: arrow kernels release the GIL."""
    return ThreadPoolExecutor(max(1, min(os.cpu_count() or 1, 8)), thread_name_prefix="datadl")


def unsupported(message: str, hint: str | None = None) -> UnsupportedFormat:
    """An UnsupportedFormat with a hint that tells the uploader what to fix."""
    return UnsupportedFormat(
        message, hint=hint or "Check that the file is complete and in the format it claims."
    )


def arrow_message(exc: BaseException, limit: int = 200) -> str:
    """A parser's message cut short, so that no long cell content ends up in an error."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "…"
