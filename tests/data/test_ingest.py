from pathlib import Path

import pandas as pd
import pytest

from playlistai.data.ingest import IngestError, read_events, read_lastfm_1k

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
