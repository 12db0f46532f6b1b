"""Shared by the deploy tests: the manifests and units, parsed once."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

from gpuwarden.scheduler_agent import config as agent_config
from gpuwarden.scheduler_agent.remediation import config as remediation_config
from tests.helpers import require_binary

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
EXPORTER_PORT = 9786  # BRIEF.md: default ports
AGENT_PORT = 9787


def k8s_docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((DEPLOY / "kubernetes" / name).read_text()) if d is not None]


def check_agent_config(text: str, tmp: Path, source: str) -> dict[str, Any]:
    """Loads an agent config the way ``gpuwarden-agent serve`` does (schema, then the remediation
    plug-in's schema); the token files it names are made to exist under ``tmp`` first (the real
    ones are deployment secrets). Returns the parsed document."""
    doc = yaml.safe_load(text)
    token = tmp / "token"
    token.write_text("t\n")
    local = {**doc, "web": {**doc["web"], "token_file": str(token)}}
    assert doc["web"]["token_file"] != doc["remediation"]["auth"]["bearer_token_file"], (
        f"{source}: the operator's and Alertmanager's credentials must be different files"
    )
    path = tmp / "agent.yaml"
    path.write_text(yaml.safe_dump(local))
    agent_config.load(path)
    remediation_config.parse(doc.get("remediation"), source)
    return doc


def kustomize(path: Path) -> list[dict[str, Any]]:
    """The objects ``kubectl kustomize`` renders from ``path`` (client-side: no cluster). The
    calling test must be marked ``binaries``."""
    out = subprocess.run(
        [require_binary("kubectl"), "kustomize", str(path)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]
