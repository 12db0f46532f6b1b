"""A TracerProvider configured from the standard OTEL_* variables (never the global one).

OTEL_TRACES_EXPORTER: ``none`` (default here: no exporter dependency, spans still recorded for
in-process consumers), ``console``, or ``otlp`` (needs opentelemetry-exporter-otlp, which is not a
dependency: without it the agent logs one line saying what to install and runs without export).
OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES are honoured by the SDK's Resource; the OTLP
exporter reads OTEL_EXPORTER_OTLP_* itself.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

log = logging.getLogger(__name__)


def provider_from_env(service_name: str = "gpuwarden-agent", env: Mapping[str, str] | None = None) -> TracerProvider:
    env = os.environ if env is None else env
    attrs = {} if env.get("OTEL_SERVICE_NAME") else {"service.name": service_name}
    provider = TracerProvider(resource=Resource.create(attrs))
    for name in filter(None, (n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "none").split(","))):
        exporter = _exporter(name)
        if exporter is not None:
            provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def _exporter(name: str) -> SpanExporter | None:
    if name == "none":
        return None
    if name == "console":
        return ConsoleSpanExporter()
    if name == "otlp":
        return _otlp()
    log.warning("OTEL_TRACES_EXPORTER=%s is not supported (use none, console or otlp); ignored", name)
    return None


def _otlp() -> SpanExporter | None:
    """OTLP over gRPC, else over HTTP, whichever opentelemetry-exporter-otlp part is installed."""
    exporter: SpanExporter
    try:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as Grpc
    except ImportError:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as Http
        except ImportError:
            log.warning(
                "OTEL_TRACES_EXPORTER=otlp but opentelemetry-exporter-otlp is not installed: "
                "pip install opentelemetry-exporter-otlp; traces are not exported"
            )
            return None
        exporter = Http()
    else:
        exporter = Grpc()
    return exporter
