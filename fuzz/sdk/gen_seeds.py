"""Writes fuzz seeds made by the official OpenTelemetry Python SDK and its OTLP protobuf encoders.

    python3 -m venv v && v/bin/pip install opentelemetry-sdk opentelemetry-exporter-otlp-proto-common
    v/bin/python fuzz/sdk/gen_seeds.py fuzz/seeds

Every metric type the SDK produces (sum: counter and up-down counter, gauge, explicit histogram,
exponential histogram), spans with events, an exception and an error status, and logs of several
severities with trace context and a map body.
"""
import logging
import os
import sys

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.metrics import Observation
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import InMemoryLogExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.metrics.view import ExponentialBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode

out = sys.argv[1]
res = Resource.create({"service.name": "sdk-seed", "deployment.environment": "test", "host.cpus": 2})


def put(targets, name, data):
    for t in targets:
        os.makedirs(os.path.join(out, t), exist_ok=True)
        with open(os.path.join(out, t, name), "wb") as f:
            f.write(data)


# Traces
exp = InMemorySpanExporter()
tp = TracerProvider(resource=res)
tp.add_span_processor(SimpleSpanProcessor(exp))
tr = tp.get_tracer("seed.tracer", "1.0")
with tr.start_as_current_span("GET /orders", kind=trace.SpanKind.SERVER) as root:
    root.set_attribute("http.method", "GET")
    root.set_attribute("http.status_code", 200)
    root.set_attribute("ratio", 0.5)
    root.set_attribute("tags", ["a", "b"])
    root.set_attribute("ids", [1, 2, 3])
    root.add_event("cache.miss", {"key": "user:1"})
    with tr.start_as_current_span("SELECT orders", kind=trace.SpanKind.CLIENT) as child:
        child.set_attribute("db.system", "postgresql")
        try:
            raise ValueError("invalid literal for int() with base 10: 'x'")
        except ValueError as e:
            child.record_exception(e)
            child.set_status(Status(StatusCode.ERROR, "query failed"))
    with tr.start_as_current_span("render") as r2:
        r2.set_status(Status(StatusCode.ERROR))
    with tr.start_as_current_span("ok") as r3:
        r3.set_status(Status(StatusCode.OK))
spans = exp.get_finished_spans()
pb = encode_spans(spans).SerializeToString()
put(["proto_traces", "json_traces"], "python_sdk_spans.pb", pb)
framed = b"\x00" + len(pb).to_bytes(4, "big") + pb
put(["grpc_frame"], "python_sdk_spans.grpc", framed)

# Logs
lexp = InMemoryLogExporter()
lp = LoggerProvider(resource=res)
lp.add_log_record_processor(SimpleLogRecordProcessor(lexp))
handler = LoggingHandler(level=logging.DEBUG, logger_provider=lp)
log = logging.getLogger("seed.logger")
log.setLevel(logging.DEBUG)
log.addHandler(handler)
log.debug("debug message")
log.info("info with extra", extra={"user.id": 42, "flag": True})
log.warning("warning")
with tr.start_as_current_span("logging-span"):
    log.error("error inside a span")
log.critical("critical failure")
try:
    1 / 0
except ZeroDivisionError:
    log.exception("division failed")
lp.force_flush()
pb = encode_logs(lexp.get_finished_logs()).SerializeToString()
put(["proto_logs", "json_logs"], "python_sdk_logs.pb", pb)

# Metrics: every type the SDK makes.
reader = InMemoryMetricReader()
mp = MeterProvider(
    resource=res,
    metric_readers=[reader],
    views=[View(instrument_name="rpc.duration", aggregation=ExponentialBucketHistogramAggregation())],
)
m = mp.get_meter("seed.meter", "1.0")
c = m.create_counter("requests", unit="{request}", description="Requests")
c.add(5, {"route": "/a"})
c.add(2.5, {"route": "/b"})
u = m.create_up_down_counter("queue.depth")
u.add(-3)
h = m.create_histogram("http.server.duration", unit="ms")
for v in [0.5, 7, 12, 300, 12000]:
    h.record(v, {"route": "/a"})
e = m.create_histogram("rpc.duration", unit="ms")
for v in [0.001, 1, 2, 4, 1000, -1 if False else 0]:
    e.record(v)
m.create_observable_gauge("cpu.temp", callbacks=[lambda o: [Observation(61.5, {"core": 0}), Observation(-1, {"core": 1})]])
try:
    g = m.create_gauge("memory.used", unit="By")
    g.set(123456789)
except AttributeError:
    pass
data = reader.get_metrics_data()
pb = encode_metrics(data).SerializeToString()
put(["proto_metrics", "json_metrics"], "python_sdk_metrics.pb", pb)
print("ok")
