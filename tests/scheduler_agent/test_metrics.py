"""The agent's per-GPU series: gpu_state and gpu_allocation_info carry the GPU's Prometheus
instance (the exporter's target, which a static inventory may name otherwise) and its uuid."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest

from gpuwarden.scheduler_agent import config
from gpuwarden.scheduler_agent.inventory import static_specs
from gpuwarden.scheduler_agent.metrics import SchedulerCollector
from gpuwarden.scheduler_agent.scheduler import Allocation, Scheduler


def series(s: Scheduler, name: str) -> dict[frozenset[tuple[str, str]], float]:
    """``name``'s samples from a fresh registry: {frozenset(labels): value}."""
    reg = CollectorRegistry()
    reg.register(SchedulerCollector(s))
    out: dict[frozenset[tuple[str, str]], float] = {}
    for fam in reg.collect():
        for sample in fam.samples:
            if sample.name == name:
                out[frozenset(sample.labels.items())] = sample.value
    return out


def labels(**kw: str) -> frozenset[tuple[str, str]]:
    return frozenset(kw.items())


STATIC = [
    {"name": "node-a", "instance": "10.0.0.5:9835", "gpus": [{"index": 0, "uuid": "GPU-aaa"}]},
    {"name": "node-b", "gpus": [{"index": 0, "uuid": "GPU-bbb"}]},
]


def test_gpu_state_carries_the_static_inventorys_instance_or_the_node_name(make_scheduler) -> None:
    s = make_scheduler()
    s.sync_inventory(static_specs(STATIC))
    states = series(s, "gpu_state")
    a = dict(instance="10.0.0.5:9835", node="node-a", gpu="0", uuid="GPU-aaa")
    b = dict(instance="node-b", node="node-b", gpu="0", uuid="GPU-bbb")
    assert states[labels(**a, state="healthy")] == 1.0
    assert states[labels(**a, state="lost")] == 0.0
    assert states[labels(**b, state="healthy")] == 1.0
    assert len(states) == 2 * 5
    assert s.get_gpu("GPU-aaa")["instance"] == "10.0.0.5:9835"


def test_the_instance_survives_a_restart_and_follows_the_inventory(make_scheduler, tmp_path) -> None:
    db = tmp_path / "agent.db"
    s = make_scheduler(db_path=db)
    s.sync_inventory(static_specs(STATIC))
    s.close()
    s.db.close()
    again = make_scheduler(db_path=db)
    assert again.get_gpu("GPU-aaa")["instance"] == "10.0.0.5:9835"
    moved = [dict(STATIC[0], instance="10.0.0.9:9835"), STATIC[1]]
    again.sync_inventory(static_specs(moved))
    assert again.get_gpu("GPU-aaa")["instance"] == "10.0.0.9:9835"
    assert labels(instance="10.0.0.9:9835", node="node-a", gpu="0", uuid="GPU-aaa", state="healthy") in series(
        again, "gpu_state"
    )


def test_allocation_info_names_each_embedded_jobs_gpus_until_it_ends(make_scheduler) -> None:
    s = make_scheduler({"n0": 2, "n1": 4})
    assert series(s, "gpu_allocation_info") == {}
    job = s.submit("train-resnet", 3)  # no command: a tracking job, placed and held
    s.schedule_once()
    held = s.get_job(job["id"])
    assert held["state"] == "running"
    got = series(s, "gpu_allocation_info")
    want = {
        labels(instance="n1", gpu=str(i), uuid=u, job_id=str(job["id"]), job_name="train-resnet"): 1.0
        for i, u in zip(held["gpu_indexes"], held["gpu_uuids"], strict=True)
    }
    assert got == want and len(got) == 3
    s.cancel(job["id"])
    assert series(s, "gpu_allocation_info") == {}


def test_allocation_sources_join_and_a_failing_one_drops_only_its_own(make_scheduler, caplog) -> None:
    s = make_scheduler({"n0": 1})
    s.add_allocation_source(lambda: [Allocation("10.0.0.5:9835", 3, "GPU-x", "41", "slurm-job")])

    def broken() -> list[Allocation]:
        raise RuntimeError("scontrol: timed out")

    s.add_allocation_source(broken)
    with caplog.at_level(logging.WARNING):
        got = series(s, "gpu_allocation_info")
    assert got == {labels(instance="10.0.0.5:9835", gpu="3", uuid="GPU-x", job_id="41", job_name="slurm-job"): 1.0}
    assert any("allocation source failed" in r.getMessage() for r in caplog.records)
    assert series(s, "cluster_gpus") == {frozenset(): 1.0}  # the rest of the scrape is intact


def test_two_jobs_on_one_gpu_are_two_series_and_a_repeat_is_one(make_scheduler) -> None:
    s = make_scheduler()
    a = Allocation("h:9835", 0, "GPU-s", "1", "a")
    s.add_allocation_source(lambda: [a, a, a._replace(job_id="2", job_name="b")])
    assert len(series(s, "gpu_allocation_info")) == 2


def test_a_job_name_is_a_bounded_label_without_markup_or_control_characters(make_scheduler) -> None:
    """A Slurm job's name is its submitter's text; it reaches Slack through running_job."""
    s = make_scheduler()
    name = "<!channel> train\n&" + "x" * 300
    s.add_allocation_source(lambda: [Allocation("h:9835", 0, "GPU-s", "1", name)])
    [got] = series(s, "gpu_allocation_info")
    job_name = dict(got)["job_name"]
    assert job_name == ("!channel train" + "x" * 300)[:128]


def test_exposition_names_gpu_allocation_info_once(make_scheduler) -> None:
    s = make_scheduler({"n0": 1})
    s.submit("j", 1)
    s.schedule_once()
    reg = CollectorRegistry()
    reg.register(SchedulerCollector(s))
    text = generate_latest(reg).decode()
    assert text.count("# TYPE gpu_allocation_info gauge") == 1
    assert 'gpu_allocation_info{gpu="0",instance="n0",job_id="1",job_name="j",uuid="GPU-n0-0"} 1.0' in text


@pytest.mark.parametrize("instance", ['""', "7"])
def test_the_config_refuses_an_empty_or_non_string_instance(instance, tmp_path) -> None:
    path = tmp_path / "agent.yml"
    path.write_text(
        f"web: {{token_file: t}}\ninventory:\n  nodes:\n    - name: a\n      instance: {instance}\n      count: 1\n"
    )
    with pytest.raises(config.ConfigError, match=r"agent.yml:5: inventory.nodes\[0\].instance"):
        config.load(path)


def test_the_config_takes_a_nodes_instance(tmp_path) -> None:
    (tmp_path / "t").write_text("secret-token-0123456789abcdef\n")
    path = tmp_path / "agent.yml"
    path.write_text(
        "web: {token_file: t}\ninventory:\n  nodes:\n    - name: a\n      instance: 10.0.0.5:9835\n      count: 1\n"
    )
    cfg = config.load(path)
    assert [s.instance for s in static_specs(cfg.inventory["nodes"])] == ["10.0.0.5:9835"]
