//! The `otelring` binary: parses flags and environment, then runs a subcommand.

use clap::Parser;
use otelring::clickhouse::ClickHouseSink;
use otelring::config::{Cli, Command};
use otelring::pipeline::discard::DiscardWriter;
use otelring::pipeline::{Pipeline, Signal, Stats};
use otelring::server;
use otelring::store::{self, Store};
use std::process::ExitCode;
use std::sync::Arc;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    match try_main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("otelring: {e}");
            ExitCode::from(2)
        }
    }
}

fn try_main() -> Result<ExitCode, Box<dyn std::error::Error>> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        None | Some(Command::Serve) => serve(&cli),
        Some(Command::Config) => {
            let recorded = otelring::store::recorded_shards(&cli.pipeline.data_dir)?;
            let cfg = cli.pipeline.pipeline_config(recorded)?;
            println!("data_dir = {}", cli.pipeline.data_dir.display());
            println!("{cfg:#?}");
            let store = cli.store.store_config(&cli.pipeline.data_dir)?;
            println!("{store:#?}");
            let server = cli.server.server_config(&cfg)?;
            println!("{server:#?}");
            println!("{:#?}", cli.server.decode_config(&cfg)?);
            println!("{:#?}", cli.sink.clickhouse_config()?);
            Ok(ExitCode::SUCCESS)
        }
        #[cfg(feature = "loadgen")]
        Some(Command::Loadgen(args)) => {
            otelring::loadgen::run(*args)?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Sql(args)) => {
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            let window = otelring::store::sql::Window { since: args.since, until: args.until };
            otelring::store::sql::run_window(
                &cli.pipeline.data_dir,
                window,
                &args.query,
                args.json,
                &mut out,
            )?;
            std::io::Write::flush(&mut out)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The writers' destination: the SQLite store or a ClickHouse cluster (`OTELRING_SINK`).
enum Sink {
    Sqlite(Store),
    ClickHouse(ClickHouseSink),
}

impl Sink {
    fn gauges(&self) -> Vec<Arc<store::ShardGauges>> {
        match self {
            Sink::Sqlite(s) => s.gauges(),
            Sink::ClickHouse(c) => c.gauges(),
        }
    }
}

/// `otelring serve`: opens the store, starts the pipeline and both listeners, serves until
/// SIGTERM/SIGINT, drains, and exits 0 when nothing accepted was lost.
fn serve(cli: &Cli) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let data_dir = &cli.pipeline.data_dir;
    let discard = cli.server.bench_discard;
    let recorded = if discard {
        None
    } else {
        std::fs::create_dir_all(data_dir)?;
        store::recorded_shards(data_dir)?
    };
    let pcfg = cli.pipeline.pipeline_config(recorded)?;
    let server_cfg = cli.server.server_config(&pcfg)?;
    let decode_cfg = cli.server.decode_config(&pcfg)?;
    let stats = Arc::new(Stats::new());
    let shards = pcfg.shards;
    let clickhouse = cli.sink.clickhouse_config()?;
    // The benchmark-only discard sink opens no store: writers drop what they pop.
    let store = if discard {
        None
    } else {
        let mut scfg = cli.store.store_config(data_dir)?;
        // Commit mode promises "stored" when it answers: fsync every commit (power loss too).
        scfg.durable_commits = pcfg.commit_mode;
        Some(match &clickhouse {
            None => Sink::Sqlite(Store::open(&scfg, shards, stats.clone())?),
            Some(ch) => Sink::ClickHouse(ClickHouseSink::open(ch, &scfg, shards, stats.clone())?),
        })
    };
    let gauges = store.as_ref().map(Sink::gauges).unwrap_or_default();
    let pipeline = Arc::new(Pipeline::new(pcfg, stats)?);
    // Everything that can refuse to start (API keys, ports) is checked before the writers start
    // (they begin with the DLQ replay).
    let shared = server::build(&server_cfg, decode_cfg, pipeline.clone(), gauges)?;
    let metrics = shared.metrics.clone();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let report = rt.block_on(async {
        let listeners = server::Listeners::bind(&server_cfg).await?;
        let writers: Vec<Box<dyn otelring::pipeline::BatchWriter>> = match store {
            Some(Sink::Sqlite(store)) => store.into_writers(),
            Some(Sink::ClickHouse(sink)) => sink.into_writers(),
            None => (0..shards).map(|_| Box::new(DiscardWriter) as _).collect(),
        };
        pipeline.start(writers)?;
        let (grpc, http) = listeners.addrs()?;
        if discard {
            eprintln!(
                "otelring: WARNING: --bench-discard: every admitted item is DISCARDED, nothing is \
                 stored (benchmark of the receive path only)"
            );
            println!(
                "otelring listening: OTLP/gRPC on {grpc}, OTLP/HTTP on {http}; {shards} writer(s) \
                 discarding (benchmark mode, nothing stored)"
            );
        } else if let Some(ch) = &clickhouse {
            println!(
                "otelring listening: OTLP/gRPC on {grpc}, OTLP/HTTP on {http}; {shards} shard(s) into ClickHouse {}",
                ch.urls.join(",")
            );
        } else {
            println!(
                "otelring listening: OTLP/gRPC on {grpc}, OTLP/HTTP on {http}; {shards} shard(s) in {}",
                data_dir.display()
            );
        }
        let (tx, rx) = tokio::sync::watch::channel(0u32);
        tokio::spawn(async move {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .map_err(|e| tracing::error!(error = %e, "cannot listen for SIGTERM; Ctrl-C still stops"))
                .ok();
            loop {
                let sigterm = async {
                    match term.as_mut() {
                        Some(t) => {
                            t.recv().await;
                        }
                        None => std::future::pending::<()>().await,
                    }
                };
                let ctrl_c = async {
                    if tokio::signal::ctrl_c().await.is_err() {
                        // No SIGINT either: never resolve (and never drop `tx`, which would stop us).
                        std::future::pending::<()>().await;
                    }
                };
                tokio::select! {
                    () = sigterm => {}
                    () = ctrl_c => {}
                }
                tx.send_modify(|n| *n += 1);
            }
        });
        let wait_for = |n: u32| {
            let mut rx = rx.clone();
            async move {
                let _ = rx.wait_for(|&c| c >= n).await;
            }
        };
        Ok::<_, Box<dyn std::error::Error>>(server::run(shared, listeners, wait_for(1), wait_for(2)).await)
    })?;
    tracing::info!(
        drained_in_time = report.drained_in_time,
        spilled_items = report.spilled_items,
        lost_items = report.lost_items,
        elapsed_ms = report.elapsed.as_millis() as u64,
        "stopped"
    );
    // The final books, one line per signal (DESIGN 1.7), for operators and the tests.
    let mut balanced = true;
    for signal in Signal::ALL {
        let b = metrics.books(signal);
        balanced &= b.balanced();
        eprintln!(
            "otelring: books {signal} received={} dlq_recovered={} persisted={} dropped={} rejected={} \
             filtered={} lost={} dlq_pending={} in_flight={} {}",
            b.received,
            b.dlq_recovered,
            b.persisted,
            b.dropped,
            b.rejected,
            b.filtered,
            b.lost,
            b.dlq_pending,
            b.in_flight,
            if b.balanced() { "balanced" } else { "UNBALANCED" }
        );
    }
    Ok(if report.lost_items == 0 && balanced { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
