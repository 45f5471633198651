"""Reading operators' CSV files (users and watchlist imports) one row at a time.

Files are read as UTF-8, with or without the byte-order mark Excel's "CSV UTF-8" writes.
Anything else (a Latin-1 export, a spreadsheet saved as .xlsx, an image) stops the import
with one line naming the file and the line, never a traceback. Rows are yielded as they are
read, so memory stays flat however long the file is.
"""

from __future__ import annotations

import codecs
import csv
from collections.abc import Iterator
from typing import BinaryIO

import click

# A physical line longer than this is not a line of a CSV file we can use (csv's own field
# limit is 128 KiB); reading stops there instead of pulling a binary file into memory.
MAX_LINE_BYTES = 1 << 20
_FIX = "save it as CSV UTF-8"


class CsvInputError(click.ClickException):
    """A file that is not a UTF-8 CSV text file: one clear line for the operator."""


def read_rows(
    path: str, required: set[str], one_of: set[str] | None = None
) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row) pairs of a CSV file with a header line, as they are read.

    Column names are case-insensitive and stripped, cells stripped, blank lines skipped,
    cells beyond the header ignored. The header must hold every column of `required` and at
    least one of `one_of`. Raises CsvInputError for missing columns, text that is not UTF-8,
    binary content and malformed CSV.
    """
    with open(path, "rb") as handle:
        reader = csv.reader(_text_lines(path, handle))
        try:
            header = next(reader, None)
            columns = [(c or "").strip().lower() for c in header or []]
            missing = required - set(columns)
            if missing:
                raise CsvInputError(
                    f"{path}: missing column(s) {', '.join(sorted(missing))}; "
                    f"found {', '.join(sorted(set(columns) - {''})) or 'none'}"
                )
            if one_of and not one_of & set(columns):
                raise CsvInputError(f"{path}: missing column {' or '.join(sorted(one_of))}")
            for cells in reader:
                row = {
                    name: value.strip() for name, value in zip(columns, cells, strict=False) if name
                }
                if any(row.values()):
                    yield reader.line_num, row
        except csv.Error as exc:
            # A bare CR ends the lines of old Mac exports; csv's own message talks of modes.
            problem = "lines end in a bare CR" if "new-line character" in str(exc) else exc
            raise CsvInputError(
                f"{path}: not a valid CSV file (line {reader.line_num}): {problem}; {_FIX}"
            ) from None


def _text_lines(path: str, handle: BinaryIO) -> Iterator[str]:
    """The file's lines decoded as UTF-8 (a leading BOM dropped), line endings kept, so that
    csv.reader sees exactly what `open(newline="")` would give it, and a decoding error can
    name its line."""
    number = 0
    while line := handle.readline(MAX_LINE_BYTES + 1):
        number += 1
        if len(line) > MAX_LINE_BYTES:
            raise CsvInputError(
                f"{path}: line {number} is longer than {MAX_LINE_BYTES // 1024} KiB: "
                f"not a CSV text file? {_FIX}"
            )
        if number == 1 and line.startswith(codecs.BOM_UTF8):
            line = line[len(codecs.BOM_UTF8) :]
        if number == 1 and line.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            # Excel's "Unicode Text": UTF-16, whose NUL bytes do not make it a binary file.
            raise CsvInputError(f"{path} is not UTF-8 text (line 1, UTF-16): {_FIX}")
        if b"\0" in line:  # valid UTF-8, but no text file holds NUL: a binary file
            raise CsvInputError(f"{path} is binary, not CSV text (line {number}): {_FIX}")
        try:
            yield line.decode("utf-8")
        except UnicodeDecodeError:
            raise CsvInputError(f"{path} is not UTF-8 text (line {number}): {_FIX}") from None
