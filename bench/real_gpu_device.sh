#!/usr/bin/env bash
# python -m bench.real_gpu on a lent GPU machine (the device tool), as one short command.
#
# On the device machine, from the repo root:   bash bench/real_gpu_device.sh
# It writes to $OUT (./real_gpu_out without it): real_gpu.md (the table for docs/BENCHMARKS.md),
# real_gpu.json, real_gpu.log, and nvidia-smi's own view (nvidia-smi-q.txt, help-query-gpu.txt:
# the field names this driver knows) for checking the comparison's mapping afterwards.
#
# That machine (an H200; see /work/.library/device/KINDS.md) has python3 3.12 with nvidia-ml-py,
# prometheus-client, PyYAML, psutil, h11 and click, and no network. What else the check uses
# travels as wheels in .whl/ (run with carry [".whl"]); fetch them here first, in the repo root:
#
#   echo /.whl/ >> .git/info/exclude
#   .venv/bin/python -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#       --platform manylinux2014_x86_64 -d .whl uvicorn==0.54.0 nvitop==1.7.2 nvitop-exporter==1.7.2 \
#       jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1
#
# (about 0.8 MB). Without them it still runs and says what it could not do: the exporter's HTTP
# server needs uvicorn (section 1), nvitop-exporter is the peer of section 5, and without
# jsonschema the agent's actuator does not import (section 4 then makes the same NVML calls
# directly). Then, with the device tool:
#
#   run(command="bash bench/real_gpu_device.sh", carry=[".whl"], timeout_s=540)
#
# The whole check is bounded by CHECK_SECONDS (default 420); on the timeout it gets SIGTERM,
# which unwinds through the power check's finally, so no GPU is left capped.
set -uo pipefail
out="${OUT:-$PWD/real_gpu_out}"
mkdir -p "$out"
py="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1

{
    echo "== $(date -u +%FT%TZ) $(uname -srm); id: $(id -u)"
    nvidia-smi -L || echo "nvidia-smi -L failed"
    "$py" --version
} 2>&1 | tee "$out/real_gpu.log"
nvidia-smi -q >"$out/nvidia-smi-q.txt" 2>&1
nvidia-smi --help-query-gpu >"$out/help-query-gpu.txt" 2>&1

site=/tmp/real_gpu_site
rm -rf "$site" && mkdir -p "$site"
if compgen -G ".whl/*.whl" >/dev/null; then
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" .whl/*.whl \
        2>&1 | tee -a "$out/real_gpu.log"
fi

# The package as it installs, out of symlinks (pyproject's package-dir: gpuwarden.exporter =
# exporter/, ...), as .ci/typecheck builds it: nothing to build, nothing fetched.
pkg=/tmp/real_gpu_pkg
rm -rf "$pkg" && mkdir -p "$pkg/gpuwarden"
for entry in gpuwarden/*; do
    [[ "$(basename "$entry")" == __pycache__ ]] || ln -s "$PWD/$entry" "$pkg/gpuwarden/"
done
"$py" - "$PWD" "$pkg" <<'PY' || exit 1
import os, sys, tomllib

root, pkg = sys.argv[1], sys.argv[2]
with open(os.path.join(root, "pyproject.toml"), "rb") as f:
    dirs = tomllib.load(f)["tool"]["setuptools"]["package-dir"]
for package, folder in dirs.items():
    if package != "gpuwarden":
        os.symlink(os.path.join(root, folder), os.path.join(pkg, *package.split(".")))
PY
export PYTHONPATH="$pkg:$site${PYTHONPATH:+:$PYTHONPATH}"
"$py" - <<'PY' 2>&1 | tee -a "$out/real_gpu.log"
import importlib
for m in ("pynvml", "prometheus_client", "uvicorn", "nvitop_exporter", "jsonschema", "gpuwarden.exporter.cli"):
    try:
        importlib.import_module(m)
        print(f"import {m}: ok")
    except Exception as exc:  # a report line, not a failure: the check says what it could not do
        print(f"import {m}: {type(exc).__name__}: {exc}")
PY

timeout -s TERM -k 30 "${CHECK_SECONDS:-420}" "$py" -m bench.real_gpu \
    --json "$out/real_gpu.json" --markdown "$out/real_gpu.md" "$@" 2>&1 | tee -a "$out/real_gpu.log"
status=${PIPESTATUS[0]}
echo "== bench.real_gpu exited $status" | tee -a "$out/real_gpu.log"
exit "$status"
