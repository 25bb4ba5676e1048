"""Property tests: random DAGs, random completion orders and failures."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent_operator.api import StepPhase
from agent_operator.core.decide import RunState, StartStep

from .sim import World, make_task


@st.composite
def dags(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Steps whose dependencies point only to earlier steps (so always acyclic)."""
    size = draw(st.integers(min_value=1, max_value=8))
    steps = []
    for index in range(size):
        deps = draw(st.sets(st.integers(min_value=0, max_value=index - 1))) if index else set()
        implicit = index > 0 and draw(st.booleans()) and not deps
        step: dict[str, Any] = {
            "id": f"s{index}",
            "tool": "noop",
            "retries": draw(st.integers(0, 2)),
        }
        if not implicit:
            step["dependsOn"] = [f"s{d}" for d in sorted(deps)]
        steps.append(step)
    return steps


def run_to_end(
    data: st.DataObject, steps: list[dict[str, Any]], may_fail: bool, limits: dict[str, Any]
) -> World:
    w = World(make_task({"steps": steps, "limits": {"backoffSeconds": 1, **limits}}))
    deps = {s["id"]: s.get("dependsOn") for s in steps}
    for index, step in enumerate(steps):
        if deps[step["id"]] is None:
            deps[step["id"]] = [steps[index - 1]["id"]] if index else []
    for _ in range(200):
        decision = w.step()
        for action in decision.actions:
            if isinstance(action, StartStep):
                for dep in deps[action.step_id] or []:
                    assert any(
                        r.step_id == dep and r.state == RunState.succeeded for r in w.runs.values()
                    ), f"{action.step_id} started before {dep} succeeded"
        if decision.status.phase.terminal:
            return w
        running = w.running()
        if running:
            run = data.draw(st.sampled_from(running))
            ok = data.draw(st.booleans()) if may_fail else True
            w.finish(run.step_id, ok=ok, attempt=run.attempt, outputs={"by": run.step_id})
        else:
            assert decision.requeue_at is not None, "stuck: nothing running and no wake-up"
            w.now = decision.requeue_at
    raise AssertionError("did not reach a terminal phase in 200 decisions")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    dags(), st.data(), st.booleans(), st.sampled_from([{}, {"maxParallel": 1}, {"maxParallel": 2}])
)
def test_every_run_respects_dependencies_runs_nothing_twice_and_ends(
    steps: list[dict[str, Any]], data: st.DataObject, may_fail: bool, limits: dict[str, Any]
) -> None:
    w = run_to_end(data, steps, may_fail, limits)
    status = w.task.status
    assert status.phase.terminal
    if not may_fail:
        assert status.phase.value == "Succeeded"
        assert sorted(a.step_id for a in w.started) == sorted(s["id"] for s in steps)
    for step in steps:
        attempts = [a.attempt for a in w.started if a.step_id == step["id"]]
        assert attempts == list(range(1, len(attempts) + 1))
        assert len(attempts) <= step["retries"] + 1
    assert not any(s.phase == StepPhase.running for s in status.steps)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=3),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=2), inner, max_size=3)
    ),
    max_leaves=8,
)
documents = st.dictionaries(st.text(max_size=2), json_values, max_size=4)


def apply_merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 as an API server applies it."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = apply_merge_patch(result.get(key), value)
    return result


def without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    return value


@given(documents, documents)
def test_a_merge_patch_turns_the_old_status_into_the_new(
    old: dict[str, Any], new: dict[str, Any]
) -> None:
    from agent_operator.core.patch import merge_patch

    new = without_nulls(new)  # statuses are written without nulls
    assert apply_merge_patch(without_nulls(old), merge_patch(without_nulls(old), new)) == new


@given(json_values, json_values)
def test_a_json_patch_turns_the_old_document_into_the_new(old: Any, new: Any) -> None:
    import copy

    import jsonpatch  # an independent RFC 6902 implementation (Kopf depends on it)

    from agent_operator.core.patch import apply_json_patch, json_patch

    ops = json_patch(old, new)
    assert jsonpatch.apply_patch(old, ops) == new
    assert apply_json_patch(copy.deepcopy(old), ops) == new
    assert json_patch(new, new) == []
