"""4. Bad model versions: the alias moves to a version that cannot serve, while requests run.

Three broken versions are registered from a good package and then damaged in the store, as a bad
upload or a hand edit would leave them:
- `missing weights`: the package's model.pt is deleted;
- `corrupt weights`: model.pt is overwritten with garbage (its checksum no longer matches);
- `vocabulary mismatch`: vocab.json is replaced by a vocabulary of another size and the manifest is
  rewritten to match, so that the checksums hold and it is the vocabulary/weights check that fires.

With the API serving a good version under light load, `production` points at each broken version in
turn. What must hold: no request fails and every answer still comes from the good version; the
failure is counted in `errors_total{route="model_reload"}`; `/healthz` on every worker is `degraded`
with a reason that names the problem; once the alias is back on the good version, health is `ok`
again. Then a fresh API whose alias names only a broken version stays up, `/readyz` answers 503
with a message naming the problem, and `/healthz` says `unavailable`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from reliability.components import wait_until
from reliability.core import ScenarioResult, run_scenario
from reliability.load import LoadGenerator, RequestMix, failed, first_error

KEY = "4"
TITLE = "Bad model versions"
DETECT_TIMEOUT_S = 90           # a poll, then one failed load attempt per worker, on a busy machine
HOLD_POLLS = 3                  # polls the broken alias is left in place, requests running
LIGHT_LOAD_RPS = 20
ERRORS_SAMPLE = 'route="model_reload"'


def run(ws) -> ScenarioResult:
    return run_scenario(KEY, TITLE, lambda result: _run(ws, result))


# -- damaging a registered version ----------------------------------------------------------------

def _package_dir(ws, version: str) -> Path:
    from playlistai.inference.package import resolve_package_dir

    directory = resolve_package_dir(ws.version_source(version))
    originals = (ws.root / "packages").resolve()
    if originals in directory.resolve().parents:
        raise RuntimeError(f"version {version}'s artifacts are the original package {directory}, not a stored copy")
    return directory


def _delete_weights(directory: Path) -> None:
    (directory / "model.pt").unlink()


def _corrupt_weights(directory: Path) -> None:
    weights = directory / "model.pt"
    size = weights.stat().st_size
    weights.write_bytes(bytes((i * 131 + 7) % 256 for i in range(size)))   # same size, other bytes


def _mismatch_vocabulary(directory: Path) -> None:
    """A vocabulary with fewer tracks than the weights have rows; the manifest is resealed to match."""
    from playlistai.data.vocab import Vocabulary
    from playlistai.inference.package import MANIFEST_FILE, sha256_of

    path = directory / "vocab.json"
    vocab = Vocabulary.from_json(path)
    keep = max(1, len(vocab) - max(10, len(vocab) // 10))
    Vocabulary(vocab.track_ids[:keep], vocab.artist_ids[:keep], vocab.genres[:keep], vocab.counts[:keep]).to_json(path)
    manifest_path = directory / MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text())
    manifest["files"]["vocab.json"].update(sha256=sha256_of(path), bytes=path.stat().st_size)
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True))


# (label, damage, words the reason must contain, what the words stand for)
BREAKAGES = [
    ("missing weights", _delete_weights, ("missing", "model.pt"), "names the missing file"),
    ("corrupt weights", _corrupt_weights, ("model.pt", "checksum"), "names the file and the checksum"),
    ("vocabulary mismatch", _mismatch_vocabulary, ("vocab", "vocab_size"), "names the vocabulary mismatch"),
]


def _register_broken(ws) -> list[tuple[str, str, tuple[str, ...], str]]:
    package = ws.package(0)
    broken = []
    for label, damage, words, meaning in BREAKAGES:
        version = ws.register(package, f"reliability-broken-{label.replace(' ', '-')}")
        damage(_package_dir(ws, version))
        broken.append((label, version, words, meaning))
    return broken


# -- the scenario ---------------------------------------------------------------------------------

def _short(ws, text) -> str:
    """A reason or a body without the run folder's long paths."""
    return str(text).replace(str(ws.root), "<run>")


def _names(reason: str | None, words: tuple[str, ...]) -> bool:
    return bool(reason) and all(w.lower() in reason.lower() for w in words)


def _run(ws, result: ScenarioResult) -> None:
    good, _ = ws.good_versions()
    ws.set_production(good)
    broken = _register_broken(ws)
    try:
        _while_serving(ws, result, good, broken)
        _fresh_process(ws, result, broken[1])
    finally:
        ws.set_production(good)


def _while_serving(ws, result: ScenarioResult, good: str, broken) -> None:
    profile = ws.profile
    api = ws.api("bad-versions")
    mix = RequestMix(ws.vocab, {"cached": 1, "exact": 1}, distinct=5_000)
    generator = LoadGenerator(api.port, mix, min(LIGHT_LOAD_RPS, profile.rate_rps), min(2, profile.clients))
    detect_s, recover_s, errors_counted, seen = {}, {}, 0, {}
    generator.start()
    try:
        time.sleep(2 * profile.poll_s)
        for label, version, words, meaning in broken:
            errors_before = api.metric_sum("errors_total", ERRORS_SAMPLE)
            ws.set_production(version)

            def degraded(words=words) -> bool:
                views = api.healthz_all_workers()
                seen["last"] = views[-1]
                return all(v["status"] == "degraded" and v["model_version"] == good and _names(v["reason"], words)
                           for v in views)

            try:
                detect_s[label] = wait_until(degraded, DETECT_TIMEOUT_S, interval_s=0.2, what=f"{label} reported")
            except TimeoutError:
                detect_s[label] = None
            reported = seen.get("last", {})
            time.sleep(HOLD_POLLS * profile.poll_s)          # the broken alias stays while requests run
            errors = api.metric_sum("errors_total", ERRORS_SAMPLE) - errors_before
            errors_counted += int(errors)

            ws.set_production(good)
            try:
                recover_s[label] = wait_until(
                    lambda: all(v["status"] == "ok" and v["reason"] is None and v["model_version"] == good
                                for v in api.healthz_all_workers()),
                    DETECT_TIMEOUT_S, interval_s=0.2, what="health ok again")
            except TimeoutError:
                recover_s[label] = None

            result.check(f"{label} (version {version}): /healthz degraded on every worker, reason {meaning}",
                         detect_s[label] is not None,
                         f"after {detect_s[label]:.1f} s: {_short(ws, reported.get('reason'))!r}" if detect_s[label] is not None
                         else f"not within {DETECT_TIMEOUT_S} s; last seen {reported}")
            result.check(f"{label}: the failure is counted in errors_total{{{ERRORS_SAMPLE}}}", errors >= 1,
                         f"+{errors:.0f}")
            result.check(f"{label}: /healthz ok again once the alias is back on version {good}",
                         recover_s[label] is not None,
                         f"after {recover_s[label]:.1f} s" if recover_s[label] is not None
                         else f"not within {DETECT_TIMEOUT_S} s: {api.healthz_all_workers()}")
    finally:
        records = generator.stop()
        api.stop()

    answered = [r for r in records if r.status == 200]
    versions = sorted({r.model_version for r in answered})
    result.check("zero failed requests while the alias named broken versions", not failed(records),
                 f"{len(failed(records))} of {len(records)} {first_error(records)}")
    result.check("every request answered 200", len(answered) == len(records) and records != [],
                 f"{len(records) - len(answered)} of {len(records)} not 200")
    result.check(f"every answer came from the good version {good}", versions == [good], f"versions seen {versions}")
    timed = [s for s in detect_s.values() if s is not None]
    result.figure("requests", len(records))
    result.figure("failed requests", len(failed(records)))
    result.figure("load errors counted", errors_counted)
    result.figure("max s to detect", round(max(timed), 1) if timed else "-")
    result.figure("max s to recover", round(max(s for s in recover_s.values() if s is not None), 1)
                  if any(s is not None for s in recover_s.values()) else "-")


def _fresh_process(ws, result: ScenarioResult, broken) -> None:
    """An API started while the alias names only a broken version."""
    profile = ws.profile
    label, version, words, meaning = broken
    ws.set_production(version)
    api = ws.api("bad-version-only", wait_ready_s=None)
    try:
        seen: dict = {}

        def refused() -> bool:
            status, body = api.get("/readyz")
            seen["readyz"] = (status, body)
            return status == 503 and _names(str(body), words)

        try:
            wait_until(refused, DETECT_TIMEOUT_S, interval_s=0.25, what="readiness refused")
        except TimeoutError:
            pass
        time.sleep(HOLD_POLLS * profile.poll_s)              # a few retries later, still refused and still up
        status, body = api.get("/readyz")
        health = api.healthz_all_workers()
        continued = api.post("/continue", {"tracks": ws.vocab.track_ids[:3], "k": 5})
        alive = api.process is not None and api.process.poll() is None
    finally:
        api.stop()
    result.check(f"fresh API, alias on {label} only: /readyz 503 with a message that {meaning}",
                 status == 503 and _names(str(body), words), f"{status} {_short(ws, body)}")
    result.check("fresh API: /healthz says unavailable on every worker",
                 all(h["status"] == "unavailable" and not h["model_loaded"] for h in health),
                 f"{sorted({h['status'] for h in health})}")
    result.check("fresh API: /continue answers 503, not a crash", continued[0] == 503, f"{continued[0]}")
    result.check("fresh API: the process stays up", alive, "gunicorn running" if alive else "gunicorn exited")
