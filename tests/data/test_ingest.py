import gzip
from pathlib import Path

import pandas as pd
import pytest

from playlistai.data.ingest import IngestError, detect_format, read_events, read_lastfm_1k

LASTFM = (
    "user_000001\t2009-05-04T23:08:57Z\tf1b1cf71-bd35-4e99-8624-24a6e15f133a\tDeep Dish\t\tFuck Me Im Famous (Pacha Ibiza)-09-28-2007\n"
    "user_000001\t2009-05-04T13:54:10Z\ta7f7df4a-77d8-4f12-8acd-5c60c93f4de8\t坂本龍一\t\tComposition 0919 (Live_2009_4_15)\n"
    "user_000001\t2009-05-04T13:52:04Z\ta7f7df4a-77d8-4f12-8acd-5c60c93f4de8\t坂本龍一\tf7c1f8f8-b935-45ed-8fc8-7def69d92a10\tMc2 (Live_2009_4_15)\n"
    "user_000002\t2009-05-04T13:42:52Z\t\tSome \"Quoted\" Band\t\tA Song\n"
)


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_lastfm_1k_reader(tmp_path):
    ev = read_lastfm_1k(write(tmp_path, "lastfm.tsv", LASTFM))
    assert list(ev.columns) == ["user_id", "track_id", "ts", "artist_id", "genre"]
    assert len(ev) == 4
    assert ev["ts"].iloc[0] == pd.Timestamp("2009-05-04T23:08:57Z")
    # a track with an MBID is keyed by it; without, by artist + title
    assert ev["track_id"].iloc[2] == "f7c1f8f8-b935-45ed-8fc8-7def69d92a10"
    assert ev["track_id"].iloc[1].startswith("name:坂本龍一")
    # an artist without an MBID is keyed by its name; quotes are kept verbatim
    assert ev["artist_id"].iloc[3] == 'name:Some "Quoted" Band'
    assert read_events(tmp_path / "lastfm.tsv", fmt="lastfm1k").equals(ev)


def test_lastfm_1k_wrong_field_count_names_the_line(tmp_path):
    bad = LASTFM + "user_000003\t2009-05-04T13:42:52Z\tonly-three\n"
    with pytest.raises(IngestError, match=r"lastfm\.tsv, line 5: expected 6 tab-separated fields"):
        read_lastfm_1k(write(tmp_path, "lastfm.tsv", bad))


def test_lastfm_1k_comma_separated_is_explained(tmp_path):
    p = write(tmp_path, "lastfm.tsv", LASTFM.replace("\t", ","))
    with pytest.raises(IngestError, match="comma-separated"):
        read_lastfm_1k(p)


def test_lastfm_1k_bad_time_names_the_line(tmp_path):
    bad = LASTFM.replace("2009-05-04T13:54:10Z", "yesterday")
    with pytest.raises(IngestError, match=r"line 2: cannot parse time 'yesterday'"):
        read_lastfm_1k(write(tmp_path, "lastfm.tsv", bad))


def test_generic_csv_with_mapping_and_epoch_seconds(tmp_path):
    p = write(tmp_path, "plays.csv", "who,what,when,by\nu1,s1,1700000000,x\nu1,s2,1700000100,\n")
    ev = read_events(p, user_col="who", track_col="what", ts_col="when", artist_col="by", genre_col=None)
    assert ev["ts"].tolist() == [pd.Timestamp(1700000000, unit="s", tz="UTC"), pd.Timestamp(1700000100, unit="s", tz="UTC")]
    assert ev["artist_id"].iloc[0] == "x" and pd.isna(ev["artist_id"].iloc[1])
    assert ev["genre"].isna().all()


def test_generic_tsv_iso_and_epoch_millis(tmp_path):
    p = write(tmp_path, "plays.tsv", "user_id\ttrack_id\tts\nu\ta\t2024-03-01T10:00:00+01:00\n")
    assert read_events(p)["ts"].iloc[0] == pd.Timestamp("2024-03-01T09:00:00Z")
    p = write(tmp_path, "ms.csv", "user_id,track_id,ts\nu,a,1700000000123\n")
    assert read_events(p)["ts"].iloc[0] == pd.Timestamp(1700000000123, unit="ms", tz="UTC")


def test_parquet_round_trip(tmp_path):
    df = pd.DataFrame({"user_id": ["u"], "track_id": ["a"], "ts": pd.to_datetime(["2024-01-01"], utc=True)})
    df.to_parquet(tmp_path / "e.parquet")
    ev = read_events(tmp_path / "e.parquet")
    assert ev["ts"].iloc[0] == pd.Timestamp("2024-01-01", tz="UTC")


@pytest.mark.parametrize(
    "name, text, kwargs, message",
    [
        ("empty.csv", "", {}, r"empty\.csv: the file is empty"),
        ("header.csv", "user_id,track_id,ts\n", {}, "header but no rows"),
        ("cols.csv", "user_id,song,ts\nu,a,1\n", {}, r"missing column\(s\) \['track_id'\]"),
        ("time.csv", "user_id,track_id,ts\nu,a,2024-01-01\nu,b,not-a-time\n", {}, r"time\.csv, line 3: cannot parse time 'not-a-time'"),
        ("delim.csv", "user_id\ttrack_id\tts\nu\ta\t1\n", {}, "delimited differently"),
        ("blank.csv", "user_id,track_id,ts\nu,,1\n", {}, r"line 2: column 'track_id' is empty"),
        ("x.json", "{}", {}, "cannot tell the format"),
        ("bad.parquet", "not parquet", {}, "not a readable Parquet file"),
        ("long.csv", "user_id,track_id,ts\nu,a,1\nu,b,2,extra\n", {},
         r"long\.csv, line 3: expected 3 comma-separated fields \(as in the header\), found 4"),
        ("short.tsv", "user_id\ttrack_id\tts\nu\ta\t1700000000\nu\tb\n", {},
         r"short\.tsv, line 3: expected 3 tab-separated fields \(as in the header\), found 2"),
        # an empty time is named as such, not blamed on a good time of another line
        ("epochs.csv", "user_id,track_id,ts\nu,a,1700000000\nu,b,1700000100\nu,c,yesterday\n", {},
         r"epochs\.csv, line 4: cannot parse time 'yesterday'"),
        ("no_time.csv", "user_id,track_id,ts\nu,a,1700000000\nu,b,\n", {}, r"no_time\.csv, line 3: column 'ts' is empty"),
    ],
)
def test_bad_input_names_file_line_or_column(tmp_path, name, text, kwargs, message):
    with pytest.raises(IngestError, match=message):
        read_events(write(tmp_path, name, text), **kwargs)


def test_missing_file(tmp_path):
    with pytest.raises(IngestError, match="file not found"):
        read_events(tmp_path / "nope.csv")


def test_a_file_that_is_not_utf8_names_the_line_and_the_byte(tmp_path):
    p = tmp_path / "latin1.csv"
    p.write_bytes("user_id,track_id,ts\nu,a,1700000000\nu,Caf\u00e9,1700000100\n".encode("latin-1"))
    with pytest.raises(IngestError, match=r"latin1\.csv, line 3: not valid UTF-8 \(byte 0xe9 at column 6\)"):
        read_events(p)


# -- gzip-compressed CSV / TSV -------------------------------------------------------------------

PLAYS = "user_id,track_id,ts,artist_id\n" + "".join(f"u{i % 7},t{i % 31},{1700000000 + 60 * i},a{i % 5}\n"
                                                     for i in range(2000))


def write_gz(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_bytes(gzip.compress(text.encode("utf-8")))
    return p


@pytest.mark.parametrize(
    "name, fmt",
    [("e.csv.gz", "csv"), ("e.tsv.gz", "tsv"), ("e.tab.gz", "tsv"), ("E.CSV.GZ", "csv"), ("e.parquet", "parquet"),
     ("e.csv", "csv")],
)
def test_format_is_read_through_the_gz_suffix(name, fmt):
    assert detect_format(Path(name), "auto") == fmt


def test_unknown_extension_under_gz_is_named_whole():
    with pytest.raises(IngestError, match=r"extension '\.json\.gz'"):
        detect_format(Path("e.json.gz"), "auto")
    with pytest.raises(IngestError, match=r"extension '\.gz'"):
        detect_format(Path("e.gz"), "auto")


@pytest.mark.parametrize("name, sep", [("plays.csv.gz", ","), ("plays.tsv.gz", "\t"), ("plays.tab.gz", "\t")])
def test_gzip_file_reads_like_the_plain_one(tmp_path, name, sep):
    text = PLAYS.replace(",", sep)
    plain = read_events(write(tmp_path, "plain" + (".csv" if sep == "," else ".tsv"), text))
    packed = read_events(write_gz(tmp_path, name, text))
    assert len(packed) == 2000
    pd.testing.assert_frame_equal(packed, plain)


def test_explicit_format_still_decompresses(tmp_path):
    p = write_gz(tmp_path, "dump.gz", PLAYS)
    assert len(read_events(p, fmt="csv")) == 2000


def test_lastfm_1k_gzip(tmp_path):
    p = write_gz(tmp_path, "lastfm.tsv.gz", LASTFM)
    assert read_events(p, fmt="lastfm1k").equals(read_lastfm_1k(write(tmp_path, "lastfm.tsv", LASTFM)))


@pytest.mark.parametrize(
    "name, text, message",
    [
        # each is a check that reads the file itself (pandas' parser, the short-line scan, the
        # UTF-8 scan, the time parser): every one must count lines of the decompressed text
        ("long.csv.gz", "user_id,track_id,ts\nu,a,1\nu,b,2\nu,c,3,extra\n",
         r"long\.csv\.gz, line 4: expected 3 comma-separated fields \(as in the header\), found 4"),
        ("short.tsv.gz", "user_id\ttrack_id\tts\nu\ta\t1700000000\nu\tb\t1700000001\nu\tc\n",
         r"short\.tsv\.gz, line 4: expected 3 tab-separated fields \(as in the header\), found 2"),
        ("time.csv.gz", PLAYS + "u,b,yesterday,a\n", r"time\.csv\.gz, line 2002: cannot parse time 'yesterday'"),
        ("blank.csv.gz", PLAYS + "u,,1700000000,a\n", r"blank\.csv\.gz, line 2002: column 'track_id' is empty"),
        ("empty.csv.gz", "", r"empty\.csv\.gz: the file is empty"),
    ],
)
def test_gzip_errors_name_the_decompressed_line(tmp_path, name, text, message):
    with pytest.raises(IngestError, match=message):
        read_events(write_gz(tmp_path, name, text))


def test_gzip_not_utf8_names_the_line(tmp_path):
    p = tmp_path / "latin1.csv.gz"
    p.write_bytes(gzip.compress("user_id,track_id,ts\nu,a,1700000000\nu,Caf\u00e9,1700000100\n".encode("latin-1")))
    with pytest.raises(IngestError, match=r"latin1\.csv\.gz, line 3: not valid UTF-8 \(byte 0xe9 at column 6\)"):
        read_events(p)


def test_truncated_gzip_is_named(tmp_path):
    data = gzip.compress(PLAYS.encode())
    for name, cut in (("half.csv.gz", data[: len(data) // 2]), ("no_trailer.csv.gz", data[:-4])):
        (tmp_path / name).write_bytes(cut)
        with pytest.raises(IngestError, match=rf"{name}: the gzip data ends early: the file is truncated"):
            read_events(tmp_path / name)


def test_corrupt_gzip_is_named(tmp_path):
    data = bytearray(gzip.compress(PLAYS.encode()))
    data[len(data) // 2] ^= 0xFF
    (tmp_path / "bad.csv.gz").write_bytes(bytes(data))
    with pytest.raises(IngestError, match=r"bad\.csv\.gz: the gzip data is corrupt"):
        read_events(tmp_path / "bad.csv.gz")


def test_gz_name_without_gzip_and_gzip_without_gz_name(tmp_path):
    with pytest.raises(IngestError, match=r"plain\.csv\.gz: not gzip-compressed although its name ends in \.gz"):
        read_events(write(tmp_path, "plain.csv.gz", PLAYS))
    (tmp_path / "packed.csv").write_bytes(gzip.compress(PLAYS.encode()))
    with pytest.raises(IngestError, match=r"packed\.csv: the file is gzip-compressed; name it packed\.csv\.gz"):
        read_events(tmp_path / "packed.csv")


def test_gzip_parquet_is_refused_with_the_reason(tmp_path):
    df = pd.DataFrame({"user_id": ["u"], "track_id": ["a"], "ts": pd.to_datetime(["2024-01-01"], utc=True)})
    (tmp_path / "e.parquet.gz").write_bytes(gzip.compress(df.to_parquet()))
    with pytest.raises(IngestError, match=r"e\.parquet\.gz: gzip-compressed Parquet is not read"):
        read_events(tmp_path / "e.parquet.gz")
