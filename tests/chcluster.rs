//! The ClickHouse test harness: a real 2-shard ClickHouse cluster (Debian's `clickhouse-server`,
//! installed by `.ci/run`) on free loopback ports, each node a foreground process with its config
//! and data in a temp dir; and the otelring release binary started against it.
//!
//! Nodes are stopped by pid (SIGKILL: their data is thrown away with the temp dir) when the
//! [`Cluster`] is dropped, also when a test fails; otelring processes likewise by [`Otelring`]'s
//! drop.

#![allow(dead_code)]

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian installs the server.
pub const SERVER: &str = "/usr/sbin/clickhouse-server";
/// Longest wait for a node to answer `/ping` after its start (measured ~0.3 s idle; a shared
/// 2-core machine under a build takes several seconds).
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// The cluster name in the nodes' `<remote_servers>`.
pub const CLUSTER: &str = "otel_test";

/// One node: its ports, config and process.
pub struct ChNode {
    pub http: u16,
    pub tcp: u16,
    dir: PathBuf,
    child: Option<Child>,
}

/// A running 2-node cluster.
pub struct Cluster {
    pub nodes: Vec<ChNode>,
    _dir: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
    client: reqwest::Client,
}

/// Lowest and highest port the harness gives a node: below Linux's ephemeral range
/// (`ip_local_port_range`, 32768–60999 by default). A node killed and restarted must get its
/// ports back, and a port from the ephemeral range can be taken meanwhile as the source port of
/// any outgoing connection (a client's, otelring's), so the restarted node could not listen.
const PORT_RANGE: (u16, u16) = (12_000, 32_000);

/// A port in [`PORT_RANGE`] that binds now (random start, so parallel test processes rarely
/// pick the same one).
fn free_port() -> u16 {
    let span = u32::from(PORT_RANGE.1 - PORT_RANGE.0);
    let seed =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos())
            ^ std::process::id().wrapping_mul(2_654_435_761);
    for i in 0..span {
        let port = PORT_RANGE.0 + ((seed.wrapping_add(i.wrapping_mul(7_919))) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {PORT_RANGE:?}");
}

fn write_config(dir: &Path, http: u16, tcp: u16, interserver: u16, shards: &[u16]) {
    for sub in ["data", "tmp", "format_schemas", "user_files"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    let replicas: String = shards
        .iter()
        .map(|p| format!("<shard><replica><host>127.0.0.1</host><port>{p}</port></replica></shard>"))
        .collect();
    let d = dir.display();
    let config = format!(
        r#"<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><console>1</console></logger>
  <listen_host>127.0.0.1</listen_host>
  <http_port>{http}</http_port>
  <tcp_port>{tcp}</tcp_port>
  <interserver_http_port>{interserver}</interserver_http_port>
  <path>{d}/data/</path>
  <tmp_path>{d}/tmp/</tmp_path>
  <user_files_path>{d}/user_files/</user_files_path>
  <format_schema_path>{d}/format_schemas/</format_schema_path>
  <users_config>{d}/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <mark_cache_size>5368709120</mark_cache_size>
  <max_concurrent_queries>100</max_concurrent_queries>
  <remote_servers><{CLUSTER}>{replicas}</{CLUSTER}></remote_servers>
</yandex>
"#
    );
    std::fs::write(dir.join("config.xml"), config).unwrap();
    let users = r#"<?xml version="1.0"?>
<yandex>
  <profiles><default><insert_distributed_sync>1</insert_distributed_sync></default></profiles>
  <users><default><password></password><networks><ip>::/0</ip></networks><profile>default</profile><quota>default</quota></default></users>
  <quotas><default></default></quotas>
</yandex>
"#;
    std::fs::write(dir.join("users.xml"), users).unwrap();
}

impl ChNode {
    fn spawn(&mut self) {
        assert!(
            Path::new(SERVER).exists(),
            "{SERVER} is missing: `.ci/run` installs it (apt-get install -y clickhouse-server clickhouse-client)"
        );
        let log = std::fs::File::create(self.dir.join("server.log")).unwrap();
        let child = Command::new(SERVER)
            .arg(format!("--config-file={}", self.dir.join("config.xml").display()))
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http)
    }

    /// SIGKILL by pid, and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").arg("-KILL").arg(c.id().to_string()).status();
            let _ = c.wait();
        }
    }

    /// SIGSTOP / SIGCONT by pid: a node that accepts connections but never answers.
    pub fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let ok = Command::new("kill").arg(format!("-{sig}")).arg(c.id().to_string()).status().unwrap();
            assert!(ok.success(), "kill -{sig}");
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kill();
        }
    }
}

impl Cluster {
    /// Starts two nodes as the 2-shard cluster [`CLUSTER`] and waits until both answer.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut picked: Vec<u16> = Vec::new();
        while picked.len() < 6 {
            let p = free_port();
            if !picked.contains(&p) {
                picked.push(p);
            }
        }
        let ports: Vec<(u16, u16, u16)> = picked.chunks(3).map(|c| (c[0], c[1], c[2])).collect();
        let tcps: Vec<u16> = ports.iter().map(|p| p.1).collect();
        let mut nodes = Vec::new();
        for (i, &(http, tcp, inter)) in ports.iter().enumerate() {
            let d = dir.path().join(format!("node{i}"));
            write_config(&d, http, tcp, inter, &tcps);
            nodes.push(ChNode { http, tcp, dir: d, child: None });
        }
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let client = reqwest::Client::new();
        let mut c = Self { nodes, _dir: dir, rt, client };
        for n in &mut c.nodes {
            n.spawn();
        }
        for i in 0..c.nodes.len() {
            c.wait_up(i);
        }
        c
    }

    /// Comma-separated node URLs, node 0 first (`OTELRING_CLICKHOUSE_URLS`).
    pub fn urls(&self) -> String {
        self.nodes.iter().map(ChNode::url).collect::<Vec<_>>().join(",")
    }

    fn wait_up(&self, i: usize) {
        let end = Instant::now() + START_TIMEOUT;
        while Instant::now() < end {
            if self.try_query_node(i, "SELECT 1").is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let log = std::fs::read_to_string(self.nodes[i].dir.join("server.log")).unwrap_or_default();
        panic!("clickhouse node {i} did not start in {START_TIMEOUT:?}:\n{log}");
    }

    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// Starts node `i` again on its data and ports and waits until it answers.
    pub fn restart(&mut self, i: usize) {
        self.nodes[i].spawn();
        self.wait_up(i);
    }

    /// Runs `sql` on node `i`; the answer text or the error text.
    pub fn try_query_node(&self, i: usize, sql: &str) -> Result<String, String> {
        let url = format!("{}/", self.nodes[i].url());
        let sql = sql.to_owned();
        let client = self.client.clone();
        self.rt.block_on(async move {
            let r = client
                .post(url)
                .body(sql)
                .timeout(Duration::from_secs(30))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let ok = r.status().is_success();
            let text = r.text().await.map_err(|e| e.to_string())?;
            if ok { Ok(text) } else { Err(text) }
        })
    }

    /// Runs `sql` on node 0 (cluster-wide through the Distributed tables); panics on error.
    pub fn query(&self, sql: &str) -> String {
        self.try_query_node(0, sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// The answer's lines.
    pub fn rows(&self, sql: &str) -> Vec<String> {
        self.query(sql).lines().map(str::to_owned).collect()
    }

    /// A one-number answer.
    pub fn count(&self, sql: &str) -> u64 {
        let t = self.query(sql);
        t.trim().parse().unwrap_or_else(|_| panic!("{sql}: not a number: {t:?}"))
    }
}

/// A running otelring binary with the ClickHouse sink; SIGKILLed on drop unless stopped.
pub struct Otelring {
    pub child: Option<Child>,
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    pub data: tempfile::TempDir,
    stderr: PathBuf,
}

impl Drop for Otelring {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").arg("-KILL").arg(c.id().to_string()).status();
            let _ = c.wait();
        }
    }
}

/// One signal's final books line ("otelring: books traces received=... balanced").
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Books {
    pub received: u64,
    pub dlq_recovered: u64,
    pub persisted: u64,
    pub lost: u64,
    pub dlq_pending: u64,
    pub in_flight: u64,
    pub balanced: bool,
}

impl Otelring {
    /// Starts the binary (2 workers: shard 0 → node 0, shard 1 → node 1) into `cluster`.
    pub fn start(cluster: &Cluster, extra_env: &[(&str, &str)]) -> Self {
        Self::start_in(cluster, tempfile::tempdir().unwrap(), extra_env)
    }

    pub fn start_in(cluster: &Cluster, data: tempfile::TempDir, extra_env: &[(&str, &str)]) -> Self {
        let stderr = data.path().join("otelring.stderr");
        let mut cmd = Command::new(crate::util::server_bin());
        cmd.args(["serve", "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--workers", "2"])
            .arg("--data-dir")
            .arg(data.path().join("data"))
            .env("OTELRING_SINK", "clickhouse")
            .env("OTELRING_CLICKHOUSE_URLS", cluster.urls())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap());
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert!(
            line.contains("into ClickHouse"),
            "otelring did not start: {line:?}\n{}",
            std::fs::read_to_string(&stderr).unwrap_or_default()
        );
        let http = line.split("OTLP/HTTP on ").nth(1).unwrap().split(';').next().unwrap().parse().unwrap();
        let grpc = line.split("OTLP/gRPC on ").nth(1).unwrap().split(',').next().unwrap().parse().unwrap();
        Self { child: Some(child), http, grpc, data, stderr }
    }

    /// SIGTERM, wait for the exit; returns (exit success, books per signal: traces, logs, metrics).
    pub fn stop(&mut self) -> (bool, [Books; 3]) {
        let mut child = self.child.take().expect("running");
        crate::util::sigterm(child.id());
        let ok = child.wait().unwrap().success();
        (ok, self.books())
    }

    /// The books lines of stderr.
    pub fn books(&self) -> [Books; 3] {
        let text = std::fs::read_to_string(&self.stderr).unwrap();
        let mut out = [Books::default(); 3];
        for (i, sig) in ["traces", "logs", "metrics"].iter().enumerate() {
            let line = text
                .lines()
                .find(|l| l.starts_with(&format!("otelring: books {sig} ")))
                .unwrap_or_else(|| panic!("no books line for {sig} in:\n{text}"));
            let field = |k: &str| -> u64 {
                line.split_whitespace()
                    .find_map(|w| w.strip_prefix(&format!("{k}=")))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("{k} in {line}"))
            };
            out[i] = Books {
                received: field("received"),
                dlq_recovered: field("dlq_recovered"),
                persisted: field("persisted"),
                lost: field("lost"),
                dlq_pending: field("dlq_pending"),
                in_flight: field("in_flight"),
                balanced: line.ends_with(" balanced"),
            };
        }
        out
    }

    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}
