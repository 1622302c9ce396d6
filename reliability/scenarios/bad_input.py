"""6. Bad input at the API: `fuzz_requests` hostile requests over real HTTP to the API under
gunicorn, and not one 5xx, dropped connection, crashed worker or memory blow-up.

The requests, all derived from one seed (the same run sends the same bytes):
- schema bodies: drawn by hypothesis from the OpenAPI schema the server publishes for POST
  /continue (its JSON schema turned into a strategy by `strategy_from_schema`), half of them with histories of known tracks so that the model answers;
- mutations of valid bodies: wrong types, NaN/Infinity literals, negative and huge k, integers of
  thousands of digits, hostile unicode (lone surrogates, RTL overrides, emoji, NUL), huge strings,
  10,000 levels of nesting, 100,000 tracks, duplicate keys, trailing garbage, truncated JSON, empty
  bodies, bytes that are not UTF-8, path- and URI-like track ids and extra fields, under a JSON or a
  wrong content type;
- hand-made requests: wrong or missing content types, chunked bodies, a body at and over the size
  limit, unknown methods and paths, admin calls without the right token.

Two client threads each keep one connection (http.client keep-alive), so both workers are hit, and
open a new one when the server closes theirs. The server may close after a 413 (it does not read
a body it refuses); any other request left without an answer is a failure. Every 4xx must be JSON
with a `detail` string, every 200 a valid slate for its request. Afterwards the API must still be
healthy on the same worker processes, its resident memory must not have grown by more than
MAX_RSS_GROWTH, and errors_total on /metrics must have counted the 4xx it answered.
"""

from __future__ import annotations

import http.client
import json
import logging
import math
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from reliability.core import ScenarioResult, run_scenario

log = logging.getLogger("reliability")

KEY = "6"
TITLE = "Bad input at the API"
SEED = 6
CLIENTS = 2
TIMEOUT_S = 30
SCHEMA_SHARE = 0.3          # of the generated requests, the rest are mutations
MAX_RSS_GROWTH = 0.25       # resident memory of master + workers, after vs before the fuzzing
EXAMPLES_SHOWN = 3          # failing requests quoted in a check's detail

JSON_TYPE = "application/json"
ADMIN_PATH = "/admin/reload"


@dataclass
class Probe:
    kind: str                                   # the generator that made it: "schema", "mutation:nan", ...
    body: bytes | None = b""                    # None: no body and no Content-Length
    content_type: str | None = JSON_TYPE
    method: str = "POST"
    path: str = "/continue"
    headers: tuple[tuple[str, str], ...] = ()
    chunks: list[bytes] | None = None           # sent with Transfer-Encoding: chunked instead of `body`
    oversize: bool = False                      # over the body limit: a 413 may close the connection

    @property
    def payload(self) -> bytes:
        return b"".join(self.chunks) if self.chunks is not None else (self.body or b"")


@dataclass
class Answer:
    kind: str
    status: int                                 # 0 = no HTTP answer
    latency_ms: float
    oversize: bool
    error: str | None = None                    # why there was no answer, or what the answer broke
    problems: list[str] = field(default_factory=list)


# -- the requests ----------------------------------------------------------------------------------

UNICODE_IDS = [
    "\u202etrack\u202c", "\u200f\u05e9\u05d9\u05e8", "\U0001f3b5\U0001f525", "t1\u0000", "\u0000", "\ufefft1",
    "e\u0301\u0301\u0301", "\u200b", "\ue000", "\uffff", "\U0010ffff", "\u0130\u0131", "\u4e2d\u6587",
    "\\", "\"", "\n\r\t", " ", "",
]
RAW_SURROGATES = ['"\\ud800"', '"\\udfff"', '"a\\ud83c"', '"\\udc00\\ud800"']     # lone halves, as JSON escapes
PATH_LIKE = ["../../etc/passwd", "file:///etc/passwd", "models:/other@x", "runs:/0123456789abcdef/model",
             "/etc/shadow", "s3://bucket/model", "http://127.0.0.1:1/x", "%2e%2e%2f%2e%2e%2fetc%2fpasswd"]
EXTRA_FIELDS = {"model_uri": "file:///etc/passwd", "model": "models:/other@x", "__proto__": {"admin": True},
                "$where": "1", "path": "../../etc/passwd", "run_id": "runs:/x/model"}
OTHER_TYPES = ["20", "", 3.5, -0.0, True, False, None, [], {}, [1, 2], {"a": 1}, -1, 2**70, "t1"]
NON_FINITE = ["NaN", "Infinity", "-Infinity"]
BAD_K = [-1, 0, -(2**63), 2**63, 2**64 + 1, 10**100, 1e308, -1e308, 1.5, 100_001, 1e9, "1e9"]
GARBAGE_TAILS = [b"x", b"}", b"]", b"\x00", b",", b" {}", b'\n{"tracks":[]}', b"\xff", b"//", b"/*"]
ODD_CONTENT_TYPES = ["application/json; charset=utf-8", "text/plain", None, "application/x-www-form-urlencoded",
                     "application/vnd.api+json", "application/json; charset=latin-1", "multipart/form-data",
                     "application/xml", "*/*", ";;", "application/json, text/plain"]


def _dump(value, rng: random.Random) -> bytes:
    compact = rng.random() < 0.5
    return json.dumps(value, ensure_ascii=rng.random() < 0.5, separators=(",", ":") if compact else None).encode()


def _nested(depth: int, opener: str, closer: str, inner: str = "1") -> str:
    return opener * depth + inner + closer * depth


class RequestFactory:
    """Probe number i is a pure function of (seed, i): the same run sends the same requests."""

    def __init__(self, track_ids: list[str], schema_bodies: list, cand_topk: int, max_bytes: int, seed: int = SEED):
        self.track_ids = track_ids
        self.schema_bodies = schema_bodies
        self.cand_topk = cand_topk
        self.max_bytes = max_bytes
        self.seed = seed
        self.nasties = self._nasties()
        self.mutations = [
            ("wrong_type", 12, self._wrong_type), ("non_finite", 6, self._non_finite), ("bad_k", 6, self._bad_k),
            ("huge_int", 3, self._huge_int), ("unicode", 8, self._unicode), ("surrogate", 4, self._surrogate),
            ("huge_string", 3, self._huge_string), ("deep_nesting", 2, self._deep_nesting),
            ("many_tracks", 2, self._many_tracks), ("duplicate_keys", 4, self._duplicate_keys),
            ("trailing_garbage", 5, self._trailing_garbage), ("truncated", 5, self._truncated),
            ("empty", 3, self._empty), ("not_utf8", 4, self._not_utf8), ("path_like", 5, self._path_like),
            ("extra_fields", 4, self._extra_fields), ("valid", 8, self._valid),
        ]
        self._weights = [w for _, w, _ in self.mutations]

    # -- building blocks ---------------------------------------------------------------------------
    def valid(self, rng: random.Random) -> dict:
        body: dict = {"tracks": rng.sample(self.track_ids, rng.randint(1, min(50, len(self.track_ids))))}
        if rng.random() < 0.8:
            body["k"] = rng.randint(1, self.cand_topk)
        if rng.random() < 0.7:
            body["context"] = {"hour": rng.randint(0, 23), "dow": rng.randint(0, 6)}
        if rng.random() < 0.5:
            body["use_ann"] = rng.random() < 0.5
        if rng.random() < 0.3:
            body["exclude_seen"] = rng.random() < 0.7
        if rng.random() < 0.2:
            body["max_per_artist"] = rng.randint(1, 5)
        return body

    def probe(self, i: int) -> Probe:
        if i < len(self.nasties):
            return self.nasties[i]
        rng = random.Random(f"{self.seed}:{i}")
        if self.schema_bodies and rng.random() < SCHEMA_SHARE:
            body = self.schema_bodies[rng.randrange(len(self.schema_bodies))]
            if isinstance(body, dict) and isinstance(body.get("tracks"), list) and rng.random() < 0.5:
                body = {**body, "tracks": [rng.choice(self.track_ids) for _ in body["tracks"]]}
            return Probe("schema", _dump(body, rng))
        name, _, make = rng.choices(self.mutations, weights=self._weights)[0]
        probe = make(rng)
        probe.kind = f"mutation:{name}"
        if probe.content_type == JSON_TYPE and rng.random() < 0.1:
            probe.content_type = rng.choice(ODD_CONTENT_TYPES)
        return probe

    # -- mutations of a valid body -------------------------------------------------------------------
    def _valid(self, rng):
        return Probe("", _dump(self.valid(rng), rng))

    def _wrong_type(self, rng):
        body = self.valid(rng)
        where = rng.choice(["tracks", "k", "context", "use_ann", "exclude_seen", "max_per_artist", "hour", "dow",
                            "track"])
        value = rng.choice(OTHER_TYPES)
        if where in ("hour", "dow"):
            body["context"] = {**(body.get("context") or {}), where: value}
        elif where == "track":
            body["tracks"][rng.randrange(len(body["tracks"]))] = value
        else:
            body[where] = value
        return Probe("", _dump(body, rng))

    def _literal(self, rng, literal: str) -> bytes:
        """A valid body with one value replaced by raw JSON text `literal` (that json.dumps would not write)."""
        body = self.valid(rng)
        where = rng.choice(["k", "hour", "max_per_artist", "track", "exclude_seen"])
        marker = "__literal__"
        if where == "hour":
            body["context"] = {**(body.get("context") or {}), "hour": marker}
        elif where == "track":
            body["tracks"][rng.randrange(len(body["tracks"]))] = marker
        else:
            body[where] = marker
        return json.dumps(body).replace(f'"{marker}"', literal).encode()

    def _non_finite(self, rng):
        return Probe("", self._literal(rng, rng.choice(NON_FINITE)))

    def _bad_k(self, rng):
        body = self.valid(rng)
        body["k"] = rng.choice([*BAD_K, self.cand_topk + 1])
        return Probe("", _dump(body, rng))

    def _huge_int(self, rng):
        digits = rng.choice([30, 400, 4_000, 5_000, 50_000])
        return Probe("", self._literal(rng, rng.choice(["", "-"]) + "9" * digits))

    def _unicode(self, rng):
        body = self.valid(rng)
        for _ in range(rng.randint(1, 4)):
            odd = rng.choice(UNICODE_IDS)
            i = rng.randrange(len(body["tracks"]))
            body["tracks"][i] = rng.choice([odd, body["tracks"][i] + odd, odd * rng.randint(2, 40)])
        return Probe("", _dump(body, rng))

    def _surrogate(self, rng):
        return Probe("", self._literal(rng, rng.choice(RAW_SURROGATES)))

    def _huge_string(self, rng):
        body = self.valid(rng)
        size = rng.choice([257, 10_000, 200_000, 900_000])
        if rng.random() < 0.7:
            body["tracks"][0] = "x" * size
        else:
            body["y" * size] = 1                        # an unknown field with a huge name: refused
        return Probe("", _dump(body, rng))

    def _deep_nesting(self, rng):
        depth = rng.choice([100, 1_000, 10_000])
        where = rng.choice(["tracks", "context", "extra", "body"])
        if where == "body":
            raw = _nested(depth, "[", "]")
        else:
            nested = _nested(depth, "[", "]") if rng.random() < 0.5 else _nested(depth, '{"a":', "}")
            key = "x" if where == "extra" else where
            raw = f'{{"tracks":["{rng.choice(self.track_ids)}"],"{key}":{nested}}}' if key != "tracks" \
                else f'{{"tracks":{nested}}}'
        return Probe("", raw.encode())

    def _many_tracks(self, rng):
        count = rng.choice([500, 501, 5_000, 100_000])
        body = self.valid(rng)
        body["tracks"] = [rng.choice(self.track_ids) for _ in range(count)] if count <= 5_000 else ["t"] * count
        return Probe("", _dump(body, rng))

    def _duplicate_keys(self, rng):
        body = self.valid(rng)
        text = json.dumps(body)[:-1]
        extra = rng.choice(['"k":-1', '"k":5', f'"tracks":["{rng.choice(self.track_ids)}"]', '"tracks":7',
                            '"context":{"hour":1,"hour":99}', '"exclude_seen":false'])
        return Probe("", (text + "," + extra + "}").encode())

    def _trailing_garbage(self, rng):
        return Probe("", _dump(self.valid(rng), rng) + rng.choice(GARBAGE_TAILS))

    def _truncated(self, rng):
        raw = _dump(self.valid(rng), rng)
        return Probe("", raw[: rng.randrange(1, len(raw))])

    def _empty(self, rng):
        return Probe("", rng.choice([b"", b" ", b"\n", b"null", b"[]", b"{}", b'""', b"0", b"true", b"\x00"]))

    def _not_utf8(self, rng):
        body = self.valid(rng)
        text = json.dumps(body, ensure_ascii=False)
        choice = rng.randrange(5)
        if choice == 0:
            body["tracks"][0] = "caf\u00e9"
            raw = json.dumps(body, ensure_ascii=False).encode("latin-1", "replace")
        elif choice == 1:
            raw = rng.randbytes(rng.randint(1, 300))
        elif choice == 2:
            raw = text.encode(rng.choice(["utf-16", "utf-16-le", "utf-32", "cp1252"]), "replace")
        elif choice == 3:
            raw = text.replace('"]', '\udce9"]', 1).encode("utf-8", "surrogateescape")     # a stray \xe9
        else:
            raw = text.encode()[:-2] + rng.choice([b"\xc0\xaf", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"]) + b"]}"
        return Probe("", raw)

    def _path_like(self, rng):
        body = self.valid(rng)
        for _ in range(rng.randint(1, 3)):
            body["tracks"][rng.randrange(len(body["tracks"]))] = rng.choice(PATH_LIKE)
        return Probe("", _dump(body, rng))

    def _extra_fields(self, rng):
        body = self.valid(rng)
        for name in rng.sample(sorted(EXTRA_FIELDS), rng.randint(1, 3)):
            body[name] = EXTRA_FIELDS[name]
        return Probe("", _dump(body, rng))

    # -- hand-made requests --------------------------------------------------------------------------
    def _nasties(self) -> list[Probe]:
        rng = random.Random(f"{self.seed}:nasties")
        valid = json.dumps({"tracks": self.track_ids[:5], "k": 10}).encode()

        def padded(total: int) -> bytes:
            head = b'{"tracks":["' + self.track_ids[0].encode() + b'"],"k":3,"pad":"'
            return head + b"x" * (total - len(head) - 2) + b'"}'

        limit = self.max_bytes
        probes = [
            Probe("nasty:content-type", valid, content_type=ct) for ct in ODD_CONTENT_TYPES
        ] + [
            Probe("nasty:content-type", valid, content_type=None, headers=(("Content-Type", JSON_TYPE),
                                                                            ("Content-Type", "text/plain"))),
            Probe("nasty:content-type", valid.decode().encode("utf-16"), content_type="application/json; charset=utf-16"),
            Probe("nasty:content-type", b"--x\r\nContent-Disposition: form-data; name=\"tracks\"\r\n\r\nt1\r\n--x--\r\n",
                  content_type="multipart/form-data; boundary=x"),
            Probe("nasty:content-type", b"tracks=t1&tracks=t2&k=5", content_type="application/x-www-form-urlencoded"),
            Probe("nasty:content-type", b"<tracks><t>t1</t></tracks>", content_type="application/xml"),
            Probe("nasty:no-body", None),
            Probe("nasty:no-body", None, content_type=None),
            Probe("nasty:chunked", chunks=[valid]),
            Probe("nasty:chunked", chunks=[bytes([b]) for b in valid]),
            Probe("nasty:chunked", chunks=[b'{"tracks": [', b'"t1"', b", 5, nul", b"l]}"]),
            Probe("nasty:chunked", chunks=[b'{"tracks":["' + self.track_ids[0].encode() + b'"],"x":"',
                                           *[b"y" * 65536] * (limit // 65536 + 2), b'"}'], oversize=True),
            Probe("nasty:chunked", chunks=[b"[" * 20_000, b"]" * 20_000]),
            Probe("nasty:size-limit", padded(limit)),
            Probe("nasty:size-limit", padded(limit + 1), oversize=True),
            Probe("nasty:size-limit", padded(2 * limit), oversize=True),
            Probe("nasty:size-limit", json.dumps({"tracks": ["t"] * (limit // 4)}).encode(), oversize=True),
            Probe("nasty:expect-continue", valid, headers=(("Expect", "100-continue"),)),
            Probe("nasty:method", None, method="GET"),
            Probe("nasty:method", valid, method="PUT"),
            Probe("nasty:method", valid, method="DELETE"),
            Probe("nasty:method", None, method="OPTIONS"),
            Probe("nasty:path", valid, path="/continue?k=5&tracks=t1"),
            Probe("nasty:path", valid, path="/%2e%2e/admin/reload"),
            Probe("nasty:path", valid, path="/continue/%00"),
            Probe("nasty:path", valid, path="/" + "a" * 4000),
            Probe("nasty:admin", b"", path=ADMIN_PATH),
            Probe("nasty:admin", b"", path=ADMIN_PATH, headers=(("Authorization", "Bearer wrong"),)),
            Probe("nasty:admin", b"", path=ADMIN_PATH, headers=(("Authorization", "Basic d3Jvbmc6d3Jvbmc="),)),
            Probe("nasty:admin", b"", path=ADMIN_PATH, headers=(("Authorization", "Bearer " + "x" * 4000),)),
            Probe("nasty:admin", b"", path=ADMIN_PATH, headers=(("Authorization", "Bearer"),)),
        ]
        rng.shuffle(probes)
        return probes


def slate_problems(request_body: bytes, payload) -> list[str]:
    """What a 200 to `request_body` breaks of the slate's promises (no duplicates, <= k, no input track)."""
    if not isinstance(payload, dict) or not isinstance(payload.get("items"), list):
        return ["a 200 without an items list"]
    ids = [item.get("track_id") for item in payload["items"] if isinstance(item, dict)]
    problems = []
    if len(ids) != len(payload["items"]) or not all(isinstance(t, str) for t in ids):
        problems.append("an item without a track_id")
    if len(ids) != len(set(ids)):
        problems.append("duplicate tracks in the slate")
    scores = [item.get("score") for item in payload["items"] if isinstance(item, dict)]
    if not all(isinstance(s, int | float) and math.isfinite(s) for s in scores):
        problems.append("a score that is not a finite number")
    request = _as_the_server_reads_it(request_body)
    if request is None:
        return [*problems, "a 200 to a body the request schema refuses"]
    if len(ids) > request.k:
        problems.append(f"{len(ids)} items for k={request.k}")
    if request.exclude_seen and set(ids) & set(request.tracks):
        problems.append("an input track in the slate although exclude_seen")
    return problems


def _as_the_server_reads_it(body: bytes):
    """The request as the API reads it (JSON with Python's rules, then the pydantic model with its
    coercions: `"exclude_seen": 0` is False), or None when it does not validate."""
    from pydantic import ValidationError

    from serving.schemas import ContinueRequest

    try:
        return ContinueRequest.model_validate(json.loads(body))
    except (ValueError, ValidationError):
        return None


# -- sending -----------------------------------------------------------------------------------------

class Client:
    """One keep-alive connection; a new one after the server closes it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.connection: http.client.HTTPConnection | None = None

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
        self.connection = None

    def send(self, probe: Probe) -> tuple[int, bytes, str | None, float]:
        """(status or 0, response body, error, latency ms) of one request."""
        if self.connection is None:
            self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT_S)
        connection = self.connection
        started = time.perf_counter()
        send_error = None
        try:
            connection.putrequest(probe.method, probe.path, skip_accept_encoding=True)
            if probe.content_type is not None:
                connection.putheader("Content-Type", probe.content_type)
            for name, value in probe.headers:
                connection.putheader(name, value)
            if probe.chunks is not None:
                connection.putheader("Transfer-Encoding", "chunked")
                connection.endheaders()
                try:
                    for chunk in probe.chunks:
                        connection.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    connection.send(b"0\r\n\r\n")
                except OSError as exc:           # the server answered and closed before reading it all
                    send_error = exc
            else:
                if probe.body is not None:
                    connection.putheader("Content-Length", str(len(probe.body)))
                connection.endheaders()
                try:
                    if probe.body:
                        connection.send(probe.body)
                except OSError as exc:
                    send_error = exc
            response = connection.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            reason = exc if send_error is None else f"{send_error!r} while sending, then {exc!r}"
            return 0, b"", f"{type(exc).__name__}: {reason}", (time.perf_counter() - started) * 1000
        latency_ms = (time.perf_counter() - started) * 1000
        if response.will_close or send_error is not None:
            self.close()
        return response.status, data, None, latency_ms


def judge(probe: Probe, status: int, data: bytes, error: str | None, latency_ms: float) -> Answer:
    answer = Answer(probe.kind, status, latency_ms, probe.oversize, error)
    if status == 0:
        return answer
    if status >= 400:
        try:
            payload = json.loads(data)
        except ValueError:
            payload = None
        detail = payload.get("detail") if isinstance(payload, dict) else None
        if not (isinstance(detail, str) and detail.strip()):
            answer.problems.append(f"a {status} without a JSON detail: {data[:120]!r}")
    elif status == 200 and probe.path == "/continue":
        try:
            answer.problems.extend(slate_problems(probe.payload, json.loads(data)))
        except ValueError:
            answer.problems.append(f"a 200 that is not JSON: {data[:120]!r}")
    return answer


def fuzz(port: int, factory: RequestFactory, count: int, clients: int = CLIENTS) -> list[Answer]:
    answers: list[Answer | None] = [None] * count

    def work(offset: int) -> None:
        client = Client(port)
        for i in range(offset, count, clients):
            probe = factory.probe(i)
            answers[i] = judge(probe, *client.send(probe))
        client.close()

    threads = [threading.Thread(target=work, args=(c,), name=f"fuzz-{c}", daemon=True) for c in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [a for a in answers if a is not None]


# -- the schema ----------------------------------------------------------------------------------------

def continue_request_schema(openapi: dict) -> dict:
    """The JSON schema of POST /continue's body, with every `$ref` into components inlined."""
    components = openapi.get("components", {}).get("schemas", {})
    operation = openapi["paths"]["/continue"]["post"]
    schema = operation["requestBody"]["content"][JSON_TYPE]["schema"]

    def inline(node, depth: int = 0):
        if depth > 50:
            raise ValueError("the OpenAPI schema nests too deeply (a recursive $ref?)")
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
                return inline(components[ref.rsplit("/", 1)[-1]], depth + 1)
            return {k: inline(v, depth + 1) for k, v in node.items() if k not in ("examples", "example")}
        if isinstance(node, list):
            return [inline(v, depth + 1) for v in node]
        return node

    return inline(schema)


def strategy_from_schema(schema: dict):
    """A hypothesis strategy for the JSON values `schema` accepts: the JSON-schema keywords OpenAPI
    documents of pydantic models use (type, properties, required, additionalProperties, anyOf,
    enum, const, minimum/maximum, minLength/maxLength, minItems/maxItems, items)."""
    from hypothesis import strategies as st

    scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
    any_json = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                            | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=8)

    def build(node: dict):
        for key in ("anyOf", "oneOf"):
            if key in node:
                return st.one_of([build(option) for option in node[key]])
        if "const" in node:
            return st.just(node["const"])
        if "enum" in node:
            return st.sampled_from(node["enum"])
        kind = node.get("type")
        if isinstance(kind, list):
            return st.one_of([build({**node, "type": k}) for k in kind])
        if kind == "null":
            return st.none()
        if kind == "boolean":
            return st.booleans()
        if kind == "integer":
            low, high = node.get("minimum"), node.get("maximum")
            if "exclusiveMinimum" in node:
                low = math.floor(node["exclusiveMinimum"]) + 1
            if "exclusiveMaximum" in node:
                high = math.ceil(node["exclusiveMaximum"]) - 1
            return st.integers(None if low is None else math.ceil(low), None if high is None else math.floor(high))
        if kind == "number":
            return st.floats(node.get("minimum"), node.get("maximum"), allow_nan=False, allow_infinity=False)
        if kind == "string":
            return st.text(min_size=node.get("minLength", 0), max_size=node.get("maxLength", 64))
        if kind == "array":
            items = build(node["items"]) if isinstance(node.get("items"), dict) else any_json
            return st.lists(items, min_size=node.get("minItems", 0), max_size=node.get("maxItems", 20))
        if kind == "object" or "properties" in node:
            properties = node.get("properties", {})
            required = set(node.get("required", ()))
            fixed = st.fixed_dictionaries({k: build(v) for k, v in properties.items() if k in required},
                                          optional={k: build(v) for k, v in properties.items() if k not in required})
            if node.get("additionalProperties", True) is False:
                return fixed
            extra_values = build(node["additionalProperties"]) if isinstance(node.get("additionalProperties"), dict) \
                else any_json
            extra = st.dictionaries(st.text(max_size=12).filter(lambda k: k not in properties), extra_values, max_size=3)
            return st.builds(lambda known, unknown: {**unknown, **known}, fixed, extra)
        return any_json

    return build(schema)


def bodies_from_schema(schema: dict, count: int, seed: int = SEED) -> list:
    """`count` JSON values the schema accepts, drawn by hypothesis from a fixed seed."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hypothesis_seed

    drawn: list = []

    @hypothesis_seed(seed)
    @settings(max_examples=count, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(strategy_from_schema(schema))
    def collect(value) -> None:
        drawn.append(value)

    collect()
    return drawn


# -- the scenario ------------------------------------------------------------------------------------

def run(ws) -> ScenarioResult:
    return run_scenario(KEY, TITLE, lambda result: _run(ws, result))


def _run(ws, result: ScenarioResult) -> None:
    import psutil

    from playlistai.config import get_settings

    settings = get_settings()          # the API under test runs with the same environment defaults
    first, _ = ws.good_versions()
    ws.set_production(first)
    api = ws.api("bad-input")
    status, openapi = api.get("/openapi.json")
    if status != 200 or not isinstance(openapi, dict):
        raise RuntimeError(f"GET /openapi.json answered {status}")
    schema = continue_request_schema(openapi)
    started = time.perf_counter()
    schema_bodies = bodies_from_schema(schema, max(50, int(ws.profile.fuzz_requests * SCHEMA_SHARE) // 2))
    generated_s = time.perf_counter() - started
    factory = RequestFactory(list(ws.vocab.track_ids), schema_bodies, settings.CAND_TOPK, settings.MAX_REQUEST_BYTES)
    count = max(ws.profile.fuzz_requests, len(factory.nasties))

    for i in range(40):                       # allocator pools and caches grown before the memory baseline
        api.post("/continue", factory.valid(random.Random(f"warm-up:{i}")))
    workers_before = _worker_pids(api, psutil)
    rss_before = api.rss_bytes()
    errors_before = _errors_total(api)

    started = time.perf_counter()
    answers = fuzz(api.port, factory, count)
    fuzz_s = time.perf_counter() - started

    rss_after = api.rss_bytes()
    workers_after = _worker_pids(api, psutil)
    errors_after = _errors_total(api)
    health_status, health = api.get("/healthz")
    valid_status, _ = api.post("/continue", {"tracks": list(ws.vocab.track_ids[:5]), "k": 10})

    statuses = Counter(a.status for a in answers)
    by_kind: dict[str, Counter] = {}
    for a in answers:
        by_kind.setdefault(a.kind, Counter())[a.status] += 1
    for kind in sorted(by_kind):
        log.info("  %-26s %s", kind, ", ".join(f"{code or 'none'}: {n}" for code, n in sorted(by_kind[kind].items())))
    answered = [a for a in answers if a.status]
    latencies = sorted(a.latency_ms for a in answered)
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] if latencies else float("nan")
    server_errors = [a for a in answers if a.status >= 500]
    dropped = [a for a in answers if a.status == 0 and not a.oversize]
    dropped_oversize = [a for a in answers if a.status == 0 and a.oversize]
    broken = [a for a in answers if a.problems]
    counted_4xx = sum(1 for a in answers if 400 <= a.status < 500 and a.status != 404)
    growth = (rss_after - rss_before) / rss_before if rss_before else float("nan")

    result.figure("requests", len(answers))
    for code in sorted(statuses):
        result.figure(f"HTTP {code}" if code else "unanswered", statuses[code])
    result.figure("5xx", len(server_errors))
    result.figure("p99 ms", round(p99, 1))
    result.figure("req/s", round(len(answers) / fuzz_s, 1) if fuzz_s else 0.0)
    result.figure("RSS MiB before", round(rss_before / 2**20, 1))
    result.figure("RSS MiB after", round(rss_after / 2**20, 1))
    result.figure("schema bodies drawn", len(schema_bodies))

    kinds = Counter(a.kind.split(":")[0] for a in answers)
    result.check(f"{count:,} requests sent ({kinds['schema']:,} from the OpenAPI schema, "
                 f"{kinds['mutation']:,} mutations, {kinds['nasty']:,} hand-made)",
                 len(answers) == count and kinds["schema"] > 0 and kinds["mutation"] > 0,
                 f"{len(schema_bodies)} schema bodies drawn in {generated_s:.1f} s, sent in {fuzz_s:.1f} s")
    result.check("zero 5xx", not server_errors, _examples(server_errors, "status"))
    result.check("zero unanswered requests (a 413 may close the connection)", not dropped,
                 _examples(dropped, "error") + (f"; {len(dropped_oversize)} over-limit bodies closed before an answer"
                                                if dropped_oversize else ""))
    result.check("every 4xx is JSON with a detail, every 200 a valid slate", not broken, _examples(broken, "problems"))
    result.check("the requests reached both the validation (4xx) and the model (200)",
                 sum(statuses[c] for c in statuses if 400 <= c < 500) > 0 and statuses.get(200, 0) > 0,
                 ", ".join(f"{code or 'none'}: {n}" for code, n in sorted(statuses.items())))
    result.check("still healthy afterwards, on the same worker processes",
                 health_status == 200 and isinstance(health, dict) and health.get("status") == "ok"
                 and valid_status == 200 and workers_before == workers_after,
                 f"/healthz {health_status} {health.get('status') if isinstance(health, dict) else health!r}, "
                 f"/continue {valid_status}, workers {sorted(workers_before)} -> {sorted(workers_after)}")
    result.check(f"resident memory grew < {MAX_RSS_GROWTH:.0%}", growth < MAX_RSS_GROWTH,
                 f"{rss_before / 2**20:.0f} -> {rss_after / 2**20:.0f} MiB ({growth:+.1%})")
    counted = errors_after - errors_before
    result.check("errors_total counted the 4xx answered (404s aside)",
                 counted_4xx <= counted <= counted_4xx + len(dropped_oversize),
                 f"errors_total +{counted:.0f}, 4xx answered (not 404) {counted_4xx}")


def _errors_total(api) -> float:
    return sum(v for k, v in api.metrics().items() if k.startswith("errors_total{") and 'kind="internal"' not in k)


def _worker_pids(api, psutil) -> set[int]:
    try:
        return {p.pid for p in psutil.Process(api.process.pid).children(recursive=True)}
    except psutil.Error:
        return set()


def _examples(answers: list[Answer], what: str) -> str:
    if not answers:
        return "none"
    shown = []
    for a in answers[:EXAMPLES_SHOWN]:
        value = a.status if what == "status" else (a.error if what == "error" else "; ".join(a.problems))
        shown.append(f"{a.kind}: {value}")
    return f"{len(answers)}, e.g. " + " | ".join(shown)
