"""Writes docs/OBSERVABILITY.md from what the code and the config actually produce.

    python docs/generate_observability.py           # rewrite docs/OBSERVABILITY.md
    python docs/generate_observability.py --check   # exit 1 when the committed file is stale

Metrics come from real /metrics pages: the exporter (``gpuwarden-exporter --simulate 2``, both
simulated boards) and the agent (``gpuwarden-agent serve`` with every plug-in enabled) are started
on free ports, given events (an XID; a webhook delivery, a job, a rising temperature for the
predictor to read from a stand-in Prometheus) so that labelled families have a series, and scraped; each family's name, type, help and label names are read from the exposition. Alerts and
recording rules come from the generated rule files in rules/generated (themselves generated from
rules/thresholds.yaml), so neither list can drift from what is shipped. Lives beside the doc, not
inside a package, because it depends on all three packages and none of them should depend on it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

from gpuwarden.procs import Proc, ProcError, console_script, free_port, free_ports, wait_http

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "OBSERVABILITY.md"
RULES_DIR = REPO / "rules" / "generated"
GPUS = 2
# Label names a histogram/summary adds to its samples; not labels a user selects on.
_SAMPLE_LABELS = {"le", "quantile"}


@dataclass
class Family:
    name: str
    type: str
    help: str
    labels: set[str] = field(default_factory=set)


def _script(name: str) -> str:
    try:
        return console_script(name)
    except ProcError as exc:
        raise SystemExit(str(exc)) from None


def _get(url: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> str:
    req = urllib.request.Request(url, data=body, headers=headers or {}, method="POST" if body is not None else "GET")
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.read().decode()


def _scrape(
    argv: list[str],
    url: str,
    cwd: Path,
    ready: str | None = None,
    prepare: Callable[[], None] | None = None,
    until: Sequence[str] = (),
) -> str:
    """Starts ``argv``, waits for ``ready`` (default ``url``) to answer, runs ``prepare`` (events
    that make labelled families show their series), returns ``url``'s body once it contains
    every string of ``until``, and stops the process (its whole group, by pid) whatever happens."""
    proc = Proc(argv, cwd / "child.log", cwd=cwd, append=True)
    try:
        try:
            wait_http(ready or url, 30, proc)
        except ProcError as exc:
            raise SystemExit(str(exc)) from None
        if prepare is not None:
            prepare()
        deadline = time.monotonic() + 30
        while True:
            text = _get(url)
            missing = [u for u in until if u not in text]
            if not missing:
                return text
            if time.monotonic() > deadline:
                raise SystemExit(f"{url} never showed {missing!r} within 30s; see {proc.log}")
            time.sleep(0.1)
    finally:
        proc.stop(10)


def families(text: str) -> list[Family]:
    out: dict[str, Family] = {}
    for fam in text_string_to_metric_families(text):
        # prometheus_client's parser names a counter family without its _total suffix.
        name = fam.name + "_total" if fam.type == "counter" else fam.name
        f = out.setdefault(name, Family(name, fam.type, fam.documentation))
        for sample in fam.samples:
            f.labels |= set(sample.labels) - _SAMPLE_LABELS
    return sorted(out.values(), key=lambda f: f.name)


def exporter_metrics(tmp: Path) -> list[Family]:
    """Both simulated boards (H100 reports remapped rows, V100 retired pages), each after one
    non-fatal XID so that the per-XID counter has a series."""
    text = ""
    for model in ("h100", "v100"):
        port, control = free_ports(2)

        def xid(control=control):
            return _get(
                f"http://127.0.0.1:{control}/api/v1/gpus/0/faults",
                json.dumps({"kind": "xid", "xid": 13}).encode(),
                {"Content-Type": "application/json"},
            )

        text += _scrape(
            [
                _script("gpuwarden-exporter"),
                f"--web.listen-address=127.0.0.1:{port}",
                f"--simulate={GPUS}",
                f"--sim.model={model}",
                f"--sim.control-address=127.0.0.1:{control}",
                "--collector.gpm",  # off by default; documented with the rest
            ],
            f"http://127.0.0.1:{port}/metrics",
            tmp,
            prepare=xid,
            until=["gpu_xid_errors_total{"],
        )
    return families(text)


# The GPU the agent's documented series describe: its node as Prometheus names the exporter
# target (the static inventory says so with ``instance``), and its uuid.
DOC_INSTANCE, DOC_UUID = "gpu-node-1:9786", "GPU-node-a-0"


@contextlib.contextmanager
def stand_in_prometheus() -> Iterator[str]:
    """A stdlib server answering the predictor's range queries for one GPU: thresholds at 85,
    no errors, and every metric rising from 40 by 0.05 a second, so that the predictor exports
    a risk and a forecast with the labels it gives them. Yields its URL; stops on exit."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urllib.parse.urlparse(self.path)
            q = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query).items()}
            start, end, step = float(q["start"]), float(q["end"]), float(q["step"])
            query = q["query"]
            if "threshold" in query:
                value: Callable[[float], float] = lambda t: 85.0  # noqa: E731 - a tiny table of curves
            elif "error" in query or "xid" in query:
                value = lambda t: 0.0  # noqa: E731
            else:
                value = lambda t: 40.0 + 0.05 * (t - start)  # noqa: E731
            times = [start + i * step for i in range(int((end - start) / step) + 1)]
            labels = {"instance": DOC_INSTANCE, "job": "gpuwarden-exporter", "gpu": "0", "uuid": DOC_UUID}
            body = json.dumps(
                {
                    "status": "success",
                    "data": {
                        "resultType": "matrix",
                        "result": [{"metric": labels, "values": [[t, repr(value(t))] for t in times]}],
                    },
                }
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def agent_metrics(tmp: Path) -> list[Family]:
    """The agent with its scheduler, remediation and predictor plug-ins (the predictor reading a
    stand-in Prometheus), after one webhook delivery and one job, so that the per-action
    counters, the allocations and the predictor's per-GPU families have a series."""
    with stand_in_prometheus() as prom_url:
        return _agent_metrics(tmp, prom_url)


def _agent_metrics(tmp: Path, prom_url: str) -> list[Family]:
    port = free_port()
    token = "generate-observability-webhook"
    operator = "generate-observability-operator"
    (tmp / "token").write_text(operator + "\n")
    (tmp / "webhook-token").write_text(token + "\n")
    config = {
        "web": {"listen_address": f"127.0.0.1:{port}", "token_file": "token"},
        "database": {"path": "agent.db"},
        "inventory": {"nodes": [{"name": "node-a", "instance": DOC_INSTANCE, "count": GPUS}]},
        "executor": {"kind": "tracking"},
        "remediation": {"auth": {"bearer_token_file": "webhook-token"}},
        "predictor": {"prometheus_url": prom_url, "timeout_seconds": 1, "period_seconds": 1},
    }
    (tmp / "agent.yaml").write_text(yaml.safe_dump(config))
    alert = {
        "status": "firing",
        "labels": {
            "alertname": "GPUThermalWarning",
            "rule": "THERMAL_WARNING",
            "severity": "warning",
            "action": "notify",
            "instance": DOC_INSTANCE,
            "gpu": "0",
            "uuid": "GPU-node-a-0",
        },
        "annotations": {},
        "startsAt": "2026-01-01T00:00:00Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "",
        "fingerprint": "0000000000000001",
    }
    body = {
        "version": "4",
        "groupKey": "{}:{}",
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "gpuwarden-agent",
        "groupLabels": {},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "",
        "alerts": [alert],
    }

    def deliver() -> None:
        _get(
            f"http://127.0.0.1:{port}/webhook/alertmanager",
            json.dumps(body).encode(),
            {"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        )
        _get(  # a tracked job (no command) holds a GPU: gpu_allocation_info has a series
            f"http://127.0.0.1:{port}/api/v1/jobs",
            json.dumps({"name": "train", "gpus": 1}).encode(),
            {"Content-Type": "application/json", "Authorization": f"Bearer {operator}"},
        )

    text = _scrape(
        [_script("gpuwarden-agent"), "serve", "--config=agent.yaml"],
        f"http://127.0.0.1:{port}/metrics",
        tmp,
        ready=f"http://127.0.0.1:{port}/healthz",
        prepare=deliver,
        until=["remediation_actions_total{", "gpu_allocation_info{", "gpu_predicted_seconds_to_threshold{"],
    )
    return families(text)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _metric_table(fams: list[Family]) -> list[str]:
    rows = ["| metric | type | labels | help |", "|---|---|---|---|"]
    for f in fams:
        labels = ", ".join(f"`{x}`" for x in sorted(f.labels)) or "—"
        rows.append(f"| `{f.name}` | {f.type} | {labels} | {_cell(f.help)} |")
    return rows


def _rule_groups() -> list[tuple[str, dict]]:
    out = []
    for path in sorted(RULES_DIR.glob("*.rules.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                out.append((f"{path.name} / {group['name']}", rule))
    return out


def render(exporter: list[Family], agent: list[Family]) -> str:
    rules = _rule_groups()
    alerts = [(src, r) for src, r in rules if "alert" in r]
    records = [(src, r) for src, r in rules if "record" in r]
    lines = [
        "<!-- Generated by docs/generate_observability.py from the exporter's and the agent's /metrics",
        "     and rules/generated/*.rules.yml. Do not edit: run `python docs/generate_observability.py`",
        "     (tests/deploy/test_observability.py fails when this file is stale). -->",
        "# Observability: every metric and every alert",
        "",
        "What gpuwarden exposes and what it alerts on, read from the running code and the shipped "
        "rules. Per-GPU series carry `gpu` (the index on its node) and `uuid`; Prometheus adds "
        "`instance` and `job` (`gpuwarden-exporter`, `gpuwarden-agent`) when it scrapes. The agent's "
        "per-GPU series carry `instance` themselves: the GPU's node as Prometheus names its exporter "
        "target, not the agent's address, so the agent's scrape job sets `honor_labels: true`.",
        "",
        f"## Exporter metrics (`gpuwarden-exporter`, default port 9786): {len(exporter)} families",
        "",
        "Scraped from `gpuwarden-exporter --simulate` on both simulated boards (H100: remapped rows; "
        "V100: retired pages), after one XID; the same NVML code path runs on real GPUs.",
        "",
        *_metric_table(exporter),
        "",
        f"## Agent metrics (`gpuwarden-agent`, default port 9787): {len(agent)} families",
        "",
        "Scraped from `gpuwarden-agent serve` with the scheduler, remediation and predictor enabled, "
        "after one webhook delivery and one job, its predictor reading a stand-in Prometheus (one "
        "GPU heating). `gpu_state` also carries `node`, the inventory's own name for the node.",
        "",
        *_metric_table(agent),
        "",
        f"## Alerts: {len(alerts)}",
        "",
        "From rules/generated (edit rules/thresholds.yaml and run `gpuwarden-rules generate`). Every "
        "alert carries `rule`, `severity`, `action` and `family`, keeps the GPU's `instance`, `gpu`, "
        "`uuid`, and links its runbook.",
        "",
        "| alert | rule | severity | action | for | fires when | runbook |",
        "|---|---|---|---|---|---|---|",
    ]
    for _src, r in alerts:
        labels = r.get("labels", {})
        runbook = r.get("annotations", {}).get("runbook_url", "")
        rel = f"[{r['alert']}](runbooks/{runbook.rsplit('/', 1)[-1]})" if runbook else "—"
        lines.append(
            f"| `{r['alert']}` | {labels.get('rule', '—')} | {labels.get('severity', '—')} | "
            f"{labels.get('action', '—')} | {r.get('for', '0s')} | `{_cell(r['expr'])}` | {rel} |"
        )
    lines += ["", f"## Recording rules: {len(records)}", "", "| record | labels | expression |", "|---|---|---|"]
    for _src, r in records:
        labels = ", ".join(f'{k}="{v}"' for k, v in (r.get("labels") or {}).items())
        lines.append(f"| `{r['record']}` | {f'`{labels}`' if labels else ''} | `{_cell(r['expr'])}` |")
    return "\n".join(lines) + "\n"


def generate() -> str:
    with tempfile.TemporaryDirectory(prefix="gpuwarden-obs-") as tmp:
        exp_dir, agent_dir = Path(tmp, "exporter"), Path(tmp, "agent")
        exp_dir.mkdir()
        agent_dir.mkdir()
        return render(exporter_metrics(exp_dir), agent_metrics(agent_dir))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when docs/OBSERVABILITY.md is stale")
    args = parser.parse_args(argv)
    text = generate()
    if args.check:
        if not DOC.exists() or DOC.read_text() != text:
            print(f"{DOC.relative_to(REPO)} is stale: run 'python docs/generate_observability.py'", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(text)
    print(f"wrote {DOC.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
