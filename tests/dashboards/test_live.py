"""Every panel's query returns data from a real Prometheus 2.42 scraping the simulated exporter
and the agent, with the generated alert rules loaded; then the PNG renderer draws from it.

The fleet is given something to show on every panel: ECC errors and an XID on two GPUs, a
failed fan on a third (it heats, so the predictor forecasts a crossing), an uncorrectable
error (ECC_UNCORRECTABLE fires at once, so ALERTS has a firing series) and jobs that finish
and fail (so the job histogram and counters move). Intervals are short (1 s scrapes and rule
evaluations) because this test is about the queries, not about the shipped durations.
"""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from gpuwarden.dashboards import render
from gpuwarden.prom import PrometheusClient
from tests.dashboards.live import empty_queries
from tests.helpers import REPO, console_script, free_port, http_get, require_binary, wait_until

pytestmark = [pytest.mark.binaries, pytest.mark.slow]

TOKEN = "dashboards-live-test-token"


def _post(url: str, doc: dict[str, Any], token: str | None = None) -> dict[str, Any]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=json.dumps(doc).encode(), method="POST", headers=headers)
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read() or b"{}")


def _start_stack(spawn: Any, tmp: Path) -> dict[str, str]:
    exporter_port, control_port, agent_port, prom_port = (free_port() for _ in range(4))
    exporter = spawn(
        [
            console_script("gpuwarden-exporter"),
            "--simulate",
            "4",
            f"--web.listen-address=127.0.0.1:{exporter_port}",
            f"--sim.control-address=127.0.0.1:{control_port}",
        ],
        name="exporter",
    )
    wait_until(
        lambda: http_get(f"http://127.0.0.1:{exporter_port}/metrics")[0] == 200,
        20,
        what=f"exporter: {exporter.output()[-2000:]}",
    )

    prom_url = f"http://127.0.0.1:{prom_port}"
    rule_files = sorted(str(p) for p in (REPO / "rules" / "generated").glob("*.rules.yml"))
    assert rule_files, "rules/generated/*.rules.yml missing: run gpuwarden-rules generate"
    (tmp / "prometheus.yml").write_text(
        json.dumps(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
                "rule_files": rule_files,
                "scrape_configs": [
                    {"job_name": "gpuwarden-exporter", "static_configs": [{"targets": [f"127.0.0.1:{exporter_port}"]}]},
                    {
                        "job_name": "gpuwarden-agent",
                        "honor_labels": True,  # as shipped: per-GPU series keep their GPU's instance
                        "static_configs": [{"targets": [f"127.0.0.1:{agent_port}"]}],
                    },
                ],
            }
        )
    )
    prometheus = spawn(
        [
            require_binary("prometheus"),
            f"--config.file={tmp / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
        ],
        name="prometheus",
    )
    wait_until(lambda: http_get(f"{prom_url}/-/ready")[0] == 200, 30, what=f"prometheus: {prometheus.output()[-2000:]}")

    (tmp / "token").write_text(TOKEN + "\n")
    (tmp / "webhook-token").write_text(TOKEN + "-webhook\n")
    (tmp / "agent.yaml").write_text(f"""
remediation:
  auth: {{bearer_token_file: webhook-token}}
web:
  listen_address: 127.0.0.1:{agent_port}
  token_file: token
database:
  path: agent.db
inventory:
  prometheus: {{url: "{prom_url}", refresh_seconds: 1}}
executor:
  kind: local
  log_dir: job-logs
scheduler:
  tick_seconds: 0.1
predictor:
  prometheus_url: "{prom_url}"
  period_seconds: 2
  window_seconds: 60
  step_seconds: 1
  migrate: false
""")
    agent = spawn([console_script("gpuwarden-agent"), "serve", "--config", str(tmp / "agent.yaml")], name="agent")
    wait_until(
        lambda: http_get(f"http://127.0.0.1:{agent_port}/healthz")[0] == 200,
        20,
        what=f"agent: {agent.output()[-2000:]}",
    )
    return {
        "prometheus": prom_url,
        "control": f"http://127.0.0.1:{control_port}",
        "agent": f"http://127.0.0.1:{agent_port}",
    }


def _make_it_interesting(urls: dict[str, str]) -> None:
    ctl = urls["control"]
    for gpu in range(4):
        _post(f"{ctl}/api/v1/gpus/{gpu}/load", {"utilization": 0.3 + 0.15 * gpu, "memory_ratio": 0.5})
    _post(f"{ctl}/api/v1/gpus/0/faults", {"kind": "ecc", "correctable": 5, "correctable_per_minute": 30})
    _post(f"{ctl}/api/v1/gpus/1/faults", {"kind": "ecc", "uncorrectable": 1})
    _post(f"{ctl}/api/v1/gpus/2/faults", {"kind": "cooling", "factor": 3.0})
    _post(f"{ctl}/api/v1/gpus/2/load", {"utilization": 0.9})
    _post(f"{ctl}/api/v1/gpus/3/faults", {"kind": "xid", "xid": 13})
    # Jobs wait for the agent's inventory (read from Prometheus), then run here and exit.
    wait_until(
        lambda: len(json.loads(http_get(f"{urls['agent']}/api/v1/gpus", token=TOKEN)[1])) == 4,
        30,
        what="the agent's inventory to list the 4 simulated GPUs",
    )
    # One job that stays (no command: tracked, holding its GPU) for the allocations table.
    _post(f"{urls['agent']}/api/v1/jobs", {"name": "held", "gpus": 1}, TOKEN)
    jobs = [(["true"], "ok"), (["sleep", "0.5"], "ok"), (["false"], "fails")]
    for i, (argv, name) in enumerate(jobs * 2):
        _post(f"{urls['agent']}/api/v1/jobs", {"name": f"{name}-{i}", "gpus": 1, "command": argv}, TOKEN)


def test_every_panel_query_returns_data_and_the_png_renders(
    spawn: Any, tmp_path: Path, committed: dict[str, Any]
) -> None:
    since = time.time()
    urls = _start_stack(spawn, tmp_path)
    _make_it_interesting(urls)

    last: list[list[str]] = [[]]

    def all_have_data() -> bool:
        last[0] = empty_queries(urls["prometheus"], committed, since)
        return not last[0]

    deadline = time.monotonic() + 90
    while not all_have_data() and time.monotonic() < deadline:
        time.sleep(2)
    assert not last[0], "queries without data after 90 s:\n" + "\n".join(last[0])

    # The values are the fleet's, not just any numbers.
    prom = PrometheusClient(urls["prometheus"])
    total = prom.query("sum(cluster_gpus)")
    assert total[0].values[0] == 4
    firing = prom.query('ALERTS{alertstate="firing", rule="ECC_UNCORRECTABLE"}')
    assert [a.labels["gpu"] for a in firing] == ["1"]

    out = tmp_path / "fleet.png"
    drawn = render.render(PrometheusClient(urls["prometheus"]), out, range_s=time.time() - since + 5)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert all(n > 0 for n in drawn.values()), drawn
