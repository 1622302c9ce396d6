"""No secret in the repository: every file git tracks (or would add: untracked and not ignored) is
scanned for credentials.

Two kinds of finding:
- a credential in a known format, wherever it stands: a private key block, an AWS access key id,
  a Google API key, a GitHub, Slack or Stripe token, a JSON Web Token;
- a literal assigned to a secret-looking name (password, secret, token, api_key, ...) or written as
  the password of a URL, when it looks generated: 16+ characters mixing letters and digits with
  high entropy, or 32+ hex digits. Placeholders (`change-me`, `<token>`, `${ADMIN_TOKEN:-}`,
  `$VAR`, `$(openssl rand -hex 32)`, `xxx`, ...), code (`secrets.token_hex(32)`), and short made-up test values
  (`t0ken`) pass; the local development defaults of deploy/docker-compose.yml (`mlflow`, `admin`) too.

The scanner is tested first on planted samples, built at run time so that this file holds none.
"""

from __future__ import annotations

import math
import re
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MAX_FILE_BYTES = 5_000_000

FORMATS = {
    "private key": re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"),
    "AWS access key id": re.compile(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z0-9]{16}\b"),
    "Google API key": re.compile(r"\bAIza[0-9A-Za-z_\-]{35}\b"),
    "Google service account key": re.compile(r'"private_key_id"\s*:\s*"[0-9a-f]{40}"'),
    "GitHub token": re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{40,})\b"),
    "Slack token": re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}\b"),
    "Stripe key": re.compile(r"\b[rs]k_live_[0-9A-Za-z]{20,}\b"),
    "JSON Web Token": re.compile(r"\beyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}"),
}
SECRET_NAME = r"[A-Za-z0-9_.-]*(?:password|passwd|pwd|secret|token|api[_-]?key|apikey|access[_-]?key|private[_-]?key|credentials?)[A-Za-z0-9_.-]*"
ASSIGNMENT = re.compile(
    rf"""(?i)(?P<name>{SECRET_NAME})["']?\s*(?::=|=>|=|:)\s*(?:"(?P<dq>[^"\n]*)"|'(?P<sq>[^'\n]*)'|(?P<bare>[^\s"'#,;)}}\]]+))""")
URL_PASSWORD = re.compile(r"\b[a-z][a-z0-9+.-]*://[^/\s:@'\"]+:(?P<password>[^/\s:@'\"]+)@")
PLACEHOLDER = re.compile(
    r"(?i)^(?:|none|null|true|false|change[-_]?me|changeit|example|dummy|placeholder|redacted|x+|\*+|\.\.\.|"
    r"<[^>]*>|\$\{?[A-Za-z_][A-Za-z0-9_]*(?::?-[^}]*)?\}?|\$\(.*\)|`.*`|\{\{.*\}\}|%\(.*\)s|your[-_].*|.*example.*)$")
EXAMPLE_MARKERS = ("EXAMPLE", "example")
SCANNED_SUFFIXES_FOR_BARE_VALUES = {"", ".env", ".example", ".yml", ".yaml", ".toml", ".ini", ".cfg", ".conf",
                                    ".sh", ".properties", ".json", ".txt", ".md"}


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.what}"


def entropy(text: str) -> float:
    counts = Counter(text)
    return -sum(n / len(text) * math.log2(n / len(text)) for n in counts.values())


def looks_generated(value: str) -> bool:
    """A value no person would type as a placeholder: a random-looking key or password."""
    if PLACEHOLDER.match(value) or any(m in value for m in EXAMPLE_MARKERS):
        return False
    if re.fullmatch(r"[0-9a-fA-F]{32,}", value):
        return True
    classes = sum(bool(re.search(p, value)) for p in (r"[a-z]", r"[A-Z]", r"[0-9]"))
    return len(value) >= 16 and classes >= 2 and re.search(r"[0-9]", value) is not None and entropy(value) >= 3.5


def scan_text(text: str, path: str = "<text>") -> list[Finding]:
    findings = []
    bare_values = Path(path).suffix.lower() in SCANNED_SUFFIXES_FOR_BARE_VALUES or Path(path).name.startswith(
        ("Dockerfile", ".env", "env."))
    for number, line in enumerate(text.splitlines(), 1):
        for what, pattern in FORMATS.items():
            for match in pattern.finditer(line):
                if not any(m in match.group(0) for m in EXAMPLE_MARKERS):
                    findings.append(Finding(path, number, what))
        for match in ASSIGNMENT.finditer(line):
            value = match["dq"] if match["dq"] is not None else match["sq"]
            if value is None:
                if not bare_values:
                    continue                # in code, a bare value is an expression, not a literal
                value = match["bare"]
            if looks_generated(value):
                findings.append(Finding(path, number, f"a generated-looking literal assigned to {match['name']}"))
        for match in URL_PASSWORD.finditer(line):
            if looks_generated(match["password"]):
                findings.append(Finding(path, number, "a generated-looking password in a URL"))
    return findings


def repository_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=REPO, capture_output=True, check=True).stdout
    return [REPO / name for name in out.decode().split("\0") if name]


def scan_repository() -> list[Finding]:
    findings = []
    for path in repository_files():
        if not path.is_file() or path.stat().st_size > MAX_FILE_BYTES:
            continue
        raw = path.read_bytes()
        if b"\0" in raw[:8192]:
            continue                        # binary
        findings.extend(scan_text(raw.decode("utf-8", "replace"), str(path.relative_to(REPO))))
    return findings


# -- the scanner itself, on planted samples ---------------------------------------------------------

def j(*parts: str) -> str:
    """Planted samples are assembled at run time: this file must not hold what it looks for."""
    return "".join(parts)


PLANTED = {
    "private key": ("id_rsa", j("-----BEGIN ", "RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n-----END RSA PRIVATE KEY-----")),
    "openssh key": ("key", j("-----BEGIN ", "OPENSSH PRIVATE KEY-----")),
    "aws key id": ("settings.py", j('AWS_ACCESS_KEY_ID = "', "AKIA", "Q3ZT7WK2M9XPLB4R", '"')),
    "aws secret": (".env", j("AWS_SECRET_ACCESS_KEY=", "wJalrXUtnFEMI/K7MDENG/bPxRfiCY", "9q2Lk3Zz1A")),
    "google api key": ("config.json", j('{"key": "', "AIza", "SyD4x9Q2mZ7rT1vK8pL3nB6wE0yU5iO2aSd", '"}')),
    "service account": ("sa.json", j('"private_key_id": "', "3f9a" * 10, '"')),
    "github token": ("ci.yml", j("token: ", "ghp_", "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8")),
    "slack token": ("notify.py", j('SLACK = "', "xoxb-", "123456789012-abcdefGHIJKL", '"')),
    "stripe key": ("pay.py", j('key = "', "sk_live_", "4eC39HqLyjWDarjtT1zdp7dc", '"')),
    "jwt": ("client.py", j('HEADERS = {"Authorization": "Bearer ', "eyJ", "hbGciOiJIUzI1NiJ9.", "eyJ",
                           "zdWIiOiIxMjM0NTY3ODkwIn0.", "dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U", '"}')),
    "python literal": ("app.py", j('API_KEY = "', "q8X2vL9mZ4rT7wK1pB6n", '"')),
    "yaml hex password": ("values.yaml", j("  password: ", "9c1f4e7a2b8d0f3a6c5e1b9d7f2a4c8e")),
    "env token": ("prod.env", j("ADMIN_TOKEN=", "Zp4kQ9vW2xR7mT1nB8cL5yH3", "")),
    "dict token": ("worker.py", j('{"RAY_AUTH_TOKEN": "', "7d3e9a1f5b2c8e4a6f0d9b3c7e1a5f2d", '"}')),
    "url password": ("compose.yml", j("MLFLOW_BACKEND=postgresql://mlflow:", "Xk9Qw2Lp7Rz4Tm1V", "@db:5432/mlflow")),
}
NOT_SECRETS = {
    "env.example": "# ADMIN_TOKEN=change-me                   # enables POST /admin/reload",
    "docker-compose.yml": "      ADMIN_TOKEN: ${ADMIN_TOKEN:-}\n      POSTGRES_PASSWORD: mlflow\n"
                          "      GF_SECURITY_ADMIN_PASSWORD: admin\n"
                          "      MLFLOW_BACKEND_STORE_URI: postgresql://mlflow:mlflow@postgres:5432/mlflow",
    "README.md": 'kubectl create secret generic x --from-literal=ADMIN_TOKEN="$(openssl rand -hex 32)"',
    "test_scaleout.py": '"RAY_AUTH_TOKEN": secrets.token_hex(32),\ntoken = bearer_token(authorization)',
    "test_contract.py": 'ADMIN_TOKEN = "s3cret-token"\nmake_client(ADMIN_TOKEN="t0ken")\npassword = ""',
    "docs.md": j("AWS_ACCESS_KEY_ID=", "AKIA", "IOSFODNN7", "EXAMPLE\npassword: <your-password>\ntoken: xxxxxxxx"),
    "manifest.json": '"sha256": "9c1f4e7a2b8d0f3a6c5e1b9d7f2a4c8e9c1f4e7a2b8d0f3a6c5e1b9d7f2a4c8e"',
    "config.py": 'ADMIN_TOKEN: SecretStr | None = Field(None, description="bearer token of /admin/reload")',
}


@pytest.mark.parametrize("name", sorted(PLANTED))
def test_the_scanner_finds_a_planted_secret(name):
    path, text = PLANTED[name]
    assert scan_text(text, path), f"the scanner missed the planted {name}"


@pytest.mark.parametrize("path", sorted(NOT_SECRETS))
def test_the_scanner_lets_placeholders_and_code_pass(path):
    assert scan_text(NOT_SECRETS[path], path) == []


def test_the_scanner_reads_every_file_git_would_commit(tmp_path, monkeypatch):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / ".gitignore").write_text("ignored.env\n")
    (tmp_path / "tracked.py").write_text(PLANTED["python literal"][1])
    (tmp_path / "untracked.yaml").write_text(PLANTED["yaml hex password"][1])
    (tmp_path / "ignored.env").write_text(PLANTED["env token"][1])
    (tmp_path / "blob.bin").write_bytes(b"\0" + PLANTED["private key"][1].encode())
    subprocess.run(["git", "-C", str(tmp_path), "add", "tracked.py"], check=True)
    monkeypatch.setitem(globals(), "REPO", tmp_path)
    assert sorted(f.path for f in scan_repository()) == ["tracked.py", "untracked.yaml"]


# -- the repository ---------------------------------------------------------------------------------

def test_no_secret_in_the_repository():
    files = repository_files()
    assert len(files) > 50, "git ls-files found (almost) nothing: is this a checkout?"
    findings = scan_repository()
    assert not findings, "secrets in the repository:\n" + "\n".join(map(str, findings))
