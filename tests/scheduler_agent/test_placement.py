"""Placement rules: unhealthy GPUs skipped, best fit, risk, priorities, preemption, concurrency."""

from __future__ import annotations

import random
import threading

from hypothesis import given, settings
from hypothesis import strategies as st

from gpuwarden.scheduler_agent.placement import FreeIndex, NaiveGpu, naive_place


def test_best_fit_picks_the_node_with_the_fewest_sufficient_free_gpus(make_scheduler) -> None:
    s = make_scheduler({"big": 8, "mid": 4, "small": 2})
    j = s.submit("two", 2)
    s.schedule_once()
    assert s.get_job(j["id"])["node"] == "small"
    j3 = s.submit("three", 3)
    s.schedule_once()
    assert s.get_job(j3["id"])["node"] == "mid"  # keeps the 8-GPU node whole
    j8 = s.submit("eight", 8)
    s.schedule_once()
    assert s.get_job(j8["id"])["node"] == "big"
    assert len(set(s.get_job(j8["id"])["gpu_uuids"])) == 8


def test_all_gpus_of_a_job_are_on_one_node(make_scheduler) -> None:
    s = make_scheduler({"a": 2, "b": 3})
    s.submit("one", 1)
    s.schedule_once()  # best fit: a 1-GPU job lands on a, not b
    s.submit("two", 2)
    s.schedule_once()  # b has 3 free: a's single free GPU is not enough
    j = s.submit("three", 3)
    assert s.schedule_once() == []  # 2 free GPUs left, on two nodes: no placement
    assert s.get_job(j["id"])["state"] == "pending"
    assert s.get_job(2)["node"] == "b" and s.get_job(1)["node"] == "a"


def test_quarantined_lost_and_critical_alert_gpus_are_skipped(make_scheduler) -> None:
    s = make_scheduler({"n": 4})
    s.quarantine("GPU-n-0", "ecc", "test")
    s.mark_lost("GPU-n-1", "fell off the bus")
    s.set_alert("GPU-n-2", "POWER_CRITICAL", "critical", True)
    s.set_alert("GPU-n-3", "THERMAL_WARNING", "warning", True)  # warning does not exclude
    jobs = [s.submit(f"j{i}", 1) for i in range(2)]
    s.schedule_once()
    got = [s.get_job(j["id"]) for j in jobs]
    assert got[0]["gpu_uuids"] == ["GPU-n-3"]
    assert got[1]["state"] == "pending"
    s.set_alert("GPU-n-2", "POWER_CRITICAL", "critical", False)
    s.schedule_once()
    assert s.get_job(jobs[1]["id"])["gpu_uuids"] == ["GPU-n-2"]
    states = {g["uuid"]: g["state"] for g in s.list_gpus()}
    assert states == {"GPU-n-0": "quarantined", "GPU-n-1": "lost", "GPU-n-2": "healthy", "GPU-n-3": "healthy"}


def test_release_makes_a_gpu_placeable_again(make_scheduler) -> None:
    s = make_scheduler({"n": 1})
    s.quarantine("GPU-n-0", "ecc", "oncall")
    j = s.submit("j", 1)
    s.schedule_once()
    assert s.get_job(j["id"])["state"] == "pending"
    s.release("GPU-n-0", "oncall")
    s.schedule_once()
    assert s.get_job(j["id"])["state"] == "running"


def test_risk_hook_prefers_low_risk_gpus(make_scheduler) -> None:
    s = make_scheduler({"a": 2, "b": 2})
    s.risk = lambda uuid: {"GPU-a-0": 0.9, "GPU-a-1": 0.8}.get(uuid, 0.0)
    j = s.submit("j", 2)
    s.schedule_once()
    assert s.get_job(j["id"])["node"] == "b"
    s2 = make_scheduler({"a": 4})
    s2.risk = lambda uuid: 0.9 if uuid == "GPU-a-0" else 0.1
    j = s2.submit("j", 3)
    s2.schedule_once()
    assert s2.get_job(j["id"])["gpu_uuids"] == ["GPU-a-1", "GPU-a-2", "GPU-a-3"]


def test_priority_then_submission_order(make_scheduler) -> None:
    s = make_scheduler({"n": 1})
    low = s.submit("low", 1, priority=0)
    first = s.submit("high-first", 1, priority=5)
    second = s.submit("high-second", 1, priority=5)
    order = []
    for _ in range(3):
        s.schedule_once()
        running = [j for j in s.list_jobs(state="running")]
        assert len(running) == 1
        order.append(running[0]["id"])
        s.cancel(running[0]["id"])
    assert order == [first["id"], second["id"], low["id"]]


def test_preempted_job_goes_to_the_head_of_its_priority(make_scheduler) -> None:
    s = make_scheduler({"n": 1})
    a = s.submit("a", 1, priority=1)
    s.schedule_once()
    b = s.submit("b", 1, priority=1)
    s.submit("c", 1, priority=0)
    assert s.preempt_gpu("GPU-n-0", "POWER_CRITICAL") == [a["id"]]
    job = s.get_job(a["id"])
    assert job["state"] == "pending" and job["preemptions"] == 1 and job["gpu_uuids"] == []
    s.schedule_once()
    assert s.get_job(a["id"])["state"] == "running"  # ahead of b, submitted later
    assert s.get_job(b["id"])["state"] == "pending"
    assert s.stats is not None


def test_too_many_preemptions_fail_the_job_with_a_reason(make_scheduler) -> None:
    s = make_scheduler({"n": 1}, max_preemptions=2)
    j = s.submit("j", 1)
    s.schedule_once()
    assert s.preempt_gpu("GPU-n-0", "first") == [j["id"]]
    s.schedule_once()
    assert s.preempt_gpu("GPU-n-0", "second") == [j["id"]]
    got = s.get_job(j["id"])
    assert got["state"] == "failed"
    assert "preempted 2 times" in got["reason"] and "max_preemptions=2" in got["reason"]
    assert s.get_gpu("GPU-n-0")["job_id"] is None


def test_quarantine_preempts_the_gpus_job(make_scheduler) -> None:
    s = make_scheduler({"n": 2})
    j = s.submit("j", 2)
    s.schedule_once()
    out = s.quarantine("GPU-n-1", "ECC_UNCORRECTABLE", "remediation")
    assert out["preempted"] == [j["id"]] and out["state"] == "quarantined"
    assert s.get_job(j["id"])["state"] == "pending"
    assert s.schedule_once() == []  # one healthy GPU left, the job needs two


def test_concurrent_submits_never_share_a_gpu(make_scheduler) -> None:
    s = make_scheduler({f"n{i}": 8 for i in range(4)})
    s.start()
    rng = random.Random(7)
    sizes = [rng.randint(1, 4) for _ in range(64)]

    def worker(chunk: list[int]) -> None:
        for k in chunk:
            s.submit("c", k)

    threads = [threading.Thread(target=worker, args=(sizes[i::8],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    s.schedule_once()
    running = s.list_jobs(state="running", limit=1000)
    held = [u for j in running for u in j["gpu_uuids"]]
    assert len(held) == len(set(held))
    assert sum(j["gpus"] for j in running) == len(held) and len(held) > 24
    for j in running:
        assert {u.split("-")[1] for u in j["gpu_uuids"]} == {j["node"]}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 15), st.integers(0, 7), st.booleans()), max_size=80), st.integers(1, 8))
def test_index_agrees_with_the_naive_scan(ops, n) -> None:
    gpus = [NaiveGpu(f"n{i}", k, f"u{i}-{k}") for i in range(16) for k in range(8)]
    by_uuid = {g.uuid: g for g in gpus}
    idx = FreeIndex()
    for g in gpus:
        idx.add(g.node, g.uuid, g.index)
    for node, k, busy in ops:
        g = by_uuid[f"u{node}-{k}"]
        g.allocated = busy
        if busy:
            idx.remove(g.uuid)
        else:
            idx.add(g.node, g.uuid, g.index)
    fast, slow = idx.place(n), naive_place(gpus, n)
    assert (fast is None) == (slow is None)
    if fast is not None:
        free = lambda node: sum(1 for g in gpus if g.node == node and not g.allocated)  # noqa: E731
        assert free(fast.node) == free(slow.node) and len(fast.uuids) == n
        assert all(not by_uuid[u].allocated and by_uuid[u].node == fast.node for u in fast.uuids)
