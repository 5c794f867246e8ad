//! Progress on long work: a bar per phase on a terminal, and otherwise a
//! plain log line every `--progress-interval`, with a line at the end of
//! each phase either way, so that a scheduler's log shows how far a run got.

use std::io::{IsTerminal, Write};
use std::sync::{LazyLock, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use indicatif::{HumanBytes, HumanCount, HumanDuration, MultiProgress, ProgressBar, ProgressStyle};

use crate::dataflow::Progress;

/// Seconds between plain progress lines, set once from `--progress-interval`.
static INTERVAL: OnceLock<Duration> = OnceLock::new();

pub fn set_interval(interval: Duration) {
    let _ = INTERVAL.set(interval);
}

/// Every bar of this process, drawn on stderr (and hidden when it is not a
/// terminal), so that log lines can be written above them ([`LogWriter`]).
static BARS: LazyLock<MultiProgress> = LazyLock::new(MultiProgress::new);

/// A bar of `len` units drawn with `template`.
pub fn bar(len: u64, template: &str) -> ProgressBar {
    BARS.add(
        ProgressBar::new(len).with_style(ProgressStyle::with_template(template).expect("template")),
    )
}

/// Where log lines go: stderr, above the bars rather than through them.
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        BARS.suspend(|| std::io::stderr().write(line))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// What a phase's units are.
#[derive(Debug, Clone, Copy)]
pub enum Unit {
    /// Input bytes read (staging).
    Bytes,
    /// Staged parts done (the steps of `process`).
    Parts,
}

impl Unit {
    /// `done of total` in this unit.
    fn of(self, done: u64, total: u64) -> String {
        match self {
            Unit::Bytes => format!("{} of {}", HumanBytes(done), HumanBytes(total)),
            Unit::Parts => format!("{} of {} parts", HumanCount(done), HumanCount(total)),
        }
    }

    fn template(self) -> &'static str {
        match self {
            Unit::Bytes => {
                "{prefix} {bar:30} {bytes}/{total_bytes} read, {msg} ({binary_bytes_per_sec}, eta {eta})"
            }
            Unit::Parts => "{prefix} {bar:30} {pos}/{len} parts, {msg} (eta {eta})",
        }
    }
}

/// The cli's [`Progress`]: shared by a process's workers.
pub struct Display {
    unit: Unit,
    /// What the records are called: pings, reports.
    records: &'static str,
    /// Names the bar's run (`server A`); empty for the only one.
    label: String,
    /// Worker threads in this process: a phase ends when all are done.
    workers: usize,
    /// Whether stderr is a terminal; plain lines if not.
    terminal: bool,
    interval: Duration,
    /// The phases begun and not yet closed, the newest last: a worker may
    /// begin the next phase before a slower one says it is done with this.
    open: Mutex<Vec<Phase>>,
}

/// A phase under way.
struct Phase {
    name: &'static str,
    /// Workers that are done with it.
    workers_done: usize,
    started: Instant,
    last_line: Instant,
    total: u64,
    done: u64,
    records: u64,
    /// On a terminal, the phase's bar.
    bar: Option<ProgressBar>,
}

impl Display {
    pub fn new(label: String, unit: Unit, records: &'static str, workers: usize) -> Self {
        Display {
            label,
            unit,
            records,
            workers,
            terminal: std::io::stderr().is_terminal(),
            interval: *INTERVAL.get_or_init(|| Duration::from_secs(10)),
            open: Mutex::new(Vec::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Phase>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Closes the phases still open (the cli, once the job has returned).
    pub fn finish(&self) {
        for phase in self.lock().drain(..) {
            self.close(phase);
        }
    }

    /// The phase's closing line.
    fn close(&self, phase: Phase) {
        if let Some(bar) = &phase.bar {
            bar.finish_and_clear();
        }
        let name = phase.name;
        let seconds = phase.started.elapsed().as_secs_f64();
        if phase.total == 0 {
            tracing::info!("{name}: done in {seconds:.1}s");
            return;
        }
        tracing::info!(
            "{name}: done in {seconds:.1}s, {}, {} {} ({:.0}/s)",
            self.unit.of(phase.done, phase.total),
            HumanCount(phase.records),
            self.records,
            phase.records as f64 / seconds.max(1e-9),
        );
    }

    /// A plain progress line.
    fn line(&self, phase: &Phase) {
        let elapsed = phase.started.elapsed();
        let rate = phase.records as f64 / elapsed.as_secs_f64().max(1e-9);
        let eta = match (phase.done, phase.total) {
            (0, _) => "unknown".to_string(),
            (done, total) => {
                HumanDuration(elapsed.mul_f64(total.saturating_sub(done) as f64 / done as f64))
                    .to_string()
            }
        };
        tracing::info!(
            "{}: {} ({:.0}%), {} {} ({rate:.0}/s), eta {eta}",
            phase.name,
            self.unit.of(phase.done, phase.total),
            100.0 * phase.done as f64 / phase.total.max(1) as f64,
            HumanCount(phase.records),
            self.records,
        );
    }
}

impl Progress for Display {
    fn phase(&self, name: &'static str) {
        let mut open = self.lock();
        if open.iter().any(|p| p.name == name) {
            return;
        }
        let bar = self.terminal.then(|| {
            bar(0, self.unit.template())
                .with_prefix(format!("{} {name}", self.label).trim_start().to_string())
                .with_message(format!("0 {}", self.records))
        });
        let now = Instant::now();
        open.push(Phase {
            name,
            workers_done: 0,
            started: now,
            last_line: now,
            total: 0,
            done: 0,
            records: 0,
            bar,
        });
    }

    fn phase_done(&self, name: &'static str) {
        let mut open = self.lock();
        let Some(at) = open.iter().position(|p| p.name == name) else {
            return;
        };
        open[at].workers_done += 1;
        if open[at].workers_done == self.workers {
            self.close(open.remove(at));
        }
    }

    fn expect(&self, units: u64) {
        if let Some(phase) = self.lock().last_mut() {
            phase.total += units;
            if let Some(bar) = &phase.bar {
                bar.inc_length(units);
            }
        }
    }

    fn advance(&self, units: u64, records: u64) {
        let mut open = self.lock();
        let Some(phase) = open.last_mut() else {
            return;
        };
        phase.done += units;
        phase.records += records;
        match &phase.bar {
            Some(bar) => {
                bar.inc(units);
                bar.set_message(format!("{} {}", HumanCount(phase.records), self.records));
            }
            None if phase.last_line.elapsed() >= self.interval => {
                phase.last_line = Instant::now();
                self.line(phase);
            }
            None => {}
        }
    }
}
