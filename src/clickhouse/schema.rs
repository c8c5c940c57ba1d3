//! The ClickHouse schema (DESIGN 1.8): one local table per kind of row on every node, and a
//! `Distributed` table of the same name without `_local` over them for queries.
//!
//! Only what ClickHouse 18.16 (the version CI installs from Debian) and current releases both
//! accept: no `Map` (attributes are `Nested(keys, values, numbers)` arrays), no `DateTime64` (a
//! `DateTime` for partitions and humans plus a `UInt64` nanosecond column), no codecs, skip
//! indexes or TTL. Column names follow the OpenTelemetry Collector contrib exporter.
//!
//! Deduplication: every local table is a `ReplacingMergeTree` whose sorting key is the item's
//! identity (a span: tenant, trace id, span id; a log record or a metric point: tenant, service,
//! time and a 64-bit FNV-1a hash of every other column). A DLQ replay or a client retry inserts
//! the same rows again; the duplicates collapse at the next merge and are invisible at once to
//! queries with `FINAL` (or `argMax` / `GROUP BY` on the identity), which is what
//! docs/CLICKHOUSE.md's queries use. An item's identity never changes its partition (the
//! partition is its own day), and a trace always goes to one node, so the duplicates of an item
//! always meet in one table part set.
//!
//! Versioning: `otelring_schema` (a small `TinyLog` table on every node) records the schema
//! versions applied; a node that holds a newer version than this build refuses to start.

/// This build's schema version (recorded in `<database>.otelring_schema`).
pub const SCHEMA_VERSION: u32 = 1;

/// Name of the version table.
pub const VERSION_TABLE: &str = "otelring_schema";

/// Suffix of the per-node tables the writers insert into.
pub const LOCAL_SUFFIX: &str = "_local";

/// One table: its cluster-wide name, columns (name, type) and sorting key.
#[derive(Debug)]
pub struct Table {
    pub name: &'static str,
    pub columns: &'static [(&'static str, &'static str)],
    pub order_by: &'static str,
    pub partition_by: &'static str,
}

/// Attribute columns of one map: `<Name>.keys`, `<Name>.values` (every value as text: strings
/// as is, numbers in decimal, booleans `true`/`false`, arrays and kvlists as JSON) and
/// `<Name>.numbers` (the value as Float64 for ints and doubles, NaN otherwise), so numbers stay
/// numbers: `SpanAttributes.numbers[indexOf(SpanAttributes.keys, 'http.status_code')] >= 500`.
macro_rules! attrs {
    ($n:literal) => {
        [
            (concat!($n, ".keys"), "Array(String)"),
            (concat!($n, ".values"), "Array(String)"),
            (concat!($n, ".numbers"), "Array(Float64)"),
        ]
    };
}

const fn cat<const A: usize, const B: usize, const C: usize>(
    a: [(&'static str, &'static str); A],
    b: [(&'static str, &'static str); B],
) -> [(&'static str, &'static str); C] {
    let mut out = [("", ""); C];
    let mut i = 0;
    while i < A {
        out[i] = a[i];
        i += 1;
    }
    let mut j = 0;
    while j < B {
        out[A + j] = b[j];
        j += 1;
    }
    out
}

const SPAN_HEAD: [(&str, &str); 16] = [
    ("Timestamp", "DateTime"),
    ("TimestampNs", "UInt64"),
    ("TenantId", "String"),
    ("TraceId", "String"),
    ("SpanId", "String"),
    ("ParentSpanId", "String"),
    ("SpanName", "String"),
    ("SpanKind", "String"),
    ("ServiceName", "String"),
    ("ScopeName", "String"),
    ("Duration", "UInt64"),
    ("StatusCode", "String"),
    ("StatusMessage", "String"),
    ("IngestedAt", "DateTime"),
    ("EndTimestampNs", "UInt64"),
    ("IngestedAtNs", "UInt64"),
];
const ATTRS2: [(&str, &str); 6] = cat::<3, 3, 6>(attrs!("ResourceAttributes"), attrs!("SpanAttributes"));
const SPAN_COLUMNS: [(&str, &str); 22] = cat::<16, 6, 22>(SPAN_HEAD, ATTRS2);

const LOG_HEAD: [(&str, &str); 15] = [
    ("Timestamp", "DateTime"),
    ("TimestampNs", "UInt64"),
    ("ObservedTimestampNs", "UInt64"),
    ("TenantId", "String"),
    ("TraceId", "String"),
    ("SpanId", "String"),
    ("SeverityText", "String"),
    ("SeverityNumber", "Int32"),
    ("ServiceName", "String"),
    ("Body", "String"),
    ("ScopeName", "String"),
    ("LogId", "UInt64"),
    ("IngestedAt", "DateTime"),
    ("IngestedAtNs", "UInt64"),
    ("HasBody", "UInt8"),
];
const LOG_ATTRS: [(&str, &str); 6] = cat::<3, 3, 6>(attrs!("ResourceAttributes"), attrs!("LogAttributes"));
const LOG_COLUMNS: [(&str, &str); 21] = cat::<15, 6, 21>(LOG_HEAD, LOG_ATTRS);

/// Columns every metric table starts with.
const METRIC_HEAD: [(&str, &str); 13] = [
    ("TimeUnix", "DateTime"),
    ("TimeUnixNano", "UInt64"),
    ("StartTimeUnixNano", "UInt64"),
    ("TenantId", "String"),
    ("ServiceName", "String"),
    ("MetricName", "String"),
    ("MetricDescription", "String"),
    ("MetricUnit", "String"),
    ("ScopeName", "String"),
    ("PointId", "UInt64"),
    ("IngestedAt", "DateTime"),
    ("IngestedAtNs", "UInt64"),
    ("AggregationTemporality", "String"),
];
const METRIC_ATTRS: [(&str, &str); 6] = cat::<3, 3, 6>(attrs!("ResourceAttributes"), attrs!("Attributes"));
const METRIC_BASE: [(&str, &str); 19] = cat::<13, 6, 19>(METRIC_HEAD, METRIC_ATTRS);

const GAUGE_COLUMNS: [(&str, &str); 21] =
    cat::<19, 2, 21>(METRIC_BASE, [("Value", "Float64"), ("ValueIsInt", "UInt8")]);
const SUM_COLUMNS: [(&str, &str); 22] =
    cat::<19, 3, 22>(METRIC_BASE, [("Value", "Float64"), ("ValueIsInt", "UInt8"), ("IsMonotonic", "UInt8")]);
const HISTOGRAM_COLUMNS: [(&str, &str); 25] = cat::<19, 6, 25>(
    METRIC_BASE,
    [
        ("Count", "UInt64"),
        ("Sum", "Nullable(Float64)"),
        ("BucketCounts", "Array(UInt64)"),
        ("ExplicitBounds", "Array(Float64)"),
        ("Min", "Nullable(Float64)"),
        ("Max", "Nullable(Float64)"),
    ],
);
const EXP_HISTOGRAM_COLUMNS: [(&str, &str); 29] = cat::<19, 10, 29>(
    METRIC_BASE,
    [
        ("Count", "UInt64"),
        ("Sum", "Nullable(Float64)"),
        ("Scale", "Int32"),
        ("ZeroCount", "UInt64"),
        ("PositiveOffset", "Int32"),
        ("PositiveBucketCounts", "Array(UInt64)"),
        ("NegativeOffset", "Int32"),
        ("NegativeBucketCounts", "Array(UInt64)"),
        ("Min", "Nullable(Float64)"),
        ("Max", "Nullable(Float64)"),
    ],
);
const SUMMARY_COLUMNS: [(&str, &str); 23] = cat::<19, 4, 23>(
    METRIC_BASE,
    [
        ("Count", "UInt64"),
        ("Sum", "Float64"),
        ("ValueAtQuantiles.Quantile", "Array(Float64)"),
        ("ValueAtQuantiles.Value", "Array(Float64)"),
    ],
);

const METRIC_ORDER: &str = "(TenantId, ServiceName, MetricName, TimeUnixNano, PointId)";
const DAY_OF_TIME: &str = "toDate(TimeUnix)";

pub const TRACES: Table = Table {
    name: "otel_traces",
    columns: &SPAN_COLUMNS,
    order_by: "(TenantId, TraceId, SpanId)",
    partition_by: "toDate(Timestamp)",
};
pub const LOGS: Table = Table {
    name: "otel_logs",
    columns: &LOG_COLUMNS,
    order_by: "(TenantId, ServiceName, TimestampNs, LogId)",
    partition_by: "toDate(Timestamp)",
};
pub const GAUGE: Table = Table {
    name: "otel_metrics_gauge",
    columns: &GAUGE_COLUMNS,
    order_by: METRIC_ORDER,
    partition_by: DAY_OF_TIME,
};
pub const SUM: Table = Table {
    name: "otel_metrics_sum",
    columns: &SUM_COLUMNS,
    order_by: METRIC_ORDER,
    partition_by: DAY_OF_TIME,
};
pub const HISTOGRAM: Table = Table {
    name: "otel_metrics_histogram",
    columns: &HISTOGRAM_COLUMNS,
    order_by: METRIC_ORDER,
    partition_by: DAY_OF_TIME,
};
pub const EXP_HISTOGRAM: Table = Table {
    name: "otel_metrics_exponential_histogram",
    columns: &EXP_HISTOGRAM_COLUMNS,
    order_by: METRIC_ORDER,
    partition_by: DAY_OF_TIME,
};
pub const SUMMARY: Table = Table {
    name: "otel_metrics_summary",
    columns: &SUMMARY_COLUMNS,
    order_by: METRIC_ORDER,
    partition_by: DAY_OF_TIME,
};

/// Every table, in insert order (traces, logs, metric kinds).
pub const TABLES: [&Table; 7] = [&TRACES, &LOGS, &GAUGE, &SUM, &HISTOGRAM, &EXP_HISTOGRAM, &SUMMARY];

/// Quotes an identifier with backticks (names with dots are the flattened `Nested` columns).
fn ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

impl Table {
    /// `CREATE TABLE IF NOT EXISTS <db>.<name>_local (...) ENGINE = ReplacingMergeTree ...`.
    /// `Nested` groups are spelled as their flattened `Array` columns (`a.keys Array(String)`),
    /// which every ClickHouse release reads as the same nested structure.
    pub fn create_local(&self, db: &str) -> String {
        let cols: Vec<String> = self.columns.iter().map(|(n, t)| format!("{} {t}", ident(n))).collect();
        format!(
            "CREATE TABLE IF NOT EXISTS {}.{} ({}) ENGINE = ReplacingMergeTree PARTITION BY {} ORDER BY {}",
            ident(db),
            ident(&self.local_name()),
            cols.join(", "),
            self.partition_by,
            self.order_by
        )
    }

    /// `CREATE TABLE IF NOT EXISTS <db>.<name> AS <db>.<name>_local ENGINE = Distributed(...)`.
    /// No sharding key: otelring inserts into the local tables itself (shard i → node i mod
    /// nodes); the Distributed table serves queries.
    pub fn create_distributed(&self, db: &str, cluster: &str) -> String {
        format!(
            "CREATE TABLE IF NOT EXISTS {db_q}.{} AS {db_q}.{} ENGINE = Distributed({}, {}, {})",
            ident(self.name),
            ident(&self.local_name()),
            ident(cluster),
            ident(db),
            ident(&self.local_name()),
            db_q = ident(db),
        )
    }

    pub fn local_name(&self) -> String {
        format!("{}{LOCAL_SUFFIX}", self.name)
    }

    /// The INSERT statement of one RowBinary body (columns in [`Table::columns`] order).
    pub fn insert(&self, db: &str) -> String {
        let cols: Vec<String> = self.columns.iter().map(|(n, _)| ident(n)).collect();
        format!(
            "INSERT INTO {}.{} ({}) FORMAT RowBinary",
            ident(db),
            ident(&self.local_name()),
            cols.join(", ")
        )
    }
}

/// `CREATE DATABASE IF NOT EXISTS`.
pub fn create_database(db: &str) -> String {
    format!("CREATE DATABASE IF NOT EXISTS {}", ident(db))
}

pub fn create_version_table(db: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {}.{} (version UInt32, applied_at DateTime) ENGINE = TinyLog",
        ident(db),
        ident(VERSION_TABLE)
    )
}

pub fn read_version(db: &str) -> String {
    format!("SELECT max(version) FROM {}.{}", ident(db), ident(VERSION_TABLE))
}

pub fn record_version(db: &str) -> String {
    format!(
        "INSERT INTO {}.{} (version, applied_at) VALUES ({SCHEMA_VERSION}, now())",
        ident(db),
        ident(VERSION_TABLE)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_has_unique_columns_and_its_key_columns() {
        for t in TABLES {
            let mut names: Vec<&str> = t.columns.iter().map(|c| c.0).collect();
            assert!(names.iter().all(|n| !n.is_empty()), "{}", t.name);
            names.sort_unstable();
            let before = names.len();
            names.dedup();
            assert_eq!(before, names.len(), "{}: duplicate column", t.name);
            for key in t.order_by.trim_matches(|c| c == '(' || c == ')').split(", ") {
                assert!(names.contains(&key), "{}: key column {key} missing", t.name);
            }
        }
    }

    #[test]
    fn ddl_names_the_local_table_and_the_cluster() {
        let d = TRACES.create_distributed("otel", "c1");
        assert_eq!(
            d,
            "CREATE TABLE IF NOT EXISTS `otel`.`otel_traces` AS `otel`.`otel_traces_local` \
             ENGINE = Distributed(`c1`, `otel`, `otel_traces_local`)"
        );
        assert!(LOGS.create_local("otel").contains("`LogAttributes.numbers` Array(Float64)"));
        assert!(
            GAUGE.insert("otel").starts_with("INSERT INTO `otel`.`otel_metrics_gauge_local` (`TimeUnix`")
        );
    }
}
