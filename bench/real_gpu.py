"""``python -m bench.real_gpu``: the exporter checked on a host with NVIDIA GPUs.

1. Every value the exporter exports (its real /metrics, the exporter run as a subprocess) against
   ``nvidia-smi --query-gpu`` read just before and just after the scrape, within stated
   tolerances (bench/real_gpu_compare.py lists each field, its tolerance and why).
2. The measured cost of each NVML call the exporter makes, per GPU: median and p99 over repeats.
   The calls are recorded while the exporter's own service runs, so new collectors' calls appear
   without editing this file (bench/real_gpu_nvml.py).
3. XID event registration: an event set, each GPU registered for XidCriticalError, one short wait.
4. As root: a power-limit set and restore through the agent's NVML actuator (10 W down, read
   back, restored in a ``finally``, restore verified); otherwise "skipped: not root".
5. CPU per scrape against nvitop-exporter on the same driver (bench.exporter_scrape's
   measurement; bench/real_gpu_scrape.py).

Prints a markdown report (GPU name, driver, NVML version) for docs/BENCHMARKS.md; ``--json FILE``
writes everything. ``--simulate N`` runs the same checks against N simulated GPUs (the exporter's
``--simulate`` and its simulated libnvidia-ml): nvidia-smi is then not run, and the exported
values are compared with the simulator's own state instead. Simulated figures are not real-GPU
figures.

    python -m bench.real_gpu --json real_gpu.json          # on a GPU host (as root for item 4)
    python -m bench.real_gpu --simulate 2                   # anywhere
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import tempfile
import time
import traceback
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pynvml

from gpuwarden.procs import Proc, ProcError, free_port

from . import real_gpu_compare as cmp
from . import real_gpu_nvml as nv
from . import real_gpu_scrape


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as resp:
        text: str = resp.read().decode()
        return text


def exported_vs_reference(simulate: int | None, smi: str, workdir: Path) -> dict[str, Any]:
    """Starts the exporter, scrapes it between two reads of each reference, compares."""
    smi_path = cmp.find_nvidia_smi(smi)
    if smi_path is None:
        smi_status = f"not run: nvidia-smi not found ({smi})"
    elif simulate:
        smi_status = "not run: the GPUs are simulated (nvidia-smi reads the real driver)"
    else:
        smi_status = "run"
    refs: list[cmp.Reference] = []
    if smi_status == "run" and smi_path is not None:
        refs.append(cmp.NvidiaSmi(smi_path, [n for f in cmp.FIELDS for n in f.smi]))
    port = free_port()
    argv = [sys.executable, "-m", "gpuwarden.exporter.cli", "--web.listen-address", f"127.0.0.1:{port}"]
    if simulate:
        cport = free_port()
        argv += ["--simulate", str(simulate), "--sim.control-address", f"127.0.0.1:{cport}"]
        refs.append(cmp.SimState(f"http://127.0.0.1:{cport}"))
    out: dict[str, Any] = {"nvidia_smi": {"status": smi_status}, "exporter": " ".join(argv[1:])}
    url = f"http://127.0.0.1:{port}/metrics"
    proc = Proc(argv, workdir / "exporter.log", name="gpuwarden-exporter")
    try:
        proc.wait_ready(url, timeout=60)
        deadline = time.monotonic() + 30
        while "gpuwarden_exporter_nvml_up 1.0" not in (text := _get(url)):
            if time.monotonic() > deadline:
                raise ProcError(f"the exporter did not report nvml_up 1 within 30 s; see {proc.log}")
            time.sleep(0.2)
        _get(url)  # the first collections read identity, limits and thresholds once
        for ref in refs:
            entry = out["nvidia_smi"] if isinstance(ref, cmp.NvidiaSmi) else out.setdefault("simulator", {})
            try:
                before = ref.read()
                t0 = time.perf_counter()
                text = _get(url)
                entry["scrape_ms"] = (time.perf_counter() - t0) * 1e3
                after = ref.read()
            except (OSError, RuntimeError, ValueError) as exc:
                entry["status"] = f"failed: {exc}"
                continue
            values, info, errors = cmp.exported(text)
            rows, identity = cmp.compare(values, info, before, after)
            entry.update(
                status="run",
                reference=ref.name,
                rows=[r.as_dict() for r in rows],
                identity=identity,
                gpus_compared=len([u for u in values if u in before or u in after]),
            )
            if isinstance(ref, cmp.NvidiaSmi):
                entry["fields_unknown_to_this_driver"] = ref.unknown
            out["exporter_nvml_errors"] = errors
    finally:
        proc.stop()
    return out


def _compare_md(title: str, entry: dict[str, Any]) -> list[str]:
    lines = [f"### {title}", ""]
    if entry.get("status") != "run":
        return [*lines, entry.get("status", "not run"), ""]
    bad = [r for r in entry["rows"] if r["result"].startswith(("DIFF", "MISSING"))]
    compared = [r for r in entry["rows"] if r["gpus"]]
    lines += [
        f"{len(compared)} series compared on {entry['gpus_compared']} GPU(s), {len(bad)} outside tolerance "
        f"(scrape {entry['scrape_ms']:.1f} ms between the reference's two reads).",
        "",
        "| exported series | reference field | tolerance | first GPU: exported vs before -> after | result |",
        "|---|---|---|---|---|",
    ]
    for r in entry["rows"]:
        excess = f" (off by {r['max_excess']:g} beyond tolerance)" if r["max_excess"] else ""
        lines.append(
            f"| `{r['key']}` | {r['field'] or '-'} | {r['tolerance'] or '-'} | {r['sample'] or '-'} | "
            f"{r['result']}{excess} |"
        )
    ids = entry.get("identity", [])
    if ids:
        ok = sum(1 for i in ids if i["ok"])
        lines += ["", f"Identity (gpu_info labels): {ok}/{len(ids)} equal"]
        lines += [
            f"- GPU {i['uuid']}: {i['field']} {i['exported']!r} != {i['reference']!r}" for i in ids if not i["ok"]
        ]
    unknown = entry.get("fields_unknown_to_this_driver")
    if unknown:
        lines += ["", f"Fields this nvidia-smi does not know (skipped): {', '.join(unknown)}"]
    return [*lines, ""]


def _power_row(g: dict[str, Any]) -> str:
    def f(k: str) -> str:
        v = g.get(k)
        return "-" if v is None else f"{v:g}" if isinstance(v, float | int) else str(v)

    set_ms = f"{g['set_ms']:.1f}" if "set_ms" in g else "-"
    error = f"; {g['error']}" if g.get("error") else ""
    return (
        f"| {g['gpu']} | {f('original_w')} ({f('min_w')}-{f('max_w')}) | {f('target_w')} | {f('readback_w')} | "
        f"{f('enforced_w')} | {set_ms} | {f('restored_w')} | {g['status']}{error} |"
    )


def _md_compare(c: dict[str, Any]) -> list[str]:
    lines = [f"Exporter: `{c.get('exporter', '')}`", ""]
    lines += _compare_md("nvidia-smi --query-gpu", c["nvidia_smi"])
    if "simulator" in c:
        lines += _compare_md("the simulator's own state (the reference when the GPUs are simulated)", c["simulator"])
    errs = c.get("exporter_nvml_errors") or []
    if errs:
        lines += ["NVML errors the exporter counted (`gpuwarden_exporter_nvml_errors_total`):", ""]
        lines += [f"- {e['call']}: {e['code']} x{e['count']:g}" for e in errs]
    return lines


def _md_calls(n: dict[str, Any]) -> list[str]:
    calls, summary = n["rows"], n["summary"]
    lines = [
        f"Recorded while the exporter's service started and ran {summary['scrapes']} collections on "
        f"{summary['gpus']} GPU(s); read-only calls replayed with the exporter's arguments. Per GPU per scrape: "
        f"{summary['calls_per_gpu_per_scrape']:g} calls, {summary['nvml_us_per_gpu_per_scrape']:.1f} µs of NVML "
        "(sum of medians).",
        "",
        "| call | when | calls/GPU/scrape | timed | n | median µs | p99 µs | result |",
        "|---|---|---:|---|---:|---:|---:|---|",
    ]
    lines += [
        f"| {r['call']} | {r['when']} | {r['per_gpu_per_scrape']:g} | {r['timed']} | {r['n']} | "
        f"{r['median_us']:.1f} | {r['p99_us']:.1f} | {r['result']} |"
        for r in calls
    ]
    return lines


def _md_xid(x: dict[str, Any]) -> list[str]:
    lines = [f"Event set: {x['event_set']}."]
    for g in x["gpus"]:
        lines.append(
            f"- GPU {g['gpu']}: XID events supported: {g['supported']}; nvmlDeviceRegisterEvents: {g['registered']} "
            f"({g['register_us']:.0f} µs)"
        )
    if "injected" in x:
        lines.append(f"- {x['injected']['note']} on GPU {x['injected']['gpu']}")
    if "wait" in x:
        w = x["wait"]
        got = f"XID {w['xid']} on GPU {w['gpu']}" if w["event"] == "xid" else w["event"]
        lines.append(f"- one wait ({x['wait_ms']} ms): {got}, returned after {w['waited_ms']:.1f} ms")
    return lines


def _md_power(p: dict[str, Any]) -> list[str]:
    if p["status"] != "run as root":
        return [p["status"]]
    lines = [
        f"Through {p['via']}: each limit {p['step_w']:g} W lower, read back, restored in a finally, "
        "the restore read back.",
        "",
        "| GPU | limit W (min-max) | set to W | read back W | enforced W | set ms | restored W | result |",
        "|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    return lines + [_power_row(g) for g in p["gpus"]]


def _md_scrape(s: dict[str, Any]) -> list[str]:
    if s["status"] != "ok":
        return [s["status"]]
    return [
        f"`python -m {s['command']}` (bench.exporter_scrape's measurement, one process, interleaved):",
        "",
        s["table"],
    ]


SECTIONS: tuple[tuple[str, str, Callable[[dict[str, Any]], list[str]]], ...] = (
    ("compare", "## 1. Exported values against nvidia-smi", _md_compare),
    ("nvml_calls", "## 2. Cost of each NVML call the exporter makes", _md_calls),
    ("xid", "## 3. XID event registration", _md_xid),
    ("power", "## 4. Power limit set and restore", _md_power),
    ("scrape_cpu", "## 5. CPU per scrape against nvitop-exporter", _md_scrape),
)


def markdown(report: dict[str, Any]) -> str:
    sysinfo = report["system"]
    lines = ["# Real-GPU check: `python -m bench.real_gpu`", ""]
    if report["mode"] == "simulated":
        lines += [
            f"SIMULATED: {len(sysinfo['gpus'])} simulated GPU(s) through the simulated libnvidia-ml; no real GPU was "
            "read. These are not real-GPU figures; the real-GPU run has not happened yet.",
            "",
        ]
    lines += [
        f"Driver {sysinfo['driver']}, NVML {sysinfo['nvml']}, CUDA driver {sysinfo['cuda_driver']}, "
        f"Python {sys.version.split()[0]}, pynvml (nvidia-ml-py) {report['pynvml']}; {report['started']}.",
        "",
        "| GPU | name | UUID | PCI bus id |",
        "|---:|---|---|---|",
    ]
    lines += [f"| {g['index']} | {g['name']} | {g['uuid']} | {g['pci_bus_id']} |" for g in sysinfo["gpus"]]
    for key, title, render in SECTIONS:
        section = report.get(key, {"failed": "not reached"})
        lines += ["", title, ""]
        lines += [f"failed: {section['failed']}"] if "failed" in section else render(section)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.real_gpu", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--simulate", type=int, metavar="N", help="N simulated GPUs instead of the real driver")
    p.add_argument("--json", metavar="FILE", help="write the whole report as JSON")
    p.add_argument("--markdown", metavar="FILE", help="also write the markdown report to FILE")
    p.add_argument(
        "--nvidia-smi", dest="smi", default="nvidia-smi", help="nvidia-smi to compare with (default: on PATH)"
    )
    p.add_argument("--reps", type=int, default=200, help="timed repeats of each NVML call (default %(default)s)")
    p.add_argument("--xid-wait-ms", type=int, default=200)
    p.add_argument("--power-step", type=float, default=10.0, help="watts to lower the limit by (default %(default)s)")
    p.add_argument("--scrape-rounds", type=int, default=10, help="nvitop comparison rounds (default %(default)s)")
    p.add_argument(
        "--scrape-per-round", type=int, default=50, help="scrapes per exporter per round (default %(default)s)"
    )
    args = p.parse_args(argv)
    # A timeout's SIGTERM unwinds through the finally blocks (a capped power limit is restored).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    fleet = None
    loader = None
    if args.simulate:
        from gpuwarden.exporter.sim.fleet import Fleet
        from gpuwarden.exporter.sim.library import SimLibrary, install

        fleet = Fleet(args.simulate)
        lib = SimLibrary(fleet)

        def loader() -> None:
            install(lib)

        loader()
    try:
        pynvml.nvmlInit()  # held for the whole run: the service's stop() must not close our handles
    except pynvml.NVMLError as exc:
        print(f"no usable NVIDIA driver: nvmlInit failed ({exc}); run with --simulate N without a GPU", file=sys.stderr)
        return 2
    report: dict[str, Any] = {
        "mode": "simulated" if args.simulate else "real",
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "pynvml": _version("nvidia-ml-py"),
        "system": nv.system_info(),
    }
    print(
        f"real_gpu: {report['mode']}, {len(report['system']['gpus'])} GPU(s), driver {report['system']['driver']}",
        file=sys.stderr,
        flush=True,
    )

    def compare() -> dict[str, Any]:
        with tempfile.TemporaryDirectory(prefix="real_gpu-") as tmp:
            return exported_vs_reference(args.simulate, args.smi, Path(tmp))

    def calls() -> dict[str, Any]:
        rows, summary = nv.call_costs(loader, reps=args.reps)
        return {"rows": rows, "summary": summary}

    inject = None
    if fleet is not None:
        sim_fleet = fleet

        def inject(gpu: int) -> None:
            sim_fleet.inject(gpu, {"kind": "xid", "xid": 13})

    def scrape() -> dict[str, Any]:
        status, out = real_gpu_scrape.run(args.simulate, args.scrape_rounds, args.scrape_per_round)
        return {"status": status, **out}

    steps: dict[str, Callable[[], dict[str, Any]]] = {
        "compare": compare,
        "nvml_calls": calls,
        "xid": lambda: nv.xid_registration(inject, args.xid_wait_ms),
        "power": lambda: nv.power_set_restore(args.power_step),
        "scrape_cpu": scrape,
    }
    for key, step in steps.items():
        print(f"real_gpu: {key} ...", file=sys.stderr, flush=True)
        try:
            report[key] = step()
        except Exception as exc:  # noqa: BLE001 - one section failing must not lose the others (a lent GPU is one shot)
            report[key] = {"failed": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
            print(report[key]["traceback"], file=sys.stderr, flush=True)
    with contextlib.suppress(pynvml.NVMLError):
        pynvml.nvmlShutdown()
    text = markdown(report)
    sys.stdout.write(text)
    if args.markdown:
        Path(args.markdown).write_text(text)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=str) + "\n")
    return 1 if any("failed" in report[key] for key in steps) else 0


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "?"


if __name__ == "__main__":
    sys.exit(main())
