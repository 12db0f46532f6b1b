"""A throwaway Slurm cluster on this host: munged, slurmctld and slurmd in one temporary folder.

Eight GPUs are declared in gres.conf over fake character devices (``mknod nvidiaN c 195 N``):
slurmd drops GPUs without ``File=``, and it checks that the files are devices. Nothing here
touches a system Slurm: every path (config, state, spool, munge socket, logs) is in the folder,
every client command gets ``SLURM_CONF`` pointing at our config, and every daemon we start is
stopped by its pid.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from gpuwarden.procs import Proc, free_ports

GPUS = 8
DAEMONS = ("munged", "slurmctld", "slurmd")


class SlurmCluster:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.node = socket.gethostname().split(".")[0]
        self.conf = root / "etc" / "slurm.conf"
        self.socket = root / "munge" / "munge.socket"
        self.jobs_dir = root / "jobs"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.procs: dict[str, Proc] = {}

    # -- set-up ---------------------------------------------------------------------------
    def write(self) -> None:
        r = self.root
        for d in ("etc", "munge", "state", "spool", "log", "dev", "jobs"):
            (r / d).mkdir(parents=True, exist_ok=True)
        os.chmod(r / "munge", 0o700)
        key = r / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        for i in range(GPUS):
            dev = r / "dev" / f"nvidia{i}"
            if not dev.exists():
                os.mknod(dev, 0o666 | 0o020000, os.makedev(195, i))  # S_IFCHR
        ctld, slurmd = free_ports(2)
        self.conf.write_text(f"""\
# Written by tests/slurm/cluster.py for one test session.
ClusterName=gpuwarden-test
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={ctld}
SlurmdPort={slurmd}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.socket}
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu
JobRequeue=1
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_min_interval=0,bf_interval=1
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
SlurmdParameters=config_overrides
KillWait=1
MinJobAge=300
NodeName={self.node} NodeAddr=127.0.0.1 CPUs=16 RealMemory=100 Gres=gpu:{GPUS} State=UNKNOWN
PartitionName=gpu Nodes={self.node} Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
""")
        (r / "etc" / "gres.conf").write_text(f"Name=gpu File={r}/dev/nvidia[0-{GPUS - 1}]\n")

    def _spawn(self, name: str, argv: list[str]) -> None:
        self.procs[name] = Proc(argv, self.root / "log" / f"{name}.out", env=self.env, name=name)

    def start(self, timeout: float = 60.0) -> None:
        self.write()
        r = self.root
        self._spawn(
            "munged",
            [
                "munged",
                "-F",
                "--force",
                f"--socket={self.socket}",
                f"--key-file={r}/munge/munge.key",
                f"--pid-file={r}/munge/munged.pid",
                f"--log-file={r}/log/munged.log",
                f"--seed-file={r}/munge/munged.seed",
            ],
        )
        self._wait(lambda: self.socket.exists(), 10, "munged's socket")
        self._spawn("slurmctld", ["slurmctld", "-D", "-i", "-f", str(self.conf)])
        self._wait(lambda: self.scontrol("ping").returncode == 0, timeout, "slurmctld to answer")
        self._spawn("slurmd", ["slurmd", "-D", "-f", str(self.conf)])
        self._wait(
            lambda: re.search(r"State=IDLE\b", self.scontrol("show", "node", self.node).stdout),
            timeout,
            f"node {self.node} to be IDLE",
        )

    def _wait(self, cond, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, p in self.procs.items():
                if not p.alive():
                    raise RuntimeError(f"{name} exited ({p.returncode}) while waiting for {what}: {self.logs()}")
            if cond():
                return
            time.sleep(0.2)
        raise RuntimeError(f"timed out after {timeout}s waiting for {what}: {self.logs()}")

    def logs(self) -> str:
        out = []
        for f in sorted((self.root / "log").glob("*")):
            text = f.read_text(errors="replace")
            out.append(f"--- {f.name}\n{text[-3000:]}")
        return "\n".join(out)

    # -- use ------------------------------------------------------------------------------
    def run(self, *argv: str, check: bool = False) -> subprocess.CompletedProcess:
        return subprocess.run(list(argv), env=self.env, capture_output=True, text=True, timeout=30, check=check)

    def scontrol(self, *args: str) -> subprocess.CompletedProcess:
        return self.run("scontrol", *args)

    def sbatch(self, gpus: int = 1, seconds: int = 600, *extra: str) -> int:
        out = self.run(
            "sbatch",
            "--parsable",
            f"--gres=gpu:{gpus}",
            "--requeue",
            f"--output={self.jobs_dir}/%j.out",
            f"--chdir={self.jobs_dir}",
            *extra,
            "--wrap",
            f"sleep {seconds}",
            check=True,
        ).stdout
        return int(out.strip().split(";")[0])

    def reset(self) -> None:
        """No jobs, node resumed: each test starts from an idle node."""
        self.run("scancel", "--quiet", "--partition=gpu")
        self.scontrol("update", f"NodeName={self.node}", "State=RESUME")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if not self.run("squeue", "--noheader").stdout.strip() and re.search(
                r"State=IDLE\s", self.scontrol("show", "node", self.node).stdout
            ):
                return
            time.sleep(0.2)
        raise RuntimeError(f"cluster did not return to idle: {self.run('squeue').stdout}")

    def node_info(self) -> dict[str, str]:
        text = self.scontrol("show", "node", "-d", self.node).stdout
        info = dict(re.findall(r"(\w+)=(\S*)", text))
        m = re.search(r"Reason=(.*?)(?: \[[^\]]*\])?\s*$", text, re.M)
        info["Reason"] = m.group(1) if m else ""
        return info

    def job(self, job_id: int) -> dict[str, str]:
        text = self.scontrol("show", "job", "-d", str(job_id)).stdout
        return dict(re.findall(r"(\w+)=(\S*)", text))

    # -- tear-down ------------------------------------------------------------------------
    def stop(self) -> None:
        if self.procs.get("slurmctld") and self.procs["slurmctld"].alive():
            self.run("scancel", "--quiet", "--full", "--partition=gpu")
            deadline = time.monotonic() + 10
            while (
                time.monotonic() < deadline
                and self.run("squeue", "--noheader", "--states=RUNNING,COMPLETING").stdout.strip()
            ):
                time.sleep(0.2)
        for name in ("slurmd", "slurmctld", "munged"):
            p = self.procs.get(name)
            if p is not None:
                p.stop(grace=15)
        # Job steps (slurmstepd and the job's processes) outlive slurmd in their own sessions.
        # End any left by their pids: only processes whose environment names our config.
        for pid in self.leftover_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def leftover_pids(self) -> list[int]:
        """Processes of this cluster still alive (their environment holds our SLURM_CONF)."""
        mark = f"SLURM_CONF={self.conf}".encode()
        pids = []
        for d in Path("/proc").iterdir():
            if not d.name.isdigit() or int(d.name) == os.getpid():
                continue
            try:
                env = (d / "environ").read_bytes().split(b"\0")
                state = (d / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if mark in env and state != "Z":
                pids.append(int(d.name))
        return pids


def missing_binaries() -> list[str]:
    return [b for b in (*DAEMONS, "scontrol", "sbatch") if shutil.which(b) is None]


if __name__ == "__main__":  # manual check: python -m tests.slurm.cluster
    import sys
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="slurm-"))
    c = SlurmCluster(d)
    try:
        c.start()
        print(c.scontrol("show", "node", "-d", c.node).stdout)
        j = c.sbatch(2)
        time.sleep(2)
        print(c.scontrol("show", "job", "-d", str(j)).stdout)
        if len(sys.argv) > 1:
            input("enter to stop")
    finally:
        c.stop()
        print(c.logs()[-4000:])
