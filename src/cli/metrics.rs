//! `--metrics-file`: what a run did, in the Prometheus text format (0.0.4)
//! that node_exporter's textfile collector reads. Rendered from the typed
//! results (`StageCounts`, `BatchOutcome`), never from summary strings; the
//! file is replaced whole, so a scraper never sees half of it. Every value
//! is a gauge: each run's file replaces the last, so its counts are that
//! run's, not totals that only grow.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::dataflow::process::RunReport;
use crate::dataflow::stage::StageCounts;
use crate::wire::protocol::BatchStatus;
use crate::wire::Role;

/// `--metrics-file`, shared by the commands that write one.
#[derive(clap::Args, Debug, Clone)]
pub struct MetricsArg {
    /// Write the run's metrics here (Prometheus text format, e.g. for
    /// node_exporter's textfile collector: DIR/prio_processor.prom).
    #[arg(long, env = "METRICS_FILE", value_name = "PATH")]
    pub metrics_file: Option<PathBuf>,
}

type Labels = Vec<(&'static str, String)>;

/// A registry with `prio_` metrics, filled by the functions below.
pub struct Metrics {
    registry: Registry,
}

impl Metrics {
    fn new() -> Self {
        Metrics {
            registry: Registry::with_prefix("prio"),
        }
    }

    fn gauge(&mut self, name: &str, help: &str) -> Family<Labels, Gauge<f64, AtomicU64>> {
        let family = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        self.registry.register(name, help, family.clone());
        family
    }

    /// Whether the run did its job, how long it took and when it ended.
    fn run(&mut self, labels: &Labels, elapsed: Duration, success: bool) {
        self.gauge("run_success", "1 when the run did its job (exit 0), else 0")
            .get_or_create(labels)
            .set(f64::from(u8::from(success)));
        self.gauge("run_duration_seconds", "How long the run took")
            .get_or_create(labels)
            .set(elapsed.as_secs_f64());
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        self.gauge(
            "run_end_timestamp_seconds",
            "When the run ended (Unix time)",
        )
        .get_or_create(labels)
        .set(now.as_secs_f64());
    }

    /// Writes the text format to `path`, replacing it whole.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)
            .expect("writing to a String");
        crate::storage::write_atomic(path, |f| std::io::Write::write_all(f, text.as_bytes()))
            .with_context(|| format!("writing the metrics file {}", path.display()))
    }
}

/// Writes a run's metrics to `path`, when given: `done` renders those of a
/// run that returned, `failed` those of one that stopped with an error. A
/// metrics file that cannot be written after a failure never hides the
/// run's own error.
pub fn record<T>(
    path: Option<&Path>,
    result: anyhow::Result<T>,
    done: impl FnOnce(&T) -> Metrics,
    failed: impl FnOnce() -> Metrics,
) -> anyhow::Result<T> {
    let Some(path) = path else {
        return result;
    };
    match result {
        Ok(value) => {
            done(&value).write(path)?;
            Ok(value)
        }
        Err(e) => {
            if let Err(unwritten) = failed().write(path) {
                tracing::warn!("{unwritten:#}");
            }
            Err(e)
        }
    }
}

/// A run of `command` that stopped with an error: nothing but that.
pub fn failed_run(command: &str, server: Option<Role>, elapsed: Duration) -> Metrics {
    let mut m = Metrics::new();
    let mut labels = vec![("command", command.to_string())];
    labels.extend(server.map(|s| ("server", s.to_string())));
    m.run(&labels, elapsed, false);
    m
}

/// What a `process` (or step, named by `command`) run of `server` decided,
/// per batch; `success` as its exit code says.
pub fn process_metrics(
    command: &str,
    server: Role,
    done: &RunReport,
    elapsed: Duration,
    success: bool,
) -> Metrics {
    let mut m = Metrics::new();
    let server = server.to_string();
    m.run(
        &vec![("command", command.into()), ("server", server.clone())],
        elapsed,
        success,
    );
    let took = m.gauge(
        "step_duration_seconds",
        "How long each pass took, by the steps it ran, waits for the peer included",
    );
    for (steps, d) in &done.passes {
        took.get_or_create(&vec![
            ("server", server.clone()),
            ("steps", steps.to_string()),
        ])
        .set(d.as_secs_f64());
    }
    let total = m.gauge("batch_reports", "Reports this server had for the batch");
    let aggregated = m.gauge(
        "batch_reports_aggregated",
        "Reports both servers accepted, in the batch's sum",
    );
    let rejected = m.gauge("batch_reports_rejected", "Reports not counted, by reason");
    let status = m.gauge(
        "batch_status",
        "1 for the batch's outcome: published, withheld or refused",
    );
    let alarm = m.gauge(
        "batch_alarm",
        "1 when one reason rejected most of the batch's reports (exit 4)",
    );
    for o in &done.outcomes {
        let batch = vec![("server", server.clone()), ("batch_id", o.batch_id.clone())];
        total.get_or_create(&batch).set(o.reports_total as f64);
        aggregated
            .get_or_create(&batch)
            .set(o.reports_aggregated as f64);
        for (reason, n) in &o.rejected {
            let mut labels = batch.clone();
            labels.push(("reason", reason.reason().into()));
            rejected.get_or_create(&labels).set(*n as f64);
        }
        for s in [
            BatchStatus::Published,
            BatchStatus::Withheld,
            BatchStatus::Refused,
        ] {
            let mut labels = batch.clone();
            labels.push(("status", s.name().into()));
            status
                .get_or_create(&labels)
                .set(f64::from(u8::from(o.status == s)));
        }
        alarm
            .get_or_create(&batch)
            .set(f64::from(u8::from(o.alarm.is_some())));
    }
    m
}

/// What a `stage` run read, staged and rejected.
pub fn stage_metrics(counts: &StageCounts, elapsed: Duration) -> Metrics {
    let mut m = Metrics::new();
    m.run(&vec![("command", "stage".into())], elapsed, true);
    let files = m.gauge("stage_files", "Input files, by what became of them");
    for (state, n) in [
        ("listed", counts.files_listed),
        ("read", counts.files_read),
        ("unreadable", counts.files_unreadable),
    ] {
        files
            .get_or_create(&vec![("state", state.into())])
            .set(n as f64);
    }
    let none = Labels::new();
    for (name, help, n) in [
        ("stage_read_bytes", "Input bytes read", counts.bytes_read),
        ("stage_pings_read", "Pings read", counts.pings_read),
        (
            "stage_duplicates_dropped",
            "Pings dropped as repeats of a ping id",
            counts.duplicates_dropped,
        ),
    ] {
        m.gauge(name, help).get_or_create(&none).set(n as f64);
    }
    let rejected = m.gauge("stage_records_rejected", "Records not staged, by reason");
    for (reason, n) in &counts.rejected {
        rejected
            .get_or_create(&vec![("reason", reason.reason().into())])
            .set(*n as f64);
    }
    let entries = m.gauge("stage_entries", "Reports staged per batch");
    let parts = m.gauge("stage_parts", "Parts written per batch");
    for (batch_id, b) in &counts.batches {
        let labels = vec![("batch_id", batch_id.clone())];
        entries.get_or_create(&labels).set(b.entries as f64);
        parts.get_or_create(&labels).set(b.parts as f64);
    }
    m
}
