"""Parses an otelring /metrics exposition with the official Prometheus parser and checks the books
(DESIGN 1.7) per signal:

received + dlq_recovered = persisted + dropped + rejected + filtered + lost + dlq_pending + in_flight

Prints one line per signal; exits 1 when a signal does not balance or a metric is missing.
"""

import sys
from collections import defaultdict

from prometheus_client.parser import text_string_to_metric_families

text = open(sys.argv[1]).read()
values = defaultdict(float)
seen = set()
for family in text_string_to_metric_families(text):
    for s in family.samples:
        seen.add(s.name)
        signal = s.labels.get("signal")
        if signal is not None:
            values[(s.name, signal)] += s.value

def total(name, signal):
    if name not in seen:
        print(f"missing metric {name}", file=sys.stderr)
        sys.exit(1)
    return values[(name, signal)]

ok = True
for signal in ("traces", "logs", "metrics"):
    left = total("otelring_ingest_received_items_total", signal) + total("otelring_dlq_recovered_items_total", signal)
    parts = {
        "persisted": total("otelring_ingest_persisted_items_total", signal),
        "dropped": total("otelring_ingest_dropped_items_total", signal),
        "rejected": total("otelring_ingest_rejected_items_total", signal),
        "filtered": total("otelring_ingest_filtered_items_total", signal),
        "lost": total("otelring_ingest_lost_items_total", signal),
        "dlq_pending": total("otelring_dlq_pending_items", signal),
        "in_flight": total("otelring_ingest_in_flight_items", signal),
    }
    right = sum(parts.values())
    balanced = left == right
    ok &= balanced
    print(f"{signal} received={int(left)} " + " ".join(f"{k}={int(v)}" for k, v in parts.items())
          + (" balanced" if balanced else " UNBALANCED"))
sys.exit(0 if ok else 1)
