"""Parsing, node mapping, drain reasons, config and the command runner: no Slurm needed."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from gpuwarden.scheduler_agent.slurm.backend import Entry, format_reason, parse_reason
from gpuwarden.scheduler_agent.slurm.config import parse as parse_config
from gpuwarden.scheduler_agent.slurm.errors import SlurmError, UnknownNode
from gpuwarden.scheduler_agent.slurm.nodemap import NodeMap
from gpuwarden.scheduler_agent.slurm.parse import Node, expand_hostlist, expand_indexes, parse_jobs, parse_nodes
from gpuwarden.scheduler_agent.slurm.runner import Runner

# Slurm 22.05.8's output (scontrol show node -d / show job -d), trimmed.
NODES = """\
NodeName=vm Arch=x86_64 CoresPerSocket=1
   CPUAlloc=2 CPUEfctv=2 CPUTot=2 CPULoad=2.98
   Gres=gpu:8
   GresDrain=N/A
   GresUsed=gpu:4
   NodeAddr=127.0.0.1 NodeHostName=vm Version=22.05.8
   State=ALLOCATED+DRAIN ThreadsPerCore=1 TmpDisk=0 Weight=1 Owner=N/A MCS_label=N/A
   Reason=gpuwarden: ECC_UNCORRECTABLE gpu 3 GPU-abc [root@2026-11-28T18:43:18]

NodeName=gpu02 Arch=x86_64 CoresPerSocket=8
   Gres=gpu:a100:4(S:0-1)
   NodeAddr=10.0.0.12 NodeHostName=gpu02.example.org Version=22.05.8
   State=IDLE ThreadsPerCore=1 TmpDisk=0 Weight=1 Owner=N/A MCS_label=N/A
"""

JOBS = """\
JobId=1 JobName=wrap
   JobState=PENDING Reason=BeginTime Dependency=(null)
   Requeue=1 Restarts=1 BatchFlag=1 Reboot=0 ExitCode=0:0
   NodeList=(null)

JobId=7 JobName=train llm  v2
   JobState=RUNNING Reason=None Dependency=(null)
   Requeue=1 Restarts=0 BatchFlag=1 Reboot=0 ExitCode=0:0
   NodeList=gpu[01-02],vm
   JOB_GRES=gpu:4
     Nodes=gpu[01-02] CPU_IDs=0-3 Mem=0 GRES=gpu:a100:2(IDX:0,2)
     Nodes=vm CPU_IDs=0 Mem=0 GRES=gpu:2(IDX:4-5),mps:0
"""


def test_nodes_parse_state_reason_and_gpus():
    vm, g2 = parse_nodes(NODES)
    assert (vm.name, vm.addr, vm.gpus, vm.drained) == ("vm", "127.0.0.1", 8, True)
    assert vm.reason == "gpuwarden: ECC_UNCORRECTABLE gpu 3 GPU-abc" and vm.reason_user == "root"
    assert (g2.gpus, g2.drained, g2.reason, g2.hostname) == (4, False, "", "gpu02.example.org")


def test_jobs_parse_gres_indexes_per_node():
    pending, running = parse_jobs(JOBS)
    assert (pending.id, pending.state, pending.reason, pending.restarts) == (1, "PENDING", "BeginTime", 1)
    assert pending.gpus == {}
    assert (pending.name, running.name) == ("wrap", "train llm  v2")
    assert running.gpus == {"gpu01": {0, 2}, "gpu02": {0, 2}, "vm": {4, 5}}
    assert running.holds("gpu02", 2) and not running.holds("gpu02", 1)
    assert not running.holds("vm", 3)


def test_a_job_name_cannot_spoof_the_jobs_own_fields():
    """A name is the submitter's text: keys written into it must not replace the real ones (a
    job shown PENDING would escape preemption)."""
    text = JOBS.replace("JobName=train llm  v2", "JobName=x JobState=PENDING Restarts=99 NodeList=(null)")
    running = parse_jobs(text)[1]
    assert running.name == "x JobState=PENDING Restarts=99 NodeList=(null)"
    assert (running.state, running.restarts, running.node_list) == ("RUNNING", 0, "gpu[01-02],vm")
    assert running.holds("gpu01", 0)


def test_hostlists_and_index_lists():
    assert expand_hostlist("gpu[08-10,12],login1") == ["gpu08", "gpu09", "gpu10", "gpu12", "login1"]
    assert expand_indexes("0-2,5") == {0, 1, 2, 5}
    assert expand_indexes("N/A") == set()


def test_reason_round_trip_and_someone_elses_reason():
    entries = [Entry("ECC_UNCORRECTABLE", 3, "GPU-a"), Entry("manual", 5, "GPU-b")]
    text = format_reason(entries)
    assert text == "gpuwarden: ECC_UNCORRECTABLE gpu 3 GPU-a; manual gpu 5 GPU-b"
    assert parse_reason(text) == entries
    assert parse_reason("maintenance: PSU swap") is None


NODE_LIST = [
    Node("gpu01", "IDLE", addr="10.0.0.11", hostname="gpu01.example.org"),
    Node("vm", "IDLE", addr="127.0.0.1", hostname="vm"),
]


@pytest.mark.parametrize("value", ["gpu01", "gpu01:9786", "gpu01.example.org:9786", "10.0.0.11:9786"])
def test_instance_maps_to_the_node_by_name_hostname_or_address(value):
    assert NodeMap().resolve(value, NODE_LIST) == "gpu01"


def test_explicit_map_wins_and_unknown_nodes_say_how_to_fix_it():
    assert NodeMap({"exporter-7:9786": "vm"}).resolve("exporter-7:9786", NODE_LIST) == "vm"
    with pytest.raises(UnknownNode, match=r"instance='ghost:9786'.*gpu01, vm.*slurm.nodes"):
        NodeMap().resolve("ghost:9786", NODE_LIST)
    with pytest.raises(UnknownNode, match="maps 'x' to 'nope'"):
        NodeMap({"x": "nope"}).resolve("x", NODE_LIST)


def test_config_defaults_and_errors_name_the_field():
    cfg = parse_config({})
    assert cfg.scontrol == ("scontrol",) and cfg.attempts == 3 and cfg.start_requeued_now
    with pytest.raises(SlurmError, match=r"slurm\.attempts: 0 is less than the minimum"):
        parse_config({"attempts": 0})
    with pytest.raises(SlurmError, match=r"slurm\.bogus: unknown field \(allowed: attempts, "):
        parse_config({"bogus": 1})


def fake_scontrol(tmp: Path, body: str) -> Path:
    p = tmp / "scontrol"
    p.write_text("#!/bin/sh\n" + f'echo "$*" >> {tmp}/calls\n' + body)
    p.chmod(p.stat().st_mode | stat.S_IXUSR)
    return p


def test_runner_retries_transient_failures_with_backoff(tmp_path):
    # Fails twice as Slurm does when the controller is away, then succeeds.
    script = fake_scontrol(
        tmp_path,
        f"""n=$(wc -l < {tmp_path}/calls)
if [ "$n" -lt 3 ]; then echo "slurm_update error: Unable to contact slurm controller" >&2; exit 1; fi
echo ok""",
    )
    waits: list[float] = []
    r = Runner([str(script)], attempts=3, backoff=0.5, sleep=waits.append).run("requeue", "7")
    assert (r.stdout.strip(), r.attempts, waits) == ("ok", 3, [0.5, 1.0])


def test_runner_does_not_retry_a_refusal_and_names_the_command(tmp_path):
    script = fake_scontrol(tmp_path, 'echo "slurm_update error: Invalid node name specified" >&2; exit 1')
    waits: list[float] = []
    with pytest.raises(
        SlurmError,
        match=r"update NodeName=x State=RESUME: exit 1: "
        r"slurm_update error: Invalid node name",
    ):
        Runner([str(script)], sleep=waits.append).run("update", "NodeName=x", "State=RESUME")
    assert waits == [] and (tmp_path / "calls").read_text().count("\n") == 1


def test_runner_times_out_and_gives_up_after_its_attempts(tmp_path):
    script = fake_scontrol(tmp_path, "sleep 5")
    with pytest.raises(SlurmError, match=r"timed out after 0.2s \(after 2 attempts\)"):
        Runner([str(script)], timeout=0.2, attempts=2, sleep=lambda s: None).run("ping")


def test_runner_reports_a_missing_scontrol(tmp_path):
    with pytest.raises(SlurmError, match="cannot run it.*slurm.scontrol"):
        Runner([str(tmp_path / "nope")]).run("ping")
