//! OTLP → rows (DESIGN 1.2, 1.4), shared by every decoder: the protobuf reader, OTLP/JSON, and
//! the prost-based reference that the differential tests and the benchmark baseline use. The
//! decoders hand over borrowed views ([`SpanIn`], [`EventIn`], [`LogIn`], [`PointIn`]) whose
//! attributes are already JSON text; the builders validate ids and timestamps, group spans by
//! trace, synthesize logs from span events and ERROR spans, set priority flags, apply the tenant
//! and the filters, count items for the books, and keep a running row-byte estimate that is never
//! below `Rows::heap_bytes()` and stops the decode once it passes the cap.

use super::{DecodeError, Decoded, Filtered};
use crate::config::{DecodeConfig, severity_from_name};
use crate::pipeline::batch::{
    LogRow, MetricKind, MetricPointRow, NumberValue, Received, Request, Rows, SpanId, SpanKind, SpanRow,
    StatusCode, Temporality, TraceGroup, TraceId, TraceRow, arc_str_heap,
};
use std::collections::HashMap;
use std::mem::size_of;
use std::sync::Arc;

/// Service name of a resource without a (string, non-empty) `service.name` attribute.
pub const UNKNOWN_SERVICE: &str = "unknown_service";
/// SeverityNumber of ERROR (DESIGN 1.2: ≥ 17 is priority); synthesized error logs use it.
pub const SEVERITY_ERROR: i32 = 17;
/// SeverityNumber of INFO: logs synthesized from ordinary span events.
pub const SEVERITY_INFO: i32 = 9;
/// Severity texts that make a record with SeverityNumber 0 priority (prefix, any case).
const PRIORITY_TEXT_PREFIXES: [&str; 6] = ["ERROR", "FATAL", "CRITICAL", "ALERT", "EMERG", "PANIC"];
/// Name of the span event that becomes an ERROR log (OTel semantic conventions).
pub const EXCEPTION_EVENT: &str = "exception";
/// Event attribute whose string value becomes the ERROR log's body.
pub const EXCEPTION_MESSAGE_KEY: &str = "exception.message";
/// Resource attribute naming the service.
pub const SERVICE_NAME_KEY: &str = "service.name";

/// Per-log-record priority (DESIGN 1.2).
pub fn log_priority(severity_number: i32, severity_text: &str) -> bool {
    severity_number >= SEVERITY_ERROR || (severity_number == 0 && text_is_priority(severity_text))
}

fn text_is_priority(t: &str) -> bool {
    PRIORITY_TEXT_PREFIXES
        .iter()
        .any(|p| t.as_bytes().get(..p.len()).is_some_and(|h| h.eq_ignore_ascii_case(p.as_bytes())))
}

/// The level of a record for `INGEST_MIN_SEVERITY`: its number, or for number 0 the level its
/// text names; `None` when unknown (never filtered).
fn effective_severity(number: i32, text: &str) -> Option<i32> {
    if number != 0 {
        return Some(number);
    }
    if text_is_priority(text) {
        return Some(SEVERITY_ERROR);
    }
    severity_from_name(text.trim())
}

fn ts(v: u64, what: &str) -> Result<i64, DecodeError> {
    i64::try_from(v).map_err(|_| DecodeError::invalid(format!("invalid {what}: {v} is beyond the i64 range")))
}

fn trace_id(b: &[u8], what: &str) -> Result<TraceId, DecodeError> {
    <[u8; 16]>::try_from(b)
        .map(TraceId)
        .map_err(|_| DecodeError::invalid(format!("invalid {what}: expected 16 bytes, got {}", b.len())))
}

fn span_id(b: &[u8], what: &str) -> Result<SpanId, DecodeError> {
    <[u8; 8]>::try_from(b)
        .map(SpanId)
        .map_err(|_| DecodeError::invalid(format!("invalid {what}: expected 8 bytes, got {}", b.len())))
}

fn opt_trace_id(b: &[u8], what: &str) -> Result<Option<TraceId>, DecodeError> {
    if b.is_empty() { Ok(None) } else { trace_id(b, what).map(Some) }
}

fn opt_span_id(b: &[u8], what: &str) -> Result<Option<SpanId>, DecodeError> {
    if b.is_empty() { Ok(None) } else { span_id(b, what).map(Some) }
}

/// What every builder shares: tenant, filters, current resource and scope, counts, estimate.
#[derive(Debug)]
pub struct Common<'c> {
    cfg: &'c DecodeConfig,
    tenant: Arc<str>,
    received: Received,
    items: u64,
    filtered: Filtered,
    est: u64,
    service: Arc<str>,
    resource_attributes: Arc<str>,
    scope_name: Arc<str>,
}

impl<'c> Common<'c> {
    fn new(cfg: &'c DecodeConfig, tenant: Arc<str>, received: Received, row_vec: usize) -> Self {
        let empty: Arc<str> = Arc::from("");
        Self {
            cfg,
            tenant,
            received,
            items: 0,
            filtered: Filtered::default(),
            // The outer Vec's minimum capacity (4 rows) is charged up front.
            est: (4 * row_vec) as u64,
            service: Arc::from(UNKNOWN_SERVICE),
            resource_attributes: Arc::from("{}"),
            scope_name: empty,
        }
    }

    /// Starts a resource: its `service.name` (when a string) and its attributes JSON object.
    /// Returns false when the service is filtered (allow/deny lists): the caller then skips the
    /// resource's items, reporting them through [`Common::filter_service_items`].
    pub fn resource(&mut self, service: Option<&str>, attributes: String) -> bool {
        let name = service.filter(|s| !s.is_empty()).unwrap_or(UNKNOWN_SERVICE);
        let allowed = !self.cfg.excluded_services.iter().any(|s| s == name)
            && self.cfg.allowed_services.as_ref().is_none_or(|a| a.iter().any(|s| s == name));
        if allowed {
            self.service = Arc::from(name);
            self.resource_attributes = Arc::from(attributes);
        }
        allowed
    }

    /// Starts a scope (its name; `""` when absent).
    pub fn scope(&mut self, name: &str) {
        if &*self.scope_name != name {
            self.scope_name = Arc::from(name);
        }
    }

    /// Counts `n` items of a filtered service.
    pub fn filter_service_items(&mut self, n: u64) -> Result<(), DecodeError> {
        self.count_items(n)?;
        self.filtered.service += n;
        Ok(())
    }

    fn count_items(&mut self, n: u64) -> Result<(), DecodeError> {
        self.items += n;
        let max = self.cfg.max_items_per_request as u64;
        if self.items > max {
            return Err(DecodeError::too_large(format!("request has more than {max} items")));
        }
        Ok(())
    }

    fn charge(&mut self, bytes: usize) -> Result<(), DecodeError> {
        self.est += bytes as u64;
        if self.est > self.cfg.max_bytes {
            return Err(DecodeError::too_large(format!(
                "request too large: its rows pass {} bytes (INGEST_PIPELINE_MAX_BYTES)",
                self.cfg.max_bytes
            )));
        }
        Ok(())
    }

    fn done(self, rows: Rows) -> Decoded {
        debug_assert!(self.est >= rows.heap_bytes() as u64, "estimate below heap bytes");
        Decoded {
            received_items: self.items,
            filtered: self.filtered,
            est_bytes: self.est,
            request: Request::new(rows, self.received),
        }
    }

    pub fn config(&self) -> &DecodeConfig {
        self.cfg
    }
}

/// One span as read from the request.
#[derive(Debug, Default)]
pub struct SpanIn<'a> {
    pub trace_id: &'a [u8],
    pub span_id: &'a [u8],
    pub parent_span_id: &'a [u8],
    pub name: &'a str,
    pub kind: i32,
    pub start_time_unix_nano: u64,
    pub end_time_unix_nano: u64,
    pub status_code: i32,
    pub status_message: &'a str,
    /// JSON object text.
    pub attributes: String,
}

/// One span event (becomes a log row).
#[derive(Debug, Default)]
pub struct EventIn<'a> {
    pub time_unix_nano: u64,
    pub name: &'a str,
    pub attributes: String,
    /// The string value of its `exception.message` attribute (last wins), if any.
    pub exception_message: Option<&'a str>,
}

/// The state of the span whose events are being added.
#[derive(Debug)]
struct CurSpan {
    group: usize,
    events: usize,
    had_exception: bool,
}

/// Builds [`Rows::Traces`].
#[derive(Debug)]
pub struct TracesBuilder<'c> {
    pub common: Common<'c>,
    groups: Vec<TraceGroup>,
    index: HashMap<TraceId, usize>,
    last: Option<(TraceId, usize)>,
    cur: Option<CurSpan>,
    slow_ns: Option<u64>,
}

impl<'c> TracesBuilder<'c> {
    pub fn new(cfg: &'c DecodeConfig, tenant: Arc<str>, received: Received) -> Self {
        Self {
            common: Common::new(cfg, tenant, received, size_of::<TraceGroup>()),
            groups: Vec::new(),
            index: HashMap::new(),
            last: None,
            cur: None,
            slow_ns: cfg.slow_threshold_nanos(),
        }
    }

    fn group_of(
        &mut self,
        tid: TraceId,
        service: &Arc<str>,
        start: i64,
        end: i64,
    ) -> Result<usize, DecodeError> {
        if let Some((_, g)) = self.last.filter(|(t, _)| *t == tid) {
            return Ok(g);
        }
        if let Some(&g) = self.index.get(&tid) {
            self.last = Some((tid, g));
            return Ok(g);
        }
        let c = &self.common;
        let trace = TraceRow {
            tenant_id: c.tenant.clone(),
            trace_id: tid,
            service_name: service.clone(),
            has_root: false,
            start_time_unix_nano: start,
            end_time_unix_nano: end,
            status: StatusCode::Unset,
            priority: false,
        };
        // The group itself (twice: Vec growth), its trace row, and the minimum capacity (4) of
        // its span and log vectors.
        let bytes = 2 * size_of::<TraceGroup>()
            + trace.heap_bytes()
            + 4 * (size_of::<SpanRow>() + size_of::<LogRow>());
        self.common.charge(bytes)?;
        let g = self.groups.len();
        self.groups.push(TraceGroup { trace, spans: Vec::new(), logs: Vec::new() });
        self.index.insert(tid, g);
        self.last = Some((tid, g));
        Ok(g)
    }

    /// Adds a span; its events follow through [`TracesBuilder::event`], then
    /// [`TracesBuilder::end_span`].
    pub fn span(&mut self, s: SpanIn<'_>) -> Result<(), DecodeError> {
        self.end_span()?;
        self.common.count_items(1)?;
        let tid = trace_id(s.trace_id, "span traceId")?;
        let sid = span_id(s.span_id, "span spanId")?;
        let parent = opt_span_id(s.parent_span_id, "span parentSpanId")?;
        let start = ts(s.start_time_unix_nano, "span startTimeUnixNano")?;
        let end = ts(s.end_time_unix_nano, "span endTimeUnixNano")?;
        let status = StatusCode::from_i32(s.status_code);
        let service = self.common.service.clone();
        let g = self.group_of(tid, &service, start, end)?;
        let slow = self.slow_ns.is_some_and(|t| end > start && (end.abs_diff(start)) >= t);
        let c = &self.common;
        let row = SpanRow {
            tenant_id: c.tenant.clone(),
            trace_id: tid,
            span_id: sid,
            parent_span_id: parent,
            name: s.name.to_owned(),
            kind: SpanKind::from_i32(s.kind),
            service_name: service.clone(),
            start_time_unix_nano: start,
            end_time_unix_nano: end,
            status_code: status,
            status_message: s.status_message.to_owned(),
            attributes: s.attributes,
            resource_attributes: c.resource_attributes.clone(),
            scope_name: c.scope_name.clone(),
        };
        let mut bytes = row.heap_bytes() + 2 * size_of::<SpanRow>();
        let Some(group) = self.groups.get_mut(g) else {
            return Err(DecodeError::invalid("internal: trace group missing"));
        };
        let t = &mut group.trace;
        t.start_time_unix_nano = t.start_time_unix_nano.min(start);
        t.end_time_unix_nano = t.end_time_unix_nano.max(end);
        t.status = t.status.max(status);
        t.priority |= status == StatusCode::Error || slow;
        if parent.is_none() && !t.has_root {
            t.has_root = true;
            if !Arc::ptr_eq(&t.service_name, &service) {
                bytes += arc_str_heap(&service);
                t.service_name = service;
            }
        }
        group.spans.push(row);
        self.cur = Some(CurSpan { group: g, events: 0, had_exception: false });
        self.common.charge(bytes)
    }

    /// Adds an event of the current span as a log row (`exception` → ERROR with the
    /// `exception.message` body; others INFO with the event name as body).
    pub fn event(&mut self, e: EventIn<'_>) -> Result<(), DecodeError> {
        let max = self.common.cfg.max_events_per_span;
        let Some(cur) = self.cur.as_mut() else {
            return Err(DecodeError::invalid("internal: event without a span"));
        };
        cur.events += 1;
        if cur.events > max {
            return Err(DecodeError::limit(format!("span has more than {max} events")));
        }
        let is_exc = e.name == EXCEPTION_EVENT;
        cur.had_exception |= is_exc;
        let g = cur.group;
        let time = ts(e.time_unix_nano, "event timeUnixNano")?;
        let (sev, sev_text, body) = if is_exc {
            (SEVERITY_ERROR, "ERROR", e.exception_message.unwrap_or(e.name).to_owned())
        } else {
            (SEVERITY_INFO, "INFO", e.name.to_owned())
        };
        self.synth_log(g, time, sev, sev_text, body, e.attributes)
    }

    fn synth_log(
        &mut self,
        g: usize,
        time: i64,
        sev: i32,
        sev_text: &str,
        body: String,
        attributes: String,
    ) -> Result<(), DecodeError> {
        let c = &self.common;
        let Some(group) = self.groups.get_mut(g) else {
            return Err(DecodeError::invalid("internal: trace group missing"));
        };
        let Some(span) = group.spans.last() else {
            return Err(DecodeError::invalid("internal: span missing"));
        };
        let row = LogRow {
            tenant_id: c.tenant.clone(),
            time_unix_nano: time,
            observed_time_unix_nano: time,
            severity_number: sev,
            severity_text: sev_text.to_owned(),
            body: Some(body),
            trace_id: Some(span.trace_id),
            span_id: Some(span.span_id),
            service_name: span.service_name.clone(),
            attributes,
            resource_attributes: span.resource_attributes.clone(),
            scope_name: span.scope_name.clone(),
            priority: false,
        };
        let bytes = row.heap_bytes() + 2 * size_of::<LogRow>();
        group.logs.push(row);
        self.common.charge(bytes)
    }

    /// Ends the current span: an ERROR span without an `exception` event gets one ERROR log
    /// (its status message, or `span '<name>' failed`). Called by `span` and `finish` too.
    pub fn end_span(&mut self) -> Result<(), DecodeError> {
        let Some(cur) = self.cur.take() else {
            return Ok(());
        };
        if cur.had_exception {
            return Ok(());
        }
        let Some(span) = self.groups.get(cur.group).and_then(|g| g.spans.last()) else {
            return Ok(());
        };
        if span.status_code != StatusCode::Error {
            return Ok(());
        }
        let body = if span.status_message.is_empty() {
            format!("span '{}' failed", span.name)
        } else {
            span.status_message.clone()
        };
        let time = span.end_time_unix_nano;
        self.synth_log(cur.group, time, SEVERITY_ERROR, "ERROR", body, "{}".to_owned())
    }

    pub fn finish(mut self) -> Result<Decoded, DecodeError> {
        self.end_span()?;
        for g in &mut self.groups {
            let p = g.trace.priority;
            for l in &mut g.logs {
                l.priority = p;
            }
        }
        Ok(self.common.done(Rows::Traces(self.groups)))
    }
}

/// One log record as read from the request.
#[derive(Debug, Default)]
pub struct LogIn<'a> {
    pub time_unix_nano: u64,
    pub observed_time_unix_nano: u64,
    pub severity_number: i32,
    pub severity_text: &'a str,
    /// A string body as is, any other body as JSON text, `None` when absent.
    pub body: Option<String>,
    pub trace_id: &'a [u8],
    pub span_id: &'a [u8],
    pub attributes: String,
}

/// Builds [`Rows::Logs`].
#[derive(Debug)]
pub struct LogsBuilder<'c> {
    pub common: Common<'c>,
    rows: Vec<LogRow>,
}

impl<'c> LogsBuilder<'c> {
    pub fn new(cfg: &'c DecodeConfig, tenant: Arc<str>, received: Received) -> Self {
        Self { common: Common::new(cfg, tenant, received, size_of::<LogRow>()), rows: Vec::new() }
    }

    /// Counts a record filtered by `INGEST_MIN_SEVERITY` and returns true, or returns false
    /// (nothing counted) when the record is kept: call before building its body and attributes.
    pub fn filter_severity(&mut self, number: i32, text: &str) -> Result<bool, DecodeError> {
        let Some(min) = self.common.cfg.min_severity else {
            return Ok(false);
        };
        if effective_severity(number, text).is_some_and(|s| s < min) {
            self.common.count_items(1)?;
            self.common.filtered.min_severity += 1;
            return Ok(true);
        }
        Ok(false)
    }

    /// Adds a log record (applying the severity filter too).
    pub fn log(&mut self, l: LogIn<'_>) -> Result<(), DecodeError> {
        if self.filter_severity(l.severity_number, l.severity_text)? {
            return Ok(());
        }
        self.common.count_items(1)?;
        let c = &self.common;
        let row = LogRow {
            tenant_id: c.tenant.clone(),
            time_unix_nano: ts(l.time_unix_nano, "log timeUnixNano")?,
            observed_time_unix_nano: ts(l.observed_time_unix_nano, "log observedTimeUnixNano")?,
            severity_number: l.severity_number,
            severity_text: l.severity_text.to_owned(),
            body: l.body,
            trace_id: opt_trace_id(l.trace_id, "log traceId")?,
            span_id: opt_span_id(l.span_id, "log spanId")?,
            service_name: c.service.clone(),
            attributes: l.attributes,
            resource_attributes: c.resource_attributes.clone(),
            scope_name: c.scope_name.clone(),
            priority: log_priority(l.severity_number, l.severity_text),
        };
        let bytes = row.heap_bytes() + 2 * size_of::<LogRow>();
        self.rows.push(row);
        self.common.charge(bytes)
    }

    pub fn finish(self) -> Result<Decoded, DecodeError> {
        Ok(self.common.done(Rows::Logs(self.rows)))
    }
}

/// One data point as read from the request (any of the five kinds). Array columns are JSON
/// array text.
#[derive(Debug, Clone)]
pub struct PointIn {
    pub kind: MetricKind,
    pub temporality: Option<Temporality>,
    pub is_monotonic: Option<bool>,
    pub time_unix_nano: u64,
    pub start_time_unix_nano: u64,
    pub value: Option<NumberValue>,
    pub count: Option<u64>,
    pub sum: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub bucket_counts: Option<String>,
    pub explicit_bounds: Option<String>,
    pub scale: Option<i32>,
    pub zero_count: Option<u64>,
    pub positive_offset: Option<i32>,
    pub positive_bucket_counts: Option<String>,
    pub negative_offset: Option<i32>,
    pub negative_bucket_counts: Option<String>,
    pub quantiles: Option<String>,
    pub attributes: String,
}

impl PointIn {
    /// An empty point of `kind` (every optional column `None`).
    pub fn new(kind: MetricKind) -> Self {
        Self {
            kind,
            temporality: None,
            is_monotonic: None,
            time_unix_nano: 0,
            start_time_unix_nano: 0,
            value: None,
            count: None,
            sum: None,
            min: None,
            max: None,
            bucket_counts: None,
            explicit_bounds: None,
            scale: None,
            zero_count: None,
            positive_offset: None,
            positive_bucket_counts: None,
            negative_offset: None,
            negative_bucket_counts: None,
            quantiles: None,
            attributes: String::new(),
        }
    }
}

/// Builds [`Rows::Metrics`].
#[derive(Debug)]
pub struct MetricsBuilder<'c> {
    pub common: Common<'c>,
    rows: Vec<MetricPointRow>,
    name: Arc<str>,
    description: Arc<str>,
    unit: Arc<str>,
}

impl<'c> MetricsBuilder<'c> {
    pub fn new(cfg: &'c DecodeConfig, tenant: Arc<str>, received: Received) -> Self {
        let empty: Arc<str> = Arc::from("");
        Self {
            common: Common::new(cfg, tenant, received, size_of::<MetricPointRow>()),
            rows: Vec::new(),
            name: empty.clone(),
            description: empty.clone(),
            unit: empty,
        }
    }

    /// Reserves room for `n` more points (the decoder counts a metric's points first), unless
    /// their rows alone would pass the byte cap (then: "too large", before allocating).
    pub fn reserve(&mut self, n: usize) -> Result<(), DecodeError> {
        let bytes = n.saturating_mul(2 * size_of::<MetricPointRow>()) as u64;
        if self.common.est.saturating_add(bytes) > self.common.cfg.max_bytes {
            return Err(DecodeError::too_large(format!(
                "request too large: its rows pass {} bytes (INGEST_PIPELINE_MAX_BYTES)",
                self.common.cfg.max_bytes
            )));
        }
        self.rows.reserve(n);
        Ok(())
    }

    /// Starts a metric.
    pub fn metric(&mut self, name: &str, description: &str, unit: &str) {
        self.name = Arc::from(name);
        self.description = Arc::from(description);
        self.unit = Arc::from(unit);
    }

    pub fn point(&mut self, p: PointIn) -> Result<(), DecodeError> {
        self.common.count_items(1)?;
        let c = &self.common;
        let row = MetricPointRow {
            tenant_id: c.tenant.clone(),
            service_name: c.service.clone(),
            name: self.name.clone(),
            description: self.description.clone(),
            unit: self.unit.clone(),
            kind: p.kind,
            temporality: p.temporality,
            is_monotonic: p.is_monotonic,
            time_unix_nano: ts(p.time_unix_nano, "data point timeUnixNano")?,
            start_time_unix_nano: ts(p.start_time_unix_nano, "data point startTimeUnixNano")?,
            value: p.value,
            count: p.count,
            sum: p.sum,
            min: p.min,
            max: p.max,
            bucket_counts: p.bucket_counts,
            explicit_bounds: p.explicit_bounds,
            scale: p.scale,
            zero_count: p.zero_count,
            positive_offset: p.positive_offset,
            positive_bucket_counts: p.positive_bucket_counts,
            negative_offset: p.negative_offset,
            negative_bucket_counts: p.negative_bucket_counts,
            quantiles: p.quantiles,
            attributes: p.attributes,
            resource_attributes: c.resource_attributes.clone(),
            scope_name: c.scope_name.clone(),
        };
        let bytes = row.heap_bytes() + 2 * size_of::<MetricPointRow>();
        self.rows.push(row);
        self.common.charge(bytes)
    }

    pub fn finish(self) -> Result<Decoded, DecodeError> {
        Ok(self.common.done(Rows::Metrics(self.rows)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_priority_by_number_and_text() {
        assert!(log_priority(17, ""));
        assert!(log_priority(24, "info"));
        assert!(!log_priority(16, "ERROR"));
        assert!(log_priority(0, "error: disk"));
        assert!(log_priority(0, "Critical"));
        assert!(log_priority(0, "emergency"));
        assert!(log_priority(0, "PANIC"));
        assert!(log_priority(0, "alert"));
        assert!(log_priority(0, "fatal"));
        assert!(!log_priority(0, "warn"));
        assert!(!log_priority(0, "ERR"));
        assert!(!log_priority(0, ""));
    }

    #[test]
    fn effective_severity_from_text() {
        assert_eq!(effective_severity(0, "warn"), Some(13));
        assert_eq!(effective_severity(0, "Errors everywhere"), Some(17));
        assert_eq!(effective_severity(0, "verbose"), None);
        assert_eq!(effective_severity(3, "ERROR"), Some(3));
    }
}
