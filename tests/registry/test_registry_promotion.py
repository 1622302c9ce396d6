"""Alias moves under concurrency: the gate never leaves production on a version that lost.

These use a registered model of their own and stand-in comparisons, so they need no trained
model: what they test is the decision protocol and the lock in the tracking store.
"""

from __future__ import annotations

import threading
import uuid

import mlflow
import pytest

from playlistai.registry import promotion
from playlistai.registry.gate import GateComparison


def comparison(diff: float) -> GateComparison:
    return GateComparison("test_ndcg_at_10", 0.2 + diff, 0.2, diff, diff - 0.01, diff + 0.01, 0.01, 0.95,
                          100, 10, True)


@pytest.fixture
def registry():
    """(client, model name, [versions 1..3]) with placeholder sources."""
    client = mlflow.MlflowClient()
    name = f"gate-probe-{uuid.uuid4().hex[:8]}"
    with mlflow.start_run(run_name="gate-probe") as run:
        mlflow.log_text("placeholder", "model/MLmodel")
    client.create_registered_model(name)
    versions = [client.create_model_version(name, f"runs:/{run.info.run_id}/model", run.info.run_id).version
                for _ in range(3)]
    yield client, name, [str(v) for v in versions]
    client.delete_registered_model(name)


def test_registry_gate_recompares_when_production_moves_during_the_comparison(registry):
    client, name, (v1, v2, v3) = registry
    client.set_registered_model_alias(name, "production", v1)
    calls = []

    def compare(challenger, current):
        calls.append((challenger, current))
        if len(calls) == 1:
            # another registration promotes v2 while v3 is being compared with v1
            client.set_registered_model_alias(name, "production", v2)
            return comparison(+0.05)          # v3 beats v1 ...
        return comparison(-0.02)              # ... but not v2

    decision = promotion.decide_and_promote(client, name, "production", v3, "auto", compare)
    assert calls == [(v3, v1), (v3, v2)]
    assert decision.decision == "rejected" and decision.attempts == 2
    assert str(client.get_model_version_by_alias(name, "production").version) == v2
    assert client.get_model_version(name, v3).tags["gate_compared_with"] == v2


def test_registry_concurrent_gates_serialize_on_the_lock(registry):
    """Two challengers that both beat v1, decided at once: each alias move is checked under the lock."""
    client, name, (v1, v2, v3) = registry
    client.set_registered_model_alias(name, "production", v1)
    strength = {v1: 0.0, v2: 0.1, v3: 0.2}
    barrier = threading.Barrier(2)

    def compare(challenger, current):
        if current == v1:
            barrier.wait(timeout=30)          # both compare against v1 at the same time
        return comparison(strength[challenger] - strength[current])

    results = {}

    def gate(version):
        results[version] = promotion.decide_and_promote(
            mlflow.MlflowClient(), name, "production", version, "auto", compare)

    threads = [threading.Thread(target=gate, args=(v,)) for v in (v2, v3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    # whatever the interleaving, the final production is the strongest, and every promotion was
    # decided against the version it replaced
    assert str(client.get_model_version_by_alias(name, "production").version) == v3
    for version, decision in results.items():
        if decision.promoted:
            assert strength[version] > strength[decision.production_before]


def test_registry_lock_excludes_and_stale_lock_is_broken(registry):
    client, name, _ = registry
    with promotion.PromotionLock(client, name, timeout_s=5):
        with pytest.raises(promotion.PromotionError, match="promotion lock"):
            with promotion.PromotionLock(client, name, timeout_s=0.5, poll_s=0.1):
                pass
    # a crashed holder: the lock model is left behind, and is broken once it is stale
    client.create_registered_model(name + promotion.LOCK_SUFFIX, tags={"holder": "crashed"})
    with promotion.PromotionLock(client, name, timeout_s=5, stale_after_s=0.0, poll_s=0.1):
        pass
    names = {m.name for m in client.search_registered_models()}
    assert name + promotion.LOCK_SUFFIX not in names


def test_registry_force_moves_alias_and_says_rollback(registry):
    client, name, (v1, v2, _) = registry
    client.set_registered_model_alias(name, "production", v2)
    decision = promotion.decide_and_promote(client, name, "production", v1, "force",
                                            lambda *a: pytest.fail("force does not compare"))
    assert decision.decision == "forced" and "rollback" in decision.reason
    assert str(client.get_model_version_by_alias(name, "production").version) == v1
    assert client.get_model_version(name, v1).tags[promotion.GATE_TAG] == f"rollback from v{v2}"


def test_registry_reason_begins_with_how_the_model_was_chosen(registry):
    client, name, (v1, v2, _) = registry
    client.set_registered_model_alias(name, "production", v1)
    chosen = "chosen on validation: sasrec vs gru4rec nDCG@10 +0.0040 [-0.0010, +0.0090], p=0.12, not significant"
    decision = promotion.decide_and_promote(client, name, "production", v2, "auto", lambda *a: comparison(-0.02),
                                            selection=chosen)
    assert decision.decision == "rejected"
    assert decision.reason.startswith(chosen + "; v" + v2) and "not significantly better" in decision.reason
    assert client.get_model_version(name, v2).tags["gate_reason"] == decision.reason


@pytest.mark.parametrize("decision, mode, version, before, diff, headline", [
    ("promoted", "auto", "12", "11", 0.0202, "promoted (+0.0202 vs v11)"),
    ("promoted", "auto", "1", None, None, "promoted (first version)"),
    ("rejected", "auto", "123", "122", -0.1234, "kept v122 (-0.1234)"),
    ("not_promoted", "never", "123", "122", 0.0010, "kept v122 (never, +0.0010)"),
    ("not_promoted", "never", "1", None, None, "not promoted (never)"),
    ("forced", "force", "9", "10", None, "rollback from v10"),
    ("forced", "force", "11", "10", None, "forced over v10"),
    ("forced", "force", "1", None, None, "forced (first version)"),
    ("unchanged", "auto", "3", "3", None, "unchanged"),
])
def test_the_gate_tag_says_the_decision_in_a_few_words(decision, mode, version, before, diff, headline):
    """`gate` fits the registry's versions table, which cuts a tag whose key and value pass 30 characters."""
    gate = promotion.GateDecision(
        mode=mode, version=version, promoted=decision in ("promoted", "forced"), decision=decision,
        reason="the whole reason", production_before=before, production_after=None,
        comparison=None if diff is None else comparison(diff).as_dict(),
        attempts=1, decided_at="2026-01-01T00:00:00Z")
    tags = gate.version_tags()
    assert tags[promotion.GATE_TAG] == headline and tags["gate_reason"] == "the whole reason"
    assert len(promotion.GATE_TAG) + len(headline) <= 30


def test_registry_bad_promote_mode(registry):
    client, name, (v1, *_) = registry
    with pytest.raises(ValueError, match="promote must be one of"):
        promotion.decide_and_promote(client, name, "production", v1, "sometimes", lambda *a: None)


def test_registry_time_waited_for_the_lock_is_recorded(registry):
    """A promotion that finds the lock taken waits for it, and says how long in its decision and tags."""
    client, name, (v1, v2, _) = registry
    client.set_registered_model_alias(name, "production", v1)
    results = {}
    held = threading.Event()

    def gate():
        held.wait(timeout=30)
        results["decision"] = promotion.decide_and_promote(
            mlflow.MlflowClient(), name, "production", v2, "auto", lambda *a: comparison(+0.05))

    thread = threading.Thread(target=gate)
    thread.start()
    with promotion.PromotionLock(client, name, timeout_s=5) as lock:
        held.set()
        threading.Event().wait(1.5)               # another registration holds the lock meanwhile
    assert lock.waited_s < 1.0 and not lock.contended
    thread.join(timeout=60)
    decision = results["decision"]
    assert decision.promoted and decision.lock_wait_s >= 1.0
    tags = client.get_model_version(name, v2).tags
    assert float(tags["gate_lock_wait_s"]) >= 1.0 and tags["gate_attempts"] == "1"
    assert tags[promotion.GATE_TAG] == f"promoted (+0.0500 vs v{v1})"
    assert name + promotion.LOCK_SUFFIX not in {m.name for m in client.search_registered_models()}
