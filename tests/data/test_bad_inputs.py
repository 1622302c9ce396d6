"""The data stage's bad-input corpus: every file is refused with the file, the line (Parquet:
the row), the value and the reason, by `read_events` and by the `data` entry point (exit 2, one line
on stderr, no traceback, the run FAILED, nothing written); valid files still read as before.

The corpus is generated here, in the test's temporary directory: each case is a few hundred good
plays and one bad thing, so that the line a message names is checked against where it really is.
"""

from __future__ import annotations

import gzip
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from playlistai.data.ingest import (
    DEFAULT_MAX_ID_LENGTH,
    DEFAULT_TIME_MAX,
    DEFAULT_TIME_MIN,
    IngestError,
    Limits,
    read_events,
)

REPO = Path(__file__).resolve().parents[2]
HEADER = "user_id,track_id,ts\n"
T0 = 1_700_000_000                      # 2023-11-14 22:13:20 UTC


def good_rows(n: int, start: int = 0, sep: str = ",", ms: bool = False) -> str:
    return "".join(sep.join((f"u{i % 7}", f"t{i % 50}", str((T0 + 60 * i) * (1000 if ms else 1)))) + "\n"
                   for i in range(start, start + n))


def iso_rows(n: int, offset: str = "+01:00") -> str:
    return "".join(f"u{i % 7},t{i % 50},{pd.Timestamp(T0 + 60 * i, unit='s'):%Y-%m-%dT%H:%M:%S}{offset}\n"
                   for i in range(n))


def lastfm_row(ts: str = "2009-05-04T23:08:57Z", artist: str = "Artist", title: str = "Song") -> str:
    return f"user_000001\t{ts}\t\t{artist}\t\t{title}\n"


def parquet_bytes(**columns) -> bytes:
    frame = pd.DataFrame({"user_id": ["u1", "u2", "u3"], "track_id": ["a", "b", "c"],
                          "ts": pd.to_datetime([T0, T0 + 60, T0 + 120], unit="s", utc=True)})
    return frame.assign(**columns).to_parquet()


@dataclass
class Case:
    name: str                         # the file name (its extension picks the reader)
    content: Callable[[], bytes]
    where: str                        # "line N" or "row N": what the message must name after the file
    reason: str                       # a regex the rest of the message must match (the value and why)
    args: tuple[str, ...] = ()        # extra entry-point arguments
    kwargs: dict | None = None        # the same for read_events


def text(s: str) -> Callable[[], bytes]:
    return lambda: s.encode("utf-8")


CORPUS = [
    # -- one unit per column: 1 millisecond time among 399 second times
    Case("ms-among-seconds.csv", text(HEADER + good_rows(200) + f"u1,t1,{T0 * 1000 + 123}\n" + good_rows(199, 200)),
         "line 202", r"time '1700000000123' in column 'ts' is epoch milliseconds, but 399 of the column's 400 "
                     r"times are epoch seconds \(such as '1700000000' on line 2\); one unit per column"),
    Case("seconds-among-ms.csv", text(HEADER + good_rows(300, ms=True) + f"u1,t1,{T0}\n"),
         "line 302", r"time '1700000000' in column 'ts' is epoch seconds, but 300 of the column's 301 times are "
                     r"epoch milliseconds"),
    Case("ms-with-unit-s.csv", text(HEADER + good_rows(20) + f"u1,t1,{T0 * 1000}\n"),
         "line 22", r"time '1700000000000' in column 'ts' looks like epoch milliseconds, not seconds as time_unit=s",
         args=("--time-unit", "s"), kwargs={"time_unit": "s"}),
    Case("naive-among-offsets.csv", text(HEADER + iso_rows(30) + "u1,t1,2023-11-15T10:00:00\n"),
         "line 32", r"time '2023-11-15T10:00:00' in column 'ts' has no UTC offset, but 30 of the column's 31 times "
                    r"have one \(such as '2023-11-14T22:13:20\+01:00' on line 2\)"),
    Case("offset-among-naive.csv", text(HEADER + iso_rows(30, "") + "u1,t1,2023-11-15T10:00:00Z\n"),
         "line 32", r"time '2023-11-15T10:00:00Z' in column 'ts' has a UTC offset, but 30 of the column's 31 times "
                    r"have none"),
    Case("epoch-among-iso.csv", text(HEADER + iso_rows(30) + f"u1,t1,{T0}\n"),
         "line 32", r"cannot parse time '1700000000' in column 'ts' .*an epoch number among ISO-8601 times"),
    # -- implausible times
    Case("zero.csv", text(HEADER + good_rows(100) + "u1,t1,0\n"),
         "line 102", r"time '0' in column 'ts' is outside the plausible range 1990-01-01 to .* UTC "
                     r"\(as epoch seconds: 1970-01-01 00:00:00 UTC\)"),
    Case("negative.csv", text(HEADER + good_rows(100) + f"u1,t1,-{T0}\n"),
         "line 102", r"time '-1700000000' in column 'ts' is outside the plausible range .*1916-02-18"),
    Case("year-2200.csv", text(HEADER + good_rows(100) + "u1,t1,7258118400\n"),
         "line 102", r"time '7258118400' in column 'ts' is outside the plausible range .*"
                     r"\(as epoch seconds: 2200-01-01 00:00:00 UTC\)"),
    Case("year-2200-ms.csv", text(HEADER + good_rows(100, ms=True) + "u1,t1,7258118400000\n"),
         "line 102", r"time '7258118400000' .*outside the plausible range .*\(as epoch milliseconds: 2200-01-01"),
    Case("year-2200-iso.csv", text(HEADER + iso_rows(30) + "u1,t1,2200-01-01T00:00:00+01:00\n"),
         "line 32", r"time '2200-01-01T00:00:00\+01:00' in column 'ts' is outside the plausible range"),
    Case("year-3000-iso.csv", text(HEADER + iso_rows(30) + "u1,t1,3000-01-01T00:00:00+01:00\n"),
         "line 32", r"time '3000-01-01T00:00:00\+01:00' in column 'ts' is outside the plausible range"),
    Case("two-days-ahead.csv",
         lambda: (HEADER + good_rows(10) + f"u1,t1,{int(pd.Timestamp.now(tz='UTC').timestamp()) + 2 * 86400}\n").encode(),
         "line 12", r"in column 'ts' is outside the plausible range 1990-01-01 to "),
    Case("1e300.csv", text(HEADER + good_rows(100) + "u1,t1,1e300\n"),
         "line 102", r"time '1e300' in column 'ts' is outside the plausible range"),
    Case("inf.csv", text(HEADER + good_rows(100) + "u1,t1,inf\n"),
         "line 102", r"time 'inf' in column 'ts' is not a finite number"),
    Case("minus-inf.csv", text(HEADER + good_rows(100) + "u1,t1,-inf\n"),
         "line 102", r"time '-inf' in column 'ts' is not a finite number"),
    Case("nan.csv", text(HEADER + good_rows(100) + "u1,t1,NaN\n"),
         "line 102", r"time 'NaN' in column 'ts' is not a number \(NaN\)"),
    # -- NUL bytes and over-long ids
    Case("nul.csv", text(HEADER + good_rows(100) + "u1,t\x001,1700000000\n"),
         "line 102", r"a NUL byte \(\\x00\) in column 'track_id' \('t\\x001'\)"),
    Case("nul.csv.gz", lambda: gzip.compress((HEADER + good_rows(100) + "u\x001,t1,1700000000\n").encode()),
         "line 102", r"a NUL byte \(\\x00\) in column 'user_id'"),
    Case("nul-in-quoted-newline.csv", text(HEADER + 'u1,"a\nb",1700000000\n' * 3 + 'u1,"t\n\x00",1700000000\n'),
         "line 8", r"a NUL byte \(\\x00\) in column 'track_id' \('t\\n\\x00'\)"),
    Case("ten-million-character-id.csv", text(HEADER + good_rows(100) + "u1," + "x" * 10_000_000 + ",1700000000\n"),
         "line 102", r"column 'track_id' is 10,000,000 characters long \('xxxx.*'\.\.\.\); the limit is 256 "
                     r"\(max_id_length\)"),
    Case("long-user.csv", text(HEADER + good_rows(100) + "u" * 257 + ",t1,1700000000\n"),
         "line 102", r"column 'user_id' is 257 characters long .*the limit is 256"),
    Case("long-artist.csv", text("user_id,track_id,ts,artist_id\n" + "u,t,1700000000,a\n" * 5
                                 + "u,t,1700000000," + "a" * 40 + "\n"),
         "line 7", r"column 'artist_id' is 40 characters long .*the limit is 32",
         args=("--max-id-length", "32"), kwargs={"limits": Limits.parse(max_id_length=32)}),
    # -- exact lines after blank lines, whitespace-only lines, CRLF and quoted newlines
    Case("blank-lines.csv", text(HEADER + "\n\n" + good_rows(5) + "\n   \n\t\n" + "u1,t1,yesterday\n"),
         "line 12", r"cannot parse time 'yesterday' in column 'ts'"),
    Case("crlf-blank-lines.csv", text((HEADER + "\n" + good_rows(5) + "  \n" + "u1,t1,0\n").replace("\n", "\r\n")),
         "line 9", r"time '0' in column 'ts' is outside the plausible range"),
    Case("quoted-newlines-time.csv", text(HEADER + 'u1,"a\nb\nc",1700000000\n' * 3 + "u1,t1,5\n"),
         "line 11", r"time '5' in column 'ts' is outside the plausible range"),
    Case("quoted-newlines-extra-field.csv", text(HEADER + 'u1,"a\nb\nc",1700000000\n' * 3 + "u1,t1,1700000000,x\n"),
         "line 11", r"expected 3 comma-separated fields \(as in the header\), found 4"),
    Case("quoted-newlines-short-line.csv", text(HEADER + '\nu1,"a\nb",1700000000\n' * 3 + "u1,t1\n"),
         "line 11", r"expected 3 comma-separated fields \(as in the header\), found 2"),
    Case("quoted-newlines-empty-id.csv", text(HEADER + 'u1,"a\n\nb",1700000000\n' * 2 + "u1,,1700000000\n"),
         "line 8", r"column 'track_id' is empty"),
    Case("unclosed-quote.csv", text(HEADER + good_rows(10) + 'u1,"t1,1700000000\nu2,t2,1700000000\n'),
         "line 12", r"a quoted field opened on this line is never closed"),
    Case("tsv-blank-and-quoted.tsv", text(HEADER.replace(",", "\t") + '\n"a\nb"\tt\t1700000000\n' + "u\tt\t-5\n"),
         "line 5", r"time '-5' in column 'ts' is outside the plausible range"),
    # -- Parquet (no lines: the 1-based row) and Last.fm-1K
    Case("nul.parquet", lambda: parquet_bytes(user_id=["u1", "u\x002", "u3"]),
         "row 2", r"a NUL byte \(\\x00\) in column 'user_id' \('u\\x002'\)"),
    Case("year-2200.parquet", lambda: parquet_bytes(ts=pd.to_datetime(["2023-01-01", "2023-01-02", "2200-01-01"],
                                                                        utc=True)),
         "row 3", r"time 2200-01-01 00:00:00\+00:00 in column 'ts' is outside the plausible range"),
    Case("nat.parquet", lambda: parquet_bytes(ts=pd.to_datetime(["2023-01-01", None, "2023-01-01"], utc=True)),
         "row 2", r"column 'ts' is empty"),
    Case("nan-epoch.parquet", lambda: parquet_bytes(ts=[float(T0), float("nan"), float(T0)]),
         "row 2", r"column 'ts' is empty \(NaN\)"),
    Case("inf-epoch.parquet", lambda: parquet_bytes(ts=[float(T0), float(T0), float("inf")]),
         "row 3", r"time 'inf' in column 'ts' is not a finite number"),
    Case("mixed-units.parquet", lambda: parquet_bytes(ts=[T0, T0 * 1000, T0 + 60]),
         "row 2", r"time '1700000000000' in column 'ts' is epoch milliseconds, but 2 of the column's 3 times are "
                  r"epoch seconds \(such as '1700000000' on row 1\)"),
    Case("lastfm-nul.tsv", text(lastfm_row() + "\n" + lastfm_row(artist="A\x00")),
         "line 3", r"a NUL byte \(\\x00\) in column 'artname' \('A\\x00'\)", args=("--format", "lastfm1k"),
         kwargs={"fmt": "lastfm1k"}),
    Case("lastfm-1970.tsv", text(lastfm_row() + "\n\n" + lastfm_row(ts="1970-01-01T00:00:00Z")),
         "line 4", r"time '1970-01-01T00:00:00Z' in column 'timestamp' is outside the plausible range",
         args=("--format", "lastfm1k"), kwargs={"fmt": "lastfm1k"}),
    Case("lastfm-long-id.tsv", text(lastfm_row() + lastfm_row(artist="A" * 150, title="S" * 150)),
         "line 2", r"the track id \(artist name \+ title where the track has no MusicBrainz id\) is 306 characters",
         args=("--format", "lastfm1k"), kwargs={"fmt": "lastfm1k"}),
]


def write_case(directory: Path, case: Case) -> Path:
    path = directory / case.name
    path.write_bytes(case.content())
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("bad-inputs")
    return {case.name: write_case(directory, case) for case in CORPUS}


def check_message(message: str, path: Path, case: Case) -> None:
    prefix = f"{path}, {case.where}: "
    assert message.startswith(prefix), f"{case.name}: expected {prefix!r}..., got {message[:300]!r}"
    assert re.search(case.reason, message[len(prefix):]), f"{case.name}: {message[:400]!r}"
    assert "\n" not in message, f"{case.name}: the message spans lines"


@pytest.mark.parametrize("case", CORPUS, ids=[c.name for c in CORPUS])
def test_read_events_refuses_with_file_line_value_and_reason(case, corpus):
    with pytest.raises(IngestError) as exc:
        read_events(corpus[case.name], **(case.kwargs or {}))
    check_message(str(exc.value), corpus[case.name], case)


def test_a_directory_as_source_is_refused_by_name(tmp_path):
    (tmp_path / "logs.csv").mkdir()
    (tmp_path / "logs.csv" / "plays.csv").write_text(HEADER + good_rows(3))
    with pytest.raises(IngestError, match=r"logs\.csv: is a directory, not a log file \(it holds plays\.csv\); "
                                          r"pass the file itself as source"):
        read_events(tmp_path / "logs.csv")


# -- the entry point: exit 2, one line, a FAILED run, nothing written -----------------------------------


@pytest.fixture(scope="module")
def data_dir_with_events(tmp_path_factory) -> Path:
    """A data_dir that already holds the events of a good file: a refused file must leave them as they are."""
    from playlistai.data.stages import run_data
    from playlistai.tracking import stage_run

    root = tmp_path_factory.mktemp("stage")
    good = root / "good.csv"
    good.write_text(HEADER + good_rows(300))
    with stage_run("data", {"source": str(good)}):
        run_data(root / "data", source=str(good))
    return root / "data"


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_the_entry_point_refuses_every_bad_file_and_writes_nothing(corpus, data_dir_with_events, tmp_path):
    from entrypoints.data import app

    (tmp_path / "a-directory.csv").mkdir()
    cases = [(corpus[c.name], c) for c in CORPUS]
    cases.append((tmp_path / "a-directory.csv", Case("a-directory.csv", text(""), "", r"is a directory")))
    before = snapshot(data_dir_with_events)
    client = mlflow.MlflowClient()
    refused = 0
    for path, case in cases:
        result = CliRunner().invoke(app, ["--source", str(path), "--data-dir", str(data_dir_with_events), *case.args])
        stderr = result.stderr.strip()
        assert result.exit_code == 2 and isinstance(result.exception, SystemExit), (case.name, result.output)
        assert len(stderr.splitlines()) == 1, (case.name, stderr)
        assert stderr.startswith("error: data: "), (case.name, stderr)
        message = stderr[len("error: data: "):]
        if case.where:
            check_message(message, path, case)
        else:
            assert message.startswith(f"{path}: ") and re.search(case.reason, message), message
        runs = client.search_runs([mlflow.get_experiment_by_name("playlistai").experiment_id],
                                  f"params.source = '{path}'", order_by=["attributes.start_time DESC"])
        assert runs and runs[0].info.status == "FAILED", case.name
        assert message in runs[0].data.tags["error"], case.name
        refused += 1
    assert refused == len(cases)
    assert snapshot(data_dir_with_events) == before, "a refused file changed data_dir"
    assert not [p for p in data_dir_with_events.rglob(".*")], "a refused file left a temporary behind"


@pytest.mark.slow
def test_the_entry_point_process_prints_one_line_and_no_traceback(corpus, tmp_path):
    """As `mlflow run` runs it: a process per file, stderr read whole (a traceback would show here)."""
    import os

    from playlistai.tracking import configure_mlflow

    configure_mlflow()  # the store exists before the processes start (several creating it at once collide)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    names = ["ms-among-seconds.csv", "1e300.csv", "nul.csv.gz"]
    (tmp_path / "a-directory").mkdir()
    sources = [str(corpus[n]) for n in names] + [str(tmp_path / "a-directory")]
    processes = [subprocess.Popen([sys.executable, "-m", "entrypoints.data", "--source", source, "--data-dir",
                                   str(tmp_path / "data")], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for source in sources]
    for source, process in zip(sources, processes, strict=True):
        out, err = process.communicate(timeout=300)
        assert process.returncode == 2, (source, err[-800:])
        assert "Traceback" not in out + err, err[-2000:]
        assert err.strip().startswith(f"error: data: {source}") and len(err.strip().splitlines()) == 1, err[-800:]
    assert not (tmp_path / "data").exists()


# -- the limits are parameters -----------------------------------------------------------------------


def test_the_range_and_the_id_length_are_parameters(tmp_path):
    old = tmp_path / "1985.csv"
    old.write_text(HEADER + "".join(f"u,t{i},{473_385_600 + 60 * i}\n" for i in range(10)))   # 1985-01-01
    with pytest.raises(IngestError, match=r"line 2: time '473385600' .* outside the plausible range 1990-01-01"):
        read_events(old)
    assert len(read_events(old, limits=Limits.parse(time_min="1980-01-01"))) == 10
    with pytest.raises(IngestError, match=r"line 2: .*outside the plausible range 1986-01-01 to 2000-01-01 UTC"):
        read_events(old, limits=Limits.parse(time_min="1986-01-01", time_max="2000-01-01"))
    long_ids = tmp_path / "long.csv"
    long_ids.write_text(HEADER + "u," + "t" * 300 + f",{T0}\n")
    with pytest.raises(IngestError, match="the limit is 256"):
        read_events(long_ids)
    assert read_events(long_ids, limits=Limits.parse(max_id_length=300))["track_id"].str.len().tolist() == [300]


@pytest.mark.parametrize("kwargs, message", [
    (dict(time_min="yesterday"), r"time_min: cannot read 'yesterday' as a time"),
    (dict(time_max="2100-13-01"), r"time_max: cannot read '2100-13-01' as a time"),
    (dict(time_min="2030-01-01", time_max="2020-01-01"), r"time_min \(2030-01-01\) must be before time_max"),
    (dict(max_id_length=0), r"max_id_length: must be >= 1"),
])
def test_bad_limits_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Limits.parse(**kwargs)


def test_time_bounds_read_now_offsets_dates_and_offsets():
    now = pd.Timestamp("2026-01-10T12:00:00Z")
    limits = Limits.parse("now-2d", "now+1d", now=now)
    assert (limits.time_min, limits.time_max) == (pd.Timestamp("2026-01-08T12:00:00Z"), pd.Timestamp("2026-01-11T12:00:00Z"))
    limits = Limits.parse("2020-01-01T00:00:00+02:00", "now+12h", now=now)
    assert limits.time_min == pd.Timestamp("2019-12-31T22:00:00Z") and limits.time_max == now + pd.Timedelta("12h")


def test_mlproject_and_the_entry_point_default_to_the_ingest_limits():
    params = yaml.safe_load((REPO / "MLproject").read_text())["entry_points"]["data"]["parameters"]
    assert params["time_min"]["default"] == DEFAULT_TIME_MIN
    assert params["time_max"]["default"] == DEFAULT_TIME_MAX
    assert float(params["max_id_length"]["default"]) == DEFAULT_MAX_ID_LENGTH
    # the DIGINETICA recipe widens the range to its made-up times, as its protocol test does
    time_max = re.search(r'^TIME_MAX = "(.+)"$', (REPO / "tests/data/test_realdata_protocol.py").read_text(), re.M)
    assert time_max and f"REALDATA_TIME_MAX := {time_max.group(1)}" in (REPO / "Makefile").read_text()


def test_the_entry_point_refuses_bad_limits_before_opening_a_run(tmp_path):
    from entrypoints.data import app

    source = tmp_path / "plays.csv"
    source.write_text(HEADER + good_rows(3))
    result = CliRunner().invoke(app, ["--source", str(source), "--data-dir", str(tmp_path / "d"),
                                      "--time-max", "someday"])
    assert result.exit_code == 2 and "error: data: time_max: cannot read 'someday' as a time" in result.stderr
    runs = mlflow.MlflowClient().search_runs([mlflow.get_experiment_by_name("playlistai").experiment_id],
                                             f"params.source = '{source}'")
    assert not runs and not (tmp_path / "d").exists()


# -- valid files read as they did -------------------------------------------------------------------


def expected_times(seconds) -> list[pd.Timestamp]:
    return [pd.Timestamp(s, unit="s", tz="UTC") for s in seconds]


SECONDS = [T0 + 60 * i for i in range(400)]


@pytest.mark.parametrize("name, body", [
    ("seconds.csv", HEADER + "".join(f"u,t,{s}\n" for s in SECONDS)),
    ("milliseconds.csv", HEADER + "".join(f"u,t,{s * 1000}\n" for s in SECONDS)),
    ("iso-z.csv", HEADER + "".join(f"u,t,{pd.Timestamp(s, unit='s'):%Y-%m-%dT%H:%M:%S}Z\n" for s in SECONDS)),
    # offsets that differ from line to line (a summer-time change) are still one kind: with an offset
    ("iso-offsets.csv", HEADER + "".join(
        f"u,t,{pd.Timestamp(s, unit='s', tz='UTC').tz_convert('America/New_York').isoformat()}\n" for s in SECONDS)),
    ("iso-naive.csv", HEADER + "".join(f"u,t,{pd.Timestamp(s, unit='s'):%Y-%m-%d %H:%M:%S}\n" for s in SECONDS)),
    ("seconds.csv.gz", HEADER + "".join(f"u,t,{s}\n" for s in SECONDS)),
    ("iso-offsets.tsv.gz", HEADER.replace(",", "\t") + "".join(
        f"u\tt\t{pd.Timestamp(s, unit='s', tz='UTC').tz_convert('Asia/Kolkata').isoformat()}\n" for s in SECONDS)),
])
def test_valid_text_files_read_their_times(tmp_path, name, body):
    path = tmp_path / name
    path.write_bytes(gzip.compress(body.encode()) if name.endswith(".gz") else body.encode())
    events = read_events(path)
    assert str(events["ts"].dtype) == "datetime64[ns, UTC]"
    assert events["ts"].tolist() == expected_times(SECONDS)
    assert events["user_id"].dtype == "string" and events["artist_id"].isna().all()


def test_valid_fractional_and_quoted_values_read_as_before(tmp_path):
    path = tmp_path / "quoted.csv"
    path.write_text(HEADER + '"u 1","t, ""one""",1700000000.25\n\n"u\n2", t2 ,1700000060.5\n')
    events = read_events(path)
    assert events["user_id"].tolist() == ["u 1", "u\n2"] and events["track_id"].tolist() == ['t, "one"', "t2"]
    assert events["ts"].tolist() == pd.to_datetime(pd.Series([1700000000.25, 1700000060.5]), unit="s", utc=True).tolist()


@pytest.mark.parametrize("ts", [
    pd.to_datetime(SECONDS, unit="s", utc=True),                       # tz-aware
    pd.to_datetime(SECONDS, unit="s"),                                 # naive: UTC
    SECONDS,                                                           # epoch seconds (int64)
    [s * 1000 for s in SECONDS],                                       # epoch milliseconds
    [str(s) for s in SECONDS],                                         # epoch seconds as text
])
def test_valid_parquet_files_read_their_times(tmp_path, ts):
    path = tmp_path / "e.parquet"
    pd.DataFrame({"user_id": "u", "track_id": "t", "ts": ts}).to_parquet(path)
    assert read_events(path)["ts"].tolist() == expected_times(SECONDS)
