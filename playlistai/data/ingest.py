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

Every problem is an `IngestError` naming the file and, where it applies, the line or column.
"""

from __future__ import annotations

import csv
import gzip
import re
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd

FORMATS = ("auto", "csv", "tsv", "parquet", "lastfm1k")
TIME_UNITS = ("auto", "s", "ms", "iso")
LASTFM_1K_COLUMNS = ["userid", "timestamp", "artid", "artname", "traid", "traname"]


class IngestError(ValueError):
    """The input file cannot be read into events; the message says where and why."""


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


def read_events(
    path: str | Path,
    fmt: str = "auto",
    user_col: str = "user_id",
    track_col: str = "track_id",
    ts_col: str = "ts",
    artist_col: str | None = "artist_id",
    genre_col: str | None = "genre",
    time_unit: str = "auto",
) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise IngestError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise IngestError(f"{path}: the file is empty")
    if time_unit not in TIME_UNITS:
        raise IngestError(f"{path}: unknown time unit {time_unit!r}; expected one of {', '.join(TIME_UNITS)}")
    fmt = detect_format(path, fmt)
    if fmt == "lastfm1k":
        return read_lastfm_1k(path)
    if fmt == "parquet":
        if is_gzip(path):
            # Parquet compresses its own columns; a gzip wrapper is not something readers accept
            raise IngestError(f"{path}: gzip-compressed Parquet is not read; decompress it (gunzip) first")
        try:
            raw = pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises several types for a bad file
            raise IngestError(f"{path}: not a readable Parquet file ({exc})") from None
        first_line = None
    else:
        sep = "," if fmt == "csv" else "\t"
        try:
            with gzip_errors(path):
                raw = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, na_values=[""],
                                  encoding="utf-8", compression="gzip" if is_gzip(path) else None)
        except pd.errors.EmptyDataError:
            raise IngestError(f"{path}: the file is empty") from None
        except UnicodeDecodeError:
            raise IngestError(_not_utf8(path)) from None
        except pd.errors.ParserError as exc:
            counts = _FIELD_COUNT_RE.search(str(exc))
            if counts:
                expected, line, found = counts.groups()
                raise IngestError(f"{path}, line {line}: expected {expected} {_SEP_NAMES[sep]}-separated fields "
                                  f"(as in the header), found {found}") from None
            raise IngestError(f"{path}: cannot parse as {fmt.upper()}: {str(exc).strip()}") from None
        first_line = 2  # line 1 is the header
        if raw.shape[1] == 1 and (sep not in raw.columns[0]) and ("," in raw.columns[0] or "\t" in raw.columns[0] or ";" in raw.columns[0]):
            raise IngestError(
                f"{path}: only one column was found with delimiter {sep!r}; the header looks "
                f"delimited differently ({raw.columns[0][:60]!r}): is it a {'TSV' if sep == ',' else 'CSV'} file?"
            )
    if raw.empty:
        raise IngestError(f"{path}: the file has a header but no rows")
    wanted = {"user_id": user_col, "track_id": track_col, "ts": ts_col}
    missing = [src for src in wanted.values() if src not in raw.columns]
    for optional in (artist_col, genre_col):
        if optional and optional not in raw.columns and optional not in ("artist_id", "genre"):
            missing.append(optional)
    if missing:
        raise IngestError(f"{path}: missing column(s) {missing}; the file has {list(raw.columns)}")
    if first_line is not None:
        _check_short_lines(raw, path, sep, [user_col, track_col, ts_col], first_line)

    out = pd.DataFrame(
        {
            "user_id": _required_strings(raw[user_col], path, user_col, first_line),
            "track_id": _required_strings(raw[track_col], path, track_col, first_line),
            "ts": parse_times(raw[ts_col], path, ts_col, time_unit, first_line),
            "artist_id": _optional_strings(raw, artist_col),
            "genre": _optional_strings(raw, genre_col),
        }
    )
    return out


_FIELD_COUNT_RE = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")
_SEP_NAMES = {",": "comma", "\t": "tab"}


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


def _check_short_lines(raw: pd.DataFrame, path: Path, sep: str, required: list[str], first_line: int) -> None:
    """A line with fewer fields than the header reads as empty values at its end (pandas pads it):
    name it as a short line rather than as an empty column or, worse, as a bad time elsewhere."""
    empty = raw[required].isna().any(axis=1).to_numpy()
    if not empty.any():
        return
    row = int(np.flatnonzero(empty)[0])
    wanted = row + first_line
    with gzip_errors(path), open_text(path) as f:
        for line_no, fields in enumerate(csv.reader(f, delimiter=sep), start=1):
            if line_no == wanted:
                if len(fields) < raw.shape[1]:
                    raise IngestError(f"{path}, line {line_no}: expected {raw.shape[1]} {_SEP_NAMES[sep]}-separated "
                                      f"fields (as in the header), found {len(fields)}")
                return


def _where(path: Path, column: str, row: int, first_line: int | None) -> str:
    return f"{path}, line {row + first_line}" if first_line is not None else f"{path}, row {row}"


def _required_strings(col: pd.Series, path: Path, name: str, first_line: int | None) -> pd.Series:
    values = col.astype("string").str.strip()
    bad = values.isna() | (values == "")
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise IngestError(f"{_where(path, name, row, first_line)}: column {name!r} is empty")
    return values.reset_index(drop=True)


def _optional_strings(raw: pd.DataFrame, col: str | None) -> pd.Series:
    if not col or col not in raw.columns:
        return pd.Series(pd.NA, index=range(len(raw)), dtype="string")
    values = raw[col].astype("string").str.strip()
    return values.mask(values == "").reset_index(drop=True)


def parse_times(col: pd.Series, path: Path, name: str, unit: str = "auto", first_line: int | None = 2) -> pd.Series:
    """Epoch seconds / milliseconds or ISO-8601 strings -> UTC timestamps; names the first bad line."""
    col = col.reset_index(drop=True)
    if pd.api.types.is_datetime64_any_dtype(col):
        ts = col.dt.tz_localize("UTC") if col.dt.tz is None else col.dt.tz_convert("UTC")
    else:
        text = col.astype("string").str.strip()
        empty = text.isna() | (text == "")
        if empty.any():
            row = int(np.flatnonzero(empty.to_numpy())[0])
            raise IngestError(f"{_where(path, name, row, first_line)}: column {name!r} is empty")
        numeric = pd.to_numeric(text, errors="coerce")
        # auto: epoch numbers when most values are numbers, so that one bad value is reported
        # itself, not as the first good number that failed to parse as ISO-8601
        use_numeric = unit in ("s", "ms") or (unit == "auto" and numeric.notna().mean() >= 0.5)
        if use_numeric:
            scale = unit if unit != "auto" else ("ms" if numeric.abs().max() > 1e11 else "s")
            ts = pd.to_datetime(numeric, unit=scale, utc=True, errors="coerce")
            bad = ts.isna()
        else:
            ts = pd.to_datetime(text, utc=True, errors="coerce", format="ISO8601")
            bad = ts.isna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise IngestError(
                f"{_where(path, name, row, first_line)}: cannot parse time {str(col.iloc[row])!r} in column "
                f"{name!r} (expected epoch seconds, epoch milliseconds or ISO-8601)"
            )
    return ts.astype("datetime64[ns, UTC]")


def read_lastfm_1k(path: str | Path) -> pd.DataFrame:
    """The Last.fm-1K `userid-timestamp-artid-artname-traid-traname.tsv` layout (no header)."""
    path = Path(path)
    if path.stat().st_size == 0:
        raise IngestError(f"{path}: the file is empty")
    rows = []
    with gzip_errors(path), open_text(path, errors="replace") as f:
        for line_no, fields in enumerate(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE), start=1):
            if not fields or fields == [""]:
                continue
            if len(fields) != 6:
                hint = " (is it comma-separated?)" if len(fields) == 1 and "," in fields[0] else ""
                raise IngestError(
                    f"{path}, line {line_no}: expected 6 tab-separated fields "
                    f"({', '.join(LASTFM_1K_COLUMNS)}), found {len(fields)}{hint}"
                )
            rows.append(fields)
    if not rows:
        raise IngestError(f"{path}: the file has no rows")
    raw = pd.DataFrame(rows, columns=LASTFM_1K_COLUMNS)
    for col in ("userid", "artname", "traname"):
        empty = raw[col].str.strip() == ""
        if col != "traname" and empty.any():
            row = int(np.flatnonzero(empty.to_numpy())[0])
            raise IngestError(f"{path}, line {row + 1}: column {col!r} is empty")
    artist = raw["artid"].where(raw["artid"].str.strip() != "", "name:" + raw["artname"].str.strip())
    track = raw["traid"].where(
        raw["traid"].str.strip() != "", "name:" + raw["artname"].str.strip() + "\u241f" + raw["traname"].str.strip()
    )
    return pd.DataFrame(
        {
            "user_id": raw["userid"].astype("string"),
            "track_id": track.astype("string"),
            "ts": parse_times(raw["timestamp"], path, "timestamp", "iso", first_line=1),
            "artist_id": artist.astype("string"),
            "genre": pd.Series(pd.NA, index=raw.index, dtype="string"),
        }
    )
