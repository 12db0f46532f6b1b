"""Stalled clients against the real agent: does /healthz keep answering, and are they closed?

    python -m bench.stalled [--connections 2000] [--nofile 1024] [--baseline-python PATH]

Starts ``gpuwarden-agent serve`` with its open-file limit at ``--nofile`` (systemd's default is
1,024), opens ``--connections`` unauthenticated connections that each send half a request line
and then nothing (a slowloris), and meanwhile probes ``GET /healthz`` on fresh connections every
50 ms. Reports the probes' latency and failures, then how long the agent took to close the
stalled connections (the listener's header deadline, 10 s by default).

``--baseline-python`` runs the same against another checkout's agent (the python of a virtualenv
that has it installed, e.g. the tree before the listener change), side by side in one run.
Target (issue 13): with 2,000 stalled connections at 1,024 files, /healthz answers within 100 ms
and the stalled connections are closed within the deadline.
"""

from __future__ import annotations

import argparse
import http.client
import resource
import selectors
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gpuwarden.procs import free_port

TOKEN = "bench-operator-token"
WEBHOOK = "bench-webhook-token"


def _start(python: str, folder: Path, nofile: int) -> tuple[subprocess.Popen, int]:
    port = free_port()
    (folder / "token").write_text(TOKEN + "\n")
    (folder / "webhook-token").write_text(WEBHOOK + "\n")
    (folder / "agent.yaml").write_text(
        f'web: {{listen_address: "127.0.0.1:{port}", token_file: token}}\n'
        "database: {path: agent.db}\nexecutor: {kind: tracking}\n"
        "inventory: {nodes: [{name: n0, count: 8}]}\n"
        "remediation: {auth: {bearer_token_file: webhook-token}}\n"
    )

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    agent = Path(python).parent / "gpuwarden-agent"
    proc = subprocess.Popen(
        [str(agent), "serve", "--config=agent.yaml"],
        cwd=folder,
        preexec_fn=limit,
        stdout=open(folder / "agent.log", "wb"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if _probe(port, 1.0) is not None:
            return proc, port
        time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"{agent} did not answer /healthz; see {folder / 'agent.log'}")


def _probe(port: int, timeout: float) -> float | None:
    """Seconds /healthz took on a fresh connection, or None if it failed or timed out."""
    t0 = time.perf_counter()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        conn.request("GET", "/healthz")
        ok = conn.getresponse().status == 200
        conn.close()
    except (OSError, http.client.HTTPException):
        return None
    return time.perf_counter() - t0 if ok else None


def measure(python: str, connections: int, nofile: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-stalled-") as tmp:
        proc, port = _start(python, Path(tmp), nofile)
        sel = selectors.DefaultSelector()
        opened: dict[socket.socket, float] = {}
        probes: list[float | None] = []
        next_probe = time.perf_counter()
        try:
            give_up = time.monotonic() + 30  # an agent whose backlog is full makes each connect wait
            for _i in range(connections):
                if time.monotonic() > give_up:
                    break
                try:
                    s = socket.create_connection(("127.0.0.1", port), timeout=0.2)
                    s.sendall(b"POST /webhook/alertmanager HTTP/1.1\r\nHost: agent\r\nContent-Le")
                    s.setblocking(False)
                    opened[s] = time.monotonic()
                    sel.register(s, selectors.EVENT_READ)
                except OSError:
                    pass  # the agent's backlog is full: that is the point
                if time.perf_counter() >= next_probe:
                    probes.append(_probe(port, 1.0))
                    next_probe = time.perf_counter() + 0.05
            flood_end = time.monotonic()
            for _ in range(40):  # keep probing for 2 s with the stalled connections held
                probes.append(_probe(port, 1.0))
                time.sleep(0.05)
            closed_after: list[float] = []
            deadline = time.monotonic() + 30
            while sel.get_map() and time.monotonic() < deadline:
                for key, _ in sel.select(0.5):
                    s = key.fileobj
                    try:
                        data = s.recv(64)
                    except OSError:
                        data = b""
                    if not data:
                        closed_after.append(time.monotonic() - opened[s])
                        sel.unregister(s)
                        s.close()
            still_open = len(sel.get_map())
        finally:
            for key in list(sel.get_map().values()):
                key.fileobj.close()
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        ok = [p for p in probes if p is not None]
        return {
            "opened": len(opened),
            "flood_seconds": flood_end - min(opened.values(), default=flood_end),
            "probes": len(probes),
            "probe_failures": len(probes) - len(ok),
            "probe_p50_ms": statistics.median(ok) * 1000 if ok else float("nan"),
            "probe_max_ms": max(ok) * 1000 if ok else float("nan"),
            "closed": len(closed_after),
            "still_open_after_30s": still_open,
            "closed_p50_s": statistics.median(closed_after) if closed_after else float("nan"),
            "closed_max_s": max(closed_after) if closed_after else float("nan"),
        }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.stalled", description=__doc__.split("\n")[0])
    ap.add_argument("--connections", type=int, default=2000)
    ap.add_argument("--nofile", type=int, default=1024, help="the agent's open-file limit")
    ap.add_argument("--baseline-python", help="python of a virtualenv with another checkout's agent")
    args = ap.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, args.connections + 256)), hard))
    runs = [("this tree", sys.executable)]
    if args.baseline_python:
        runs.insert(0, ("baseline", args.baseline_python))
    print(
        f"`python -m bench.stalled --connections {args.connections} --nofile {args.nofile}"
        + (" --baseline-python ...`" if args.baseline_python else "`")
        + "\n"
    )
    print(
        "| agent | stalled opened | /healthz probes | failed | p50 ms | max ms | stalled closed | "
        "closed after p50 / max s | open after 30 s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, python in runs:
        r = measure(python, args.connections, args.nofile)
        print(
            f"| {name} | {r['opened']:.0f} | {r['probes']:.0f} | {r['probe_failures']:.0f} | "
            f"{r['probe_p50_ms']:.1f} | {r['probe_max_ms']:.1f} | {r['closed']:.0f} | "
            f"{r['closed_p50_s']:.1f} / {r['closed_max_s']:.1f} | {r['still_open_after_30s']:.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
