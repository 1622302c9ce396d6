"""Real listening logs -> the events contract (user_id, track_id, ts UTC, artist_id, genre).

Two readers:

- generic CSV / TSV / Parquet with a column mapping (`user_col`, `track_col`, `ts_col`, optional
  `artist_col` and `genre_col`); times as epoch seconds, epoch milliseconds or ISO-8601;
- the Last.fm-1K layout, a headerless TSV `userid, timestamp, artid, artname, traid, traname`,
  where tracks without a MusicBrainz id are keyed by artist name + title (and artists without one
  by their name).

CSV and TSV files may be gzip-compressed (`.csv.gz`, `.tsv.gz`, `.tab.gz`): public logs ship that
way and are several times larger unpacked. The format is read from the extension before `.gz`, and
line numbers in messages count lines of the decompressed text, as `zcat file | sed -n Np` shows them.

What a file must hold (`Limits`), checked per file, never repaired:

- times of one kind per column: all epoch seconds, all epoch milliseconds, or all ISO-8601, and
  ISO times either all with a UTC offset or all without (naive ones are read as UTC); a column that
  mixes them is refused, since reading it as one kind would silently move the others (one
  millisecond value among seconds would turn every other play into January 1970);
- every time inside a plausible range, `time_min` to `time_max` (default 1990-01-01 to now + 1
  day): zero, negative, year-2200, `1e300`, `inf` and NaN times are refused;
- no NUL byte anywhere in a text file (pandas' parser would cut the field there), no id (user,
  track, artist, genre) longer than `max_id_length` characters (default 256, the longest track id
  the API accepts).

Every problem is an `IngestError` naming the file and, where it applies, the line (Parquet: the
row) and the value. Line numbers are where the record starts, as Python's csv reader counts them
(`line_num`), so they stay exact after blank lines and quoted newlines; the checks run on whole
columns and the file is scanned line by line only to name the line of a problem already found.
"""

from __future__ import annotations

import csv
import gzip
import io
import re
import sys
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

FORMATS = ("auto", "csv", "tsv", "parquet", "lastfm1k")
TIME_UNITS = ("auto", "s", "ms", "iso")
LASTFM_1K_COLUMNS = ["userid", "timestamp", "artid", "artname", "traid", "traname"]

DEFAULT_TIME_MIN = "1990-01-01"
DEFAULT_TIME_MAX = "now+1d"
DEFAULT_MAX_ID_LENGTH = 256


class IngestError(ValueError):
    """The input file cannot be read into events; the message says where and why."""


# -- limits ------------------------------------------------------------------------------------------

_NOW_RE = re.compile(r"now(?:\s*([+-])\s*(\d+(?:\.\d+)?)\s*([dh]))?", re.IGNORECASE)


def parse_time_bound(text: str, name: str, now: pd.Timestamp | None = None) -> pd.Timestamp:
    """`now`, `now+1d`, `now-12h`, or an ISO-8601 date or time (without an offset: UTC) -> a UTC Timestamp."""
    value = str(text).strip()
    now = now if now is not None else pd.Timestamp.now(tz="UTC")
    match = _NOW_RE.fullmatch(value)
    if match:
        sign, amount, unit = match.groups()
        if not sign:
            return now
        delta = pd.Timedelta(float(amount), unit="D" if unit.lower() == "d" else "h")
        return now + delta if sign == "+" else now - delta
    try:
        stamp = pd.Timestamp(value)
    except (ValueError, OverflowError, TypeError):
        stamp = pd.NaT
    if stamp is pd.NaT or not value:
        raise ValueError(f"{name}: cannot read {text!r} as a time; expected an ISO-8601 date or time "
                         f"(2005-01-31, 2005-01-31T12:00:00+01:00), 'now' or 'now+1d'")
    return stamp.tz_localize("UTC") if stamp.tz is None else stamp.tz_convert("UTC")


def _show_time(stamp: pd.Timestamp) -> str:
    return stamp.strftime("%Y-%m-%d") if stamp == stamp.normalize() else stamp.strftime("%Y-%m-%d %H:%M:%S")


@dataclass(frozen=True)
class Limits:
    """What a plausible play looks like: a time in [time_min, time_max] (UTC), ids of at most
    `max_id_length` characters. `Limits.parse` reads the data stage's parameters."""

    time_min: pd.Timestamp
    time_max: pd.Timestamp
    max_id_length: int = DEFAULT_MAX_ID_LENGTH

    @classmethod
    def parse(cls, time_min: str = DEFAULT_TIME_MIN, time_max: str = DEFAULT_TIME_MAX,
              max_id_length: int = DEFAULT_MAX_ID_LENGTH, now: pd.Timestamp | None = None) -> Limits:
        now = now if now is not None else pd.Timestamp.now(tz="UTC")
        lo = parse_time_bound(time_min, "time_min", now)
        hi = parse_time_bound(time_max, "time_max", now)
        if lo >= hi:
            raise ValueError(f"time_min ({_show_time(lo)}) must be before time_max ({_show_time(hi)})")
        if int(max_id_length) < 1:
            raise ValueError(f"max_id_length: must be >= 1, got {max_id_length}")
        return cls(lo, hi, int(max_id_length))

    def describe(self) -> str:
        return f"{_show_time(self.time_min)} to {_show_time(self.time_max)} UTC"

    def epoch_bounds(self, unit: str) -> tuple[float, float]:
        per_ns = {"s": 1e9, "ms": 1e6}[unit]
        return self.time_min.value / per_ns, self.time_max.value / per_ns

    def as_dict(self) -> dict[str, object]:
        return {"time_min": self.time_min.isoformat(), "time_max": self.time_max.isoformat(),
                "max_id_length": self.max_id_length}


# -- files -------------------------------------------------------------------------------------------

GZIP_SUFFIX = ".gz"
GZIP_MAGIC = b"\x1f\x8b"


def is_gzip(path: Path) -> bool:
    """Compression is told by the name, as for the format: `.gz` is gzip."""
    return Path(path).suffix.lower() == GZIP_SUFFIX


def format_suffix(path: Path) -> str:
    """The extension that names the format, looking through `.gz` (`plays.tsv.gz` -> `.tsv`)."""
    path = Path(path)
    return Path(path.stem).suffix.lower() if is_gzip(path) else path.suffix.lower()


def detect_format(path: Path, fmt: str) -> str:
    if fmt not in FORMATS:
        raise IngestError(f"{path}: unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if fmt != "auto":
        return fmt
    suffix = format_suffix(path)
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix in (".tsv", ".tab"):
        return "tsv"
    if suffix == ".csv":
        return "csv"
    shown = suffix + GZIP_SUFFIX if is_gzip(path) else suffix
    raise IngestError(f"{path}: cannot tell the format from the extension {shown!r}; "
                      f"pass format=csv|tsv|parquet|lastfm1k")


def open_text(path: Path, errors: str = "strict") -> IO[str]:
    """The file as UTF-8 text, decompressed when it is gzip (csv-module newline handling)."""
    if is_gzip(path):
        return gzip.open(path, "rt", encoding="utf-8", errors=errors, newline="")
    return open(path, encoding="utf-8", errors=errors, newline="")


def open_binary(path: Path) -> IO[bytes]:
    return gzip.open(path, "rb") if is_gzip(path) else open(path, "rb")


@contextmanager
def gzip_errors(path: Path) -> Iterator[None]:
    """A bad gzip file surfaces wherever decompression happens to reach it (at the first read for a
    wrong header, mid-file for a cut or damaged stream): name the file and the fault, never a trace."""
    try:
        yield
    except gzip.BadGzipFile as exc:
        if str(exc).startswith("Not a gzipped file"):
            raise IngestError(f"{path}: not gzip-compressed although its name ends in {GZIP_SUFFIX}; "
                              f"rename it or compress it") from None
        raise IngestError(f"{path}: the gzip data is corrupt ({exc})") from None
    except EOFError:
        raise IngestError(f"{path}: the gzip data ends early: the file is truncated "
                          f"(an interrupted download or copy?)") from None
    except zlib.error as exc:
        raise IngestError(f"{path}: the gzip data is corrupt ({exc})") from None


class _NulGuard(io.RawIOBase):
    """The binary stream pandas' parser reads, noting whether a NUL byte went through: the parser
    would end the field there and keep the rest of the line, a silent truncation."""

    def __init__(self, raw: IO[bytes]) -> None:
        super().__init__()
        self.raw = raw
        self.seen_nul = False

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        chunk = self.raw.read(size)
        if not self.seen_nul and b"\x00" in chunk:
            self.seen_nul = True
        return chunk

    def readinto(self, buffer) -> int:
        chunk = self.read(len(buffer))
        buffer[: len(chunk)] = chunk
        return len(chunk)


class _TrackedLines:
    """Lines for csv.reader that remember the last one read (to tell a blank record from `"  "`)."""

    def __init__(self, f: IO[str]) -> None:
        self.lines = iter(f)
        self.last = ""

    def __iter__(self) -> _TrackedLines:
        return self

    def __next__(self) -> str:
        self.last = next(self.lines)
        return self.last


def _records(path: Path, sep: str) -> Iterator[tuple[int, int, list[str]]]:
    """(row, line, fields) of each record as pandas reads the file: row -1 is the header, 0... the
    data rows; `line` is where the record starts, one past csv.reader's `line_num` after the record
    before it. Lines that are empty or hold only spaces and tabs (other than the delimiter) are
    skipped, as pandas skips them."""
    blank = " \t".replace(sep, "") + "\r\n"
    if csv.field_size_limit() < sys.maxsize // 2:
        csv.field_size_limit(sys.maxsize // 2)  # a 10-million-character field must be named, not crash the scan
    with gzip_errors(path), open_text(path, errors="replace") as f:
        lines = _TrackedLines(f)
        reader = csv.reader(lines, delimiter=sep)
        row, end = -1, 0
        for fields in reader:
            start, end = end + 1, reader.line_num
            if start == end and not lines.last.strip(blank):
                continue
            yield row, start, fields
            row += 1


class Where:
    """Row numbers of the read table -> `<file>, line N` (or `row N` where there are no lines)."""

    def __init__(self, path: Path, sep: str | None = None, lines: list[int] | None = None) -> None:
        self.path, self.sep, self._lines = path, sep, lines

    def lines(self, rows: Iterable[int]) -> dict[int, int | None]:
        rows = sorted(set(rows))
        if self._lines is not None:
            return {r: self._lines[r] for r in rows}
        if self.sep is None:
            return {r: None for r in rows}
        found: dict[int, int | None] = {}
        for row, line, _ in _records(self.path, self.sep):
            if row in rows:
                found[row] = line
                if len(found) == len(rows):
                    break
        return {r: found.get(r) for r in rows}

    def label(self, row: int, line: int | None = None) -> str:
        """`line N`, or `row N` (1-based) where the file has no lines."""
        if line is None and (self._lines is not None or self.sep is not None):
            line = self.lines([row])[row]
        return f"line {line}" if line is not None else f"row {row + 1}"

    def at(self, row: int) -> str:
        return f"{self.path}, {self.label(row)}"


# -- the readers -------------------------------------------------------------------------------------


def read_events(
    path: str | Path,
    fmt: str = "auto",
    user_col: str = "user_id",
    track_col: str = "track_id",
    ts_col: str = "ts",
    artist_col: str | None = "artist_id",
    genre_col: str | None = "genre",
    time_unit: str = "auto",
    limits: Limits | None = None,
) -> pd.DataFrame:
    path = Path(path)
    limits = limits or Limits.parse()
    if not path.exists():
        raise IngestError(f"{path}: file not found")
    if path.is_dir():
        inside = sorted(p.name for p in path.iterdir() if p.is_file())[:5]
        hint = f" (it holds {', '.join(inside)})" if inside else ""
        raise IngestError(f"{path}: is a directory, not a log file{hint}; pass the file itself as source")
    if not path.is_file():
        raise IngestError(f"{path}: not a regular file (a device, a pipe or a socket); pass a log file as source")
    if time_unit not in TIME_UNITS:
        raise IngestError(f"{path}: unknown time unit {time_unit!r}; expected one of {', '.join(TIME_UNITS)}")
    try:
        if path.stat().st_size == 0:
            raise IngestError(f"{path}: the file is empty")
        fmt = detect_format(path, fmt)
        if fmt == "lastfm1k":
            return read_lastfm_1k(path, limits)
        return _read_table(path, fmt, user_col, track_col, ts_col, artist_col, genre_col, time_unit, limits)
    except IngestError:
        raise
    except OSError as exc:  # unreadable (permissions), gone while read, an I/O error: no traceback
        raise IngestError(f"{path}: cannot read the file ({exc.strerror or exc})") from None
    except MemoryError:
        raise IngestError(f"{path}: the file does not fit in memory") from None
    except (ValueError, TypeError, OverflowError, pa.ArrowException, csv.Error) as exc:
        # a case no check above foresaw: still one line that names the file, never a traceback
        detail = " ".join(str(exc).split())[:300]
        raise IngestError(f"{path}: cannot read the file as plays ({type(exc).__name__}: {detail})") from None


def _read_table(path: Path, fmt: str, user_col: str, track_col: str, ts_col: str, artist_col: str | None,
                genre_col: str | None, time_unit: str, limits: Limits) -> pd.DataFrame:
    if fmt == "parquet":
        if is_gzip(path):
            # Parquet compresses its own columns; a gzip wrapper is not something readers accept
            raise IngestError(f"{path}: gzip-compressed Parquet is not read; decompress it (gunzip) first")
        try:
            raw = pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises several types for a bad file
            raise IngestError(f"{path}: not a readable Parquet file ({exc})") from None
        where = Where(path)
        sep = None
    else:
        sep = "," if fmt == "csv" else "\t"
        raw = _read_delimited(path, fmt, sep)
        where = Where(path, sep)
    if raw.empty:
        raise IngestError(f"{path}: the file has a header but no rows")
    wanted = {"user_id": user_col, "track_id": track_col, "ts": ts_col}
    missing = [src for src in wanted.values() if src not in raw.columns]
    for optional in (artist_col, genre_col):
        if optional and optional not in raw.columns and optional not in ("artist_id", "genre"):
            missing.append(optional)
    if missing:
        raise IngestError(f"{path}: missing column(s) {missing}; the file has {list(raw.columns)}")
    if sep is not None:
        _check_short_lines(raw, where, sep, [user_col, track_col, ts_col])

    user = _required_strings(raw[user_col], where, user_col)
    track = _required_strings(raw[track_col], where, track_col)
    ts = parse_times(raw[ts_col], where, ts_col, time_unit, limits)
    artist = _optional_strings(raw, artist_col)
    genre = _optional_strings(raw, genre_col)
    for name, values in ((user_col, user), (track_col, track), (artist_col, artist), (genre_col, genre)):
        _check_ids(values, where, name, limits, nul=sep is None)
    return pd.DataFrame({"user_id": user, "track_id": track, "ts": ts, "artist_id": artist, "genre": genre})


def _read_delimited(path: Path, fmt: str, sep: str) -> pd.DataFrame:
    try:
        with gzip_errors(path), open_binary(path) as f:
            guard = _NulGuard(f)
            raw = pd.read_csv(guard, sep=sep, dtype=str, keep_default_na=False, na_values=[""], encoding="utf-8")
    except pd.errors.EmptyDataError:
        raise IngestError(f"{path}: the file is empty") from None
    except UnicodeDecodeError:
        raise IngestError(_not_utf8(path)) from None
    except pd.errors.ParserError as exc:
        raise IngestError(_parser_error(path, fmt, sep, exc)) from None
    if guard.seen_nul:
        raise IngestError(_nul_message(path, sep))
    if raw.shape[1] == 1 and (sep not in raw.columns[0]) and ("," in raw.columns[0] or "\t" in raw.columns[0] or ";" in raw.columns[0]):
        raise IngestError(
            f"{path}: only one column was found with delimiter {sep!r}; the header looks "
            f"delimited differently ({raw.columns[0][:60]!r}): is it a {'TSV' if sep == ',' else 'CSV'} file?"
        )
    return raw


_FIELD_COUNT_RE = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")
_SEP_NAMES = {",": "comma", "\t": "tab"}


def _parser_error(path: Path, fmt: str, sep: str, exc: Exception) -> str:
    """pandas' parser counts lines its own way (a quoted newline is not one): find the record in
    question with csv.reader, which says where it starts."""
    text = str(exc)
    counts = _FIELD_COUNT_RE.search(text)
    if counts:
        expected, line, found = int(counts.group(1)), counts.group(2), counts.group(3)
        for row, start, fields in _records(path, sep):
            if row >= 0 and len(fields) > expected:
                line, found = start, len(fields)
                break
        return (f"{path}, line {line}: expected {expected} {_SEP_NAMES[sep]}-separated fields "
                f"(as in the header), found {found}")
    if "EOF inside string" in text:
        last = None
        for record in _records(path, sep):
            last = record
        if last is not None:
            return (f"{path}, line {last[1]}: a quoted field opened on this line is never closed "
                    f"(the file ends inside it)")
    return f"{path}: cannot parse as {fmt.upper()}: {' '.join(text.split())}"


def _nul_message(path: Path, sep: str) -> str:
    header: list[str] = []
    for row, line, fields in _records(path, sep):
        if row < 0:
            header = fields
        for i, field in enumerate(fields):
            if "\x00" in field:
                column = "the header" if row < 0 else f"column {header[i]!r}" if i < len(header) else f"field {i + 1}"
                return (f"{path}, line {line}: a NUL byte (\\x00) in {column} ({_shorten(field)}); "
                        f"the file is damaged or not text")
    return f"{path}: holds a NUL byte (\\x00); the file is damaged or not text"


def _not_utf8(path: Path) -> str:
    """The message for a file that is not UTF-8: the first line that does not decode, and where."""
    with gzip_errors(path), open_binary(path) as f:
        for line_no, line in enumerate(f, start=1):
            if line_no == 1 and not is_gzip(path) and line.startswith(GZIP_MAGIC):
                return f"{path}: the file is gzip-compressed; name it {path.name}{GZIP_SUFFIX} (or decompress it)"
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as exc:
                return (f"{path}, line {line_no}: not valid UTF-8 (byte 0x{line[exc.start]:02x} at column "
                        f"{exc.start + 1}); save the file as UTF-8")
    return f"{path}: not valid UTF-8; save the file as UTF-8"


def _check_short_lines(raw: pd.DataFrame, where: Where, sep: str, required: list[str]) -> None:
    """A line with fewer fields than the header reads as empty values at its end (pandas pads it):
    name it as a short line rather than as an empty column or, worse, as a bad time elsewhere."""
    empty = np.zeros(len(raw), dtype=bool)
    for col in required:
        empty |= raw[col].isna().to_numpy()
    if not empty.any():
        return
    wanted = int(np.flatnonzero(empty)[0])
    for row, line, fields in _records(where.path, sep):
        if row == wanted:
            if len(fields) < raw.shape[1]:
                raise IngestError(f"{where.path}, line {line}: expected {raw.shape[1]} {_SEP_NAMES[sep]}-separated "
                                  f"fields (as in the header), found {len(fields)}")
            return


def _first(mask: np.ndarray | pa.Array | pd.Series) -> int:
    if isinstance(mask, (pa.Array, pa.ChunkedArray)):
        mask = mask.to_numpy(zero_copy_only=False)
    return int(np.flatnonzero(np.asarray(mask))[0])


def _required_strings(col: pd.Series, where: Where, name: str) -> pd.Series:
    values = col.astype("string").str.strip()
    bad = values.isna() | (values == "")
    if bad.any():
        raise IngestError(f"{where.at(_first(bad.to_numpy()))}: column {name!r} is empty")
    return values.reset_index(drop=True)


def _optional_strings(raw: pd.DataFrame, col: str | None) -> pd.Series:
    if not col or col not in raw.columns:
        return pd.Series(pd.NA, index=range(len(raw)), dtype="string")
    values = raw[col].astype("string").str.strip()
    return values.mask(values == "").reset_index(drop=True)


def _shorten(value: str, keep: int = 40) -> str:
    return repr(value) if len(value) <= keep else repr(value[:keep]) + "..."


def _check_ids(values: pd.Series, where: Where, name: str | None, limits: Limits, nul: bool = True,
               what: str | None = None) -> None:
    """No id longer than `max_id_length` characters and (where the reader keeps them) no NUL byte."""
    if name is None or values.isna().all():
        return
    arr = pa.array(values, type=pa.string(), from_pandas=True)
    lengths = pc.utf8_length(arr)
    longest = pc.max(lengths).as_py()
    label = what or f"column {name!r}"
    if longest is not None and longest > limits.max_id_length:
        row = _first(pc.fill_null(pc.greater(lengths, limits.max_id_length), False))
        raise IngestError(f"{where.at(row)}: {label} is {lengths[row].as_py():,} characters long "
                          f"({_shorten(values.iloc[row])}); the limit is {limits.max_id_length} (max_id_length)")
    if nul:
        has_nul = pc.fill_null(pc.match_substring(arr, "\x00"), False)
        if pc.any(has_nul).as_py():
            row = _first(has_nul)
            raise IngestError(f"{where.at(row)}: a NUL byte (\\x00) in {label} ({_shorten(values.iloc[row])}); "
                              f"the data is damaged")


# -- times -------------------------------------------------------------------------------------------

_UNIT_NAMES = {"s": "seconds", "ms": "milliseconds"}
_NUMBER_RE = r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$"
_NUMERIC_LOOK_RE = r"(?i)^[+-]?(?:\d+\.?\d*(?:e[+-]?\d+)?|\.\d+(?:e[+-]?\d+)?|inf|infinity|nan)$"
# a UTC offset after a time of day: 10:00Z, 10:00:00.5+01:00, T100000-0500, 10:00 UTC
_OFFSET_RE = r"[T ]\d{2}(?::?\d{2}(?::?\d{2}(?:[.,]\d+)?)?)?\s*(?:[zZ]|[+-]\d{2}(?::?\d{2})?|UTC|GMT)$"


def _as_date(value: float, unit: str) -> str:
    """`2200-01-01 00:00:00 UTC`: what an epoch number would be, or "" where no calendar has it."""
    try:
        stamp = datetime.fromtimestamp(value / (1000 if unit == "ms" else 1), tz=UTC)
    except (OverflowError, OSError, ValueError):
        return ""
    return f"{stamp:%Y-%m-%d %H:%M:%S} UTC"


def parse_times(col: pd.Series, where: Where, name: str, unit: str = "auto",
                limits: Limits | None = None) -> pd.Series:
    """Epoch seconds / milliseconds or ISO-8601 strings -> UTC timestamps, one kind per column and
    each inside `limits`; names the first bad line and its value."""
    limits = limits or Limits.parse()
    col = col.reset_index(drop=True)
    if pd.api.types.is_datetime64_any_dtype(col):
        ts = col.dt.tz_localize("UTC") if col.dt.tz is None else col.dt.tz_convert("UTC")
        if ts.isna().any():
            raise IngestError(f"{where.at(_first(ts.isna().to_numpy()))}: column {name!r} is empty")
        ts = ts.astype("datetime64[ns, UTC]")
        _check_range(ts, col, where, name, limits)
        return ts
    if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
        if unit == "iso":
            raise IngestError(f"{where.at(0)}: column {name!r} holds numbers, not ISO-8601 times (time_unit=iso)")
        values = col.to_numpy(dtype=np.float64, na_value=np.nan) if col.dtype.kind == "f" or col.hasnans \
            else col.to_numpy(dtype=np.int64)
        if values.dtype.kind == "f" and np.isnan(values).any():
            raise IngestError(f"{where.at(_first(np.isnan(values)))}: column {name!r} is empty (NaN)")
        return _epoch_times(values, col, where, name, unit, limits)

    arr = pc.utf8_trim_whitespace(pa.array(col.astype("string"), type=pa.string()))
    empty = pc.fill_null(pc.equal(pc.utf8_length(arr), 0), True)
    if pc.any(empty).as_py():
        raise IngestError(f"{where.at(_first(empty))}: column {name!r} is empty")
    if unit in ("auto", "s", "ms"):
        try:  # every value an integer, the usual epoch column: parsed in one pass
            values = pc.cast(arr, pa.int64()).to_numpy()
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            values = None
        if values is not None:
            return _epoch_times(values, col, where, name, unit, limits)
    text = col.astype("string").str.strip()
    # auto: epoch numbers when most values look like numbers, so that one bad value is reported
    # itself, not as the first good number that failed to parse as ISO-8601 (told in one Arrow
    # pass: an ISO column is not parsed as numbers first)
    looks_numeric = unit in ("s", "ms") or (
        unit == "auto" and pc.mean(pc.match_substring_regex(arr, _NUMERIC_LOOK_RE)).as_py() >= 0.5)
    if looks_numeric:
        numeric = pd.to_numeric(text, errors="coerce")
        bad = numeric.isna().to_numpy()
        if bad.any():
            row = _first(bad)
            value = str(col.iloc[row]).strip()
            if value.lower().lstrip("+-") == "nan":
                raise IngestError(f"{where.at(row)}: time {value!r} in column {name!r} is not a number (NaN)")
            raise _unparseable(where, row, col, name)
        return _epoch_times(numeric.to_numpy(), col, where, name, unit, limits)
    return _iso_times(text, arr, col, where, name, limits)


def _unparseable(where: Where, row: int, col: pd.Series, name: str, hint: str = "") -> IngestError:
    return IngestError(f"{where.at(row)}: cannot parse time {str(col.iloc[row])!r} in column {name!r} "
                       f"(expected epoch seconds, epoch milliseconds or ISO-8601){hint}")


def _epoch_times(values: np.ndarray, col: pd.Series, where: Where, name: str, unit: str,
                 limits: Limits) -> pd.Series:
    """Epoch numbers -> times: finite, of one unit (seconds or milliseconds), inside the limits."""
    as_float = values.astype(np.float64, copy=False)
    if values.dtype.kind == "f":
        finite = np.isfinite(as_float)
        if not finite.all():
            row = _first(~finite)
            raise IngestError(f"{where.at(row)}: time {str(col.iloc[row]).strip()!r} in column {name!r} is not "
                              f"a finite number")
    fits = {}
    for u in ("s", "ms"):
        lo, hi = limits.epoch_bounds(u)
        fits[u] = (as_float >= lo) & (as_float <= hi)
    if unit == "auto":
        # a value that reads as a plausible time in seconds is seconds, else in milliseconds it is
        # milliseconds (the two ranges overlap only when time_min is within weeks of 1970)
        kinds = {"s": fits["s"], "ms": fits["ms"] & ~fits["s"]}
        if kinds["s"].all():
            unit = "s"
        elif kinds["ms"].all():
            unit = "ms"
        else:
            counts = {u: int(m.sum()) for u, m in kinds.items()}
            unit = "s" if counts["s"] >= counts["ms"] else "ms"
            _refuse_epoch(as_float, col, where, name, unit, limits, kinds, auto=True, counts=counts)
    elif not fits[unit].all():
        _refuse_epoch(as_float, col, where, name, unit, limits, fits, auto=False)
    if values.dtype.kind in "iu":
        ns = values.astype(np.int64, copy=False) * (10**9 if unit == "s" else 10**6)
        return pd.Series(pd.to_datetime(ns, unit="ns", utc=True)).astype("datetime64[ns, UTC]")
    ts = pd.to_datetime(pd.Series(values), unit=unit, utc=True)
    return ts.astype("datetime64[ns, UTC]")


def _refuse_epoch(values: np.ndarray, col: pd.Series, where: Where, name: str, unit: str, limits: Limits,
                  fits: dict[str, np.ndarray], auto: bool, counts: dict[str, int] | None = None) -> None:
    row = _first(~fits[unit])
    value = str(col.iloc[row]).strip()
    other = "ms" if unit == "s" else "s"
    if fits[other][row]:
        if auto:
            example = _first(fits[unit])
            lines = where.lines([row, example])
            raise IngestError(
                f"{where.path}, {where.label(row, lines[row])}: time {value!r} in column {name!r} is epoch "
                f"{_UNIT_NAMES[other]}, but {counts[unit]:,} of the column's {len(values):,} times are epoch "
                f"{_UNIT_NAMES[unit]} (such as {str(col.iloc[example]).strip()!r} on "
                f"{where.label(example, lines[example])}); one unit per column: fix the file (or set time_unit)")
        raise IngestError(f"{where.at(row)}: time {value!r} in column {name!r} looks like epoch {_UNIT_NAMES[other]}, "
                          f"not {_UNIT_NAMES[unit]} as time_unit={unit} says")
    if auto and not counts[unit]:
        how = "as epoch seconds or milliseconds"
    else:
        date = _as_date(values[row], unit)
        how = f"as epoch {_UNIT_NAMES[unit]}" + (f": {date}" if date else "")
    raise IngestError(f"{where.at(row)}: time {value!r} in column {name!r} is outside the plausible range "
                      f"{limits.describe()} ({how}); time_min and time_max set the range")


def _iso_times(text: pd.Series, arr: pa.Array, col: pd.Series, where: Where, name: str,
               limits: Limits) -> pd.Series:
    """ISO-8601 strings -> UTC: all with a UTC offset or all without (naive ones are UTC), in range."""
    ts = pd.to_datetime(text, utc=True, errors="coerce", format="ISO8601")
    bad = ts.isna().to_numpy()
    if bad.any():
        row = _first(bad)
        value = str(col.iloc[row]).strip()
        if re.fullmatch(_NUMBER_RE, value):
            raise _unparseable(where, row, col, name,
                               "; it is an epoch number among ISO-8601 times: one kind per column")
        try:  # a well-formed time pandas cannot hold (before 1677 or after 2262)
            datetime.fromisoformat(value)
        except ValueError:
            raise _unparseable(where, row, col, name) from None
        raise IngestError(f"{where.at(row)}: time {value!r} in column {name!r} is outside the plausible range "
                          f"{limits.describe()}; time_min and time_max set the range")
    with_offset = pc.match_substring_regex(arr, _OFFSET_RE).to_numpy(zero_copy_only=False)
    n_offset = int(with_offset.sum())
    if 0 < n_offset < len(with_offset):
        majority_offset = n_offset * 2 >= len(with_offset)
        row = _first(~with_offset if majority_offset else with_offset)
        example = _first(with_offset if majority_offset else ~with_offset)
        lines = where.lines([row, example])
        kind, others = ("has no UTC offset", "have one") if majority_offset else ("has a UTC offset", "have none")
        raise IngestError(
            f"{where.path}, {where.label(row, lines[row])}: time {str(col.iloc[row]).strip()!r} in column {name!r} "
            f"{kind}, but {max(n_offset, len(with_offset) - n_offset):,} of the column's {len(with_offset):,} "
            f"times {others} (such as {str(col.iloc[example]).strip()!r} on {where.label(example, lines[example])}); "
            f"one kind per column: a naive time would be read as UTC")
    ts = ts.astype("datetime64[ns, UTC]")
    _check_range(ts, col, where, name, limits)
    return ts


def _check_range(ts: pd.Series, col: pd.Series, where: Where, name: str, limits: Limits) -> None:
    outside = ((ts < limits.time_min) | (ts > limits.time_max)).to_numpy()
    if outside.any():
        row = _first(outside)
        value = col.iloc[row]
        shown = repr(str(value).strip()) if isinstance(value, str) else str(ts.iloc[row])
        raise IngestError(f"{where.at(row)}: time {shown} in column {name!r} is outside the plausible range "
                          f"{limits.describe()}; time_min and time_max set the range")


# -- Last.fm-1K --------------------------------------------------------------------------------------


def read_lastfm_1k(path: str | Path, limits: Limits | None = None) -> pd.DataFrame:
    """The Last.fm-1K `userid-timestamp-artid-artname-traid-traname.tsv` layout (no header)."""
    path = Path(path)
    limits = limits or Limits.parse()
    if path.stat().st_size == 0:
        raise IngestError(f"{path}: the file is empty")
    rows, lines = [], []
    with gzip_errors(path), open_text(path, errors="replace") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        for fields in reader:
            if not fields or fields == [""]:
                continue
            if len(fields) != 6:
                hint = " (is it comma-separated?)" if len(fields) == 1 and "," in fields[0] else ""
                raise IngestError(
                    f"{path}, line {reader.line_num}: expected 6 tab-separated fields "
                    f"({', '.join(LASTFM_1K_COLUMNS)}), found {len(fields)}{hint}"
                )
            rows.append(fields)
            lines.append(reader.line_num)
    if not rows:
        raise IngestError(f"{path}: the file has no rows")
    where = Where(path, lines=lines)
    raw = pd.DataFrame(rows, columns=LASTFM_1K_COLUMNS)
    for col in ("userid", "artname"):
        empty = raw[col].str.strip() == ""
        if empty.any():
            raise IngestError(f"{where.at(_first(empty.to_numpy()))}: column {col!r} is empty")
    for col in LASTFM_1K_COLUMNS:
        _check_ids(raw[col], where, col, limits, nul=False)  # a NUL byte anywhere in the line
        has_nul = raw[col].str.contains("\x00", regex=False).to_numpy()
        if has_nul.any():
            row = _first(has_nul)
            raise IngestError(f"{where.at(row)}: a NUL byte (\\x00) in column {col!r} "
                              f"({_shorten(raw[col].iloc[row])}); the file is damaged or not text")
    artist = raw["artid"].where(raw["artid"].str.strip() != "", "name:" + raw["artname"].str.strip())
    track = raw["traid"].where(
        raw["traid"].str.strip() != "", "name:" + raw["artname"].str.strip() + "\u241f" + raw["traname"].str.strip()
    )
    out = pd.DataFrame(
        {
            "user_id": raw["userid"].astype("string"),
            "track_id": track.astype("string"),
            "ts": parse_times(raw["timestamp"], where, "timestamp", "iso", limits),
            "artist_id": artist.astype("string"),
            "genre": pd.Series(pd.NA, index=raw.index, dtype="string"),
        }
    )
    _check_ids(out["track_id"], where, "track_id", limits, nul=False,
               what="the track id (artist name + title where the track has no MusicBrainz id)")
    _check_ids(out["artist_id"], where, "artist_id", limits, nul=False,
               what="the artist id (the artist name where it has no MusicBrainz id)")
    return out

