"""Registration and champion/challenger promotion with MLflow model-version aliases (no stages).

- Every registered version gets the `challenger` alias when it is registered.
- `production` (Settings.MODEL_ALIAS) moves only through `decide_and_promote`:
  `auto`: the gate compares the version with the current production (gate.py) and promotes it
  only if it is significantly better, or if there is no production yet;
  `never`: the comparison is made and recorded, the alias is left alone;
  `force`: the alias moves without a comparison (a manual override or a rollback to version N).
- The decision, its figures and its reason are tags of the version (`gate_*`), and the caller
  logs them as a run artifact.

Concurrency. Two registrations may run at once (two pipelines, a pipeline and a rollback). The
comparison takes a while, and the production version may change during it; moving the alias
after comparing against a version that is no longer production could put a model that never
passed its gate into production. So the alias only moves under a *promotion lock*, and under the
lock the production version is read again: if it is still the one the challenger was compared
with, the alias moves; if it changed, the lock is released and the challenger is compared with
the new production (up to MAX_ATTEMPTS times). The lock lives in the tracking store itself, so it
holds across processes and machines that share a store: creating a registered model is atomic
(its name is unique in the database, SQLite and PostgreSQL alike), so whoever creates
`<model>.promotion-lock` holds the lock, and deleting it releases it. A lock older than
`stale_after_s` belongs to a crashed holder and is broken. How long a registration waited for the
lock is part of its decision (`gate_lock_wait_s`), so contention shows in the registry.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, RESOURCE_DOES_NOT_EXIST, ErrorCode

# the gate's comparison scores models (torch); this module only moves aliases, and `main`, which
# imports its modes, starts 1.4 s sooner without torch
if TYPE_CHECKING:
    from playlistai.registry.gate import GateComparison

PROMOTE_MODES = ("auto", "force", "never")
CHALLENGER_ALIAS = "challenger"
MAX_ATTEMPTS = 5
LOCK_SUFFIX = ".promotion-lock"
# the version tag that says the decision in a few words (GateDecision.headline); `gate_reason` says it whole
GATE_TAG = "gate"


class PromotionError(RuntimeError):
    """The gate could not reach a decision (lock not acquired, production kept changing)."""


def _error_code(exc: MlflowException) -> str:
    return exc.error_code if isinstance(exc.error_code, str) else ErrorCode.Name(exc.error_code)


def _is(exc: MlflowException, code: int) -> bool:
    return _error_code(exc) == ErrorCode.Name(code)


# -- the lock ------------------------------------------------------------------------------------


class PromotionLock:
    """Mutual exclusion through the tracking store (see the module docstring)."""

    def __init__(
        self,
        client: mlflow.MlflowClient,
        model_name: str,
        timeout_s: float = 300.0,
        stale_after_s: float = 900.0,
        poll_s: float = 0.5,
    ):
        self.client = client
        self.name = model_name + LOCK_SUFFIX
        self.timeout_s = timeout_s
        self.stale_after_s = stale_after_s
        self.poll_s = poll_s
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{time.time_ns()}"
        self.waited_s = 0.0          # from the first try to taking the lock
        self.contended = False       # another holder had it at the first try

    def __enter__(self) -> PromotionLock:
        started = time.monotonic()
        deadline = started + self.timeout_s
        while True:
            try:
                self.client.create_registered_model(
                    self.name,
                    tags={"holder": self.holder},
                    description="held while the production alias of the model moves; deleted right after",
                )
                self.waited_s = time.monotonic() - started
                return self
            except MlflowException as exc:
                if not _is(exc, RESOURCE_ALREADY_EXISTS):
                    raise
            self.contended = True
            self._break_if_stale()
            if time.monotonic() > deadline:
                raise PromotionError(
                    f"could not take the promotion lock {self.name!r} within {self.timeout_s:.0f}s; "
                    "another registration is promoting. If none is, delete that registered model."
                )
            time.sleep(self.poll_s)

    def _break_if_stale(self) -> None:
        try:
            lock = self.client.get_registered_model(self.name)
        except MlflowException:
            return
        age_s = time.time() - lock.creation_timestamp / 1000.0
        if age_s > self.stale_after_s:
            try:
                self.client.delete_registered_model(self.name)
            except MlflowException:
                pass

    def __exit__(self, *exc_info) -> None:
        try:
            lock = self.client.get_registered_model(self.name)
            if lock.tags.get("holder") == self.holder:
                self.client.delete_registered_model(self.name)
        except MlflowException as exc:
            if not _is(exc, RESOURCE_DOES_NOT_EXIST):
                raise


# -- registry reads and writes -------------------------------------------------------------------


def alias_version(client: mlflow.MlflowClient, model_name: str, alias: str) -> str | None:
    try:
        return str(client.get_model_version_by_alias(model_name, alias).version)
    except MlflowException as exc:
        if _is(exc, RESOURCE_DOES_NOT_EXIST) or _is(exc, ErrorCode.Value("INVALID_PARAMETER_VALUE")):
            return None
        raise


def register_version(client: mlflow.MlflowClient, model_name: str, model_uri: str, tags: dict[str, str]):
    """A new version of `model_name` (created if needed) with `tags`, holding the `challenger` alias."""
    try:
        client.create_registered_model(model_name, description="PlayListAI playlist continuation (pyfunc)")
    except MlflowException as exc:
        if not _is(exc, RESOURCE_ALREADY_EXISTS):
            raise
    # mlflow.register_model links a `models:/m-...` URI to its logged model (a tracking server
    # refuses that URI as a plain version source) and waits until the version is READY
    version = mlflow.register_model(model_uri, model_name, tags=tags)
    if version.status != "READY":
        raise PromotionError(f"version {version.version} of {model_name} is {version.status}: {version.status_message}")
    client.set_registered_model_alias(model_name, CHALLENGER_ALIAS, version.version)
    return version


# -- the decision --------------------------------------------------------------------------------


@dataclass(kw_only=True)
class GateDecision:
    mode: str
    version: str
    promoted: bool
    decision: str                       # promoted | rejected | not_promoted | forced | unchanged
    reason: str
    production_before: str | None       # production when the decision was taken
    production_after: str | None
    comparison: dict | None
    attempts: int
    decided_at: str
    lock_wait_s: float = 0.0            # waiting for the promotion lock, all attempts together

    def as_dict(self) -> dict:
        return asdict(self)

    def headline(self) -> str:
        """The decision in a few words, for the registry's versions table, which shows a tag whole
        only while its key and value together stay within 30 characters: the version promoted or
        kept, and the gate metric's difference, this version minus production (the reason has the rest)."""
        before = f"v{self.production_before}" if self.production_before else ""
        diff = f"{self.comparison['mean_diff']:+.4f}" if self.comparison else ""
        if self.decision == "promoted":
            return f"promoted ({diff} vs {before})" if diff else "promoted (first version)"
        if self.decision == "rejected":
            return f"kept {before} ({diff})"
        if self.decision == "not_promoted":
            return f"kept {before} (never, {diff})" if before else "not promoted (never)"
        if self.decision == "forced":
            if not before:
                return "forced (first version)"
            return f"rollback from {before}" if int(self.version) < int(self.production_before) else f"forced over {before}"
        return self.decision

    def version_tags(self) -> dict[str, str]:
        tags = {
            GATE_TAG: self.headline(),
            "gate_decision": self.decision,
            "gate_reason": self.reason,
            "gate_mode": self.mode,
            "gate_compared_with": self.production_before or "none",
            "gate_decided_at": self.decided_at,
            "gate_attempts": str(self.attempts),
            "gate_lock_wait_s": f"{self.lock_wait_s:.3f}",
        }
        for key, value in (self.comparison or {}).items():
            tags[f"gate_{key}"] = f"{value:.6g}" if isinstance(value, float) else str(value)
        return tags


def _describe(cmp: GateComparison, version: str, production: str) -> str:
    verdict = "significantly better" if cmp.challenger_better else "not significantly better"
    return (
        f"v{version} {cmp.metric} {cmp.challenger:.4f} vs production v{production} {cmp.production:.4f}: "
        f"diff {cmp.mean_diff:+.4f}, {cmp.confidence:.0%} CI [{cmp.low:+.4f}, {cmp.high:+.4f}], "
        f"p={cmp.p_value:.3g} over {cmp.n_sessions} sessions / {cmp.n_cases} cases: {verdict}"
    )


def decide_and_promote(
    client: mlflow.MlflowClient,
    model_name: str,
    alias: str,
    version: str,
    mode: str,
    compare: Callable[[str, str], GateComparison],
    lock_timeout_s: float = 300.0,
    selection: str = "",
) -> GateDecision:
    """Run the gate for `version` and move `alias` as `mode` says; tags the version with the result.

    `compare(challenger_version, production_version)` measures the two on the same test cases.
    `selection` says how this model was chosen among others (the pipeline's validation comparison);
    it leads the reason, so that the version's tags say both why it was registered and why the
    alias moved or not.
    """
    decision = _decide_and_promote(client, model_name, alias, version, mode, compare, lock_timeout_s)
    if selection:
        decision.reason = f"{selection}; {decision.reason}"
    _tag(client, model_name, decision)
    return decision


def _decide_and_promote(
    client: mlflow.MlflowClient,
    model_name: str,
    alias: str,
    version: str,
    mode: str,
    compare: Callable[[str, str], GateComparison],
    lock_timeout_s: float,
) -> GateDecision:
    if mode not in PROMOTE_MODES:
        raise ValueError(f"promote must be one of {', '.join(PROMOTE_MODES)}, got {mode!r}")
    version = str(version)
    now = lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())  # noqa: E731

    if mode == "force":
        with PromotionLock(client, model_name, timeout_s=lock_timeout_s) as lock:
            before = alias_version(client, model_name, alias)
            client.set_registered_model_alias(model_name, alias, version)
        what = "rollback" if before is not None and int(version) < int(before) else "manual promotion"
        decision = GateDecision(
            mode=mode, version=version, promoted=True, decision="forced",
            reason=f"promote=force ({what}): {alias} moved from {'v' + before if before else 'nothing'} "
                   f"to v{version} without a comparison",
            production_before=before, production_after=version, comparison=None, attempts=1, decided_at=now(),
            lock_wait_s=lock.waited_s,
        )
        return decision

    waited_s = 0.0
    for attempt in range(1, MAX_ATTEMPTS + 1):
        current = alias_version(client, model_name, alias)
        comparison = None
        if current == version:
            decision = GateDecision(
                mode=mode, version=version, promoted=False, decision="unchanged",
                reason=f"v{version} already is {alias}",
                production_before=current, production_after=current, comparison=None, attempts=attempt,
                decided_at=now(), lock_wait_s=waited_s,
            )
            break
        if current is None:
            better, reason = True, f"there is no {alias} version yet"
        else:
            cmp = compare(version, current)
            comparison = cmp.as_dict()
            better, reason = cmp.challenger_better, _describe(cmp, version, current)
        if mode == "never" or not better:
            decision = GateDecision(
                mode=mode, version=version, promoted=False,
                decision="not_promoted" if mode == "never" else "rejected",
                reason=reason + ("; promote=never" if mode == "never" else ""),
                production_before=current, production_after=current, comparison=comparison, attempts=attempt,
                decided_at=now(), lock_wait_s=waited_s,
            )
            break
        with PromotionLock(client, model_name, timeout_s=lock_timeout_s) as lock:
            waited_s += lock.waited_s
            # the check that makes this safe: production is still what we compared with
            if alias_version(client, model_name, alias) != current:
                continue
            client.set_registered_model_alias(model_name, alias, version)
        decision = GateDecision(
            mode=mode, version=version, promoted=True, decision="promoted", reason=reason,
            production_before=current, production_after=version, comparison=comparison, attempts=attempt,
            decided_at=now(), lock_wait_s=waited_s,
        )
        break
    else:
        raise PromotionError(f"{alias} changed {MAX_ATTEMPTS} times while v{version} was being compared; giving up")
    return decision


def _tag(client: mlflow.MlflowClient, model_name: str, decision: GateDecision) -> None:
    for key, value in decision.version_tags().items():
        client.set_model_version_tag(model_name, decision.version, key, value[:5000])
    client.set_registered_model_tag(model_name, "last_gate", json.dumps(
        {"version": decision.version, "decision": decision.decision, "at": decision.decided_at}
    ))
