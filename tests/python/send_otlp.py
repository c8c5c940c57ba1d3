"""Sends traces, logs and metrics to otelring with the official OpenTelemetry Python SDK.

Usage: send_otlp.py grpc|http <grpc host:port> <http host:port> <service name>

Exits non-zero when an exporter reports a failure. What arrived is checked by the Rust test
that runs this script (tests/e2e.rs), by querying the SQLite shards.
"""

import logging
import sys

from opentelemetry import trace
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import Status, StatusCode

transport, grpc_addr, http_addr, service = sys.argv[1:5]
resource = Resource.create({"service.name": service})
failures = []

if transport == "grpc":
    from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    span_exporter = OTLPSpanExporter(endpoint=f"http://{grpc_addr}", insecure=True, timeout=10)
    log_exporter = OTLPLogExporter(endpoint=f"http://{grpc_addr}", insecure=True, timeout=10)
    metric_exporter = OTLPMetricExporter(endpoint=f"http://{grpc_addr}", insecure=True, timeout=10)
else:
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    span_exporter = OTLPSpanExporter(endpoint=f"http://{http_addr}/v1/traces", timeout=10)
    log_exporter = OTLPLogExporter(endpoint=f"http://{http_addr}/v1/logs", timeout=10)
    metric_exporter = OTLPMetricExporter(endpoint=f"http://{http_addr}/v1/metrics", timeout=10)


class Checked:
    """Wraps an exporter and records any failed export."""

    def __init__(self, inner, name):
        self.inner, self.name = inner, name

    def export(self, batch, *args, **kwargs):
        result = self.inner.export(batch, *args, **kwargs)
        if getattr(result, "name", "SUCCESS") != "SUCCESS":
            failures.append(f"{self.name}: {result}")
        return result

    def __getattr__(self, attr):
        return getattr(self.inner, attr)


# Traces: a root span and a failing child with an exception event.
tp = TracerProvider(resource=resource)
tp.add_span_processor(SimpleSpanProcessor(Checked(span_exporter, "spans")))
tracer = tp.get_tracer("py-e2e")
with tracer.start_as_current_span("py root", attributes={"http.route": "/pay", "retries": 3}):
    with tracer.start_as_current_span("py child") as child:
        child.record_exception(ValueError("bad card"))
        child.set_status(Status(StatusCode.ERROR, "bad card"))
tp.shutdown()

# Logs: one INFO, one ERROR, through the logging bridge.
lp = LoggerProvider(resource=resource)
lp.add_log_record_processor(SimpleLogRecordProcessor(Checked(log_exporter, "logs")))
log = logging.getLogger("py-e2e")
log.setLevel(logging.INFO)
log.addHandler(LoggingHandler(level=logging.INFO, logger_provider=lp))
log.info("py hello")
log.error("py failure")
lp.shutdown()

# Metrics: a counter and a histogram, exported once at shutdown.
reader = PeriodicExportingMetricReader(Checked(metric_exporter, "metrics"), export_interval_millis=3_600_000)
mp = MeterProvider(resource=resource, metric_readers=[reader])
meter = mp.get_meter("py-e2e")
meter.create_counter("py.requests").add(5, {"route": "/pay"})
meter.create_histogram("py.latency", unit="ms").record(12.5)
mp.shutdown()

if failures:
    print("export failures:", failures, file=sys.stderr)
    sys.exit(1)
print("sent")
