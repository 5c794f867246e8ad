//! `report`: the published results of a date or a range of dates as one
//! self-contained HTML page, for analysts and operators: per batch id the
//! aggregate as a bar chart (with its largest buckets listed, since long
//! vectors are hard to read as bars), each server's counts and rejections
//! by reason, each server's step timings, and over a range the trend of
//! reports aggregated and rejected per date.
//!
//! It reads only what `publish` wrote in each server's private bucket
//! (`processed/_SUMMARY.json`, `_TIMINGS.json`); a date a server has not
//! published is listed as missing, never guessed.

pub mod charts;

use std::collections::BTreeMap;

use askama::Template;

use crate::storage::location::{Location, StorageError};
use crate::storage::server::ServerBuckets;
use crate::wire::protocol::BatchOutcome;
use crate::wire::Role;

pub use charts::BAR;

/// How many of a long aggregate's largest buckets the page lists.
const TOP_BUCKETS: usize = 20;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Chart(#[from] charts::ChartError),
    #[error("rendering the page: {0}")]
    Template(#[from] askama::Error),
    #[error("no server published any of the dates {0}; check the dates and the buckets")]
    NothingPublished(String),
}

/// What one server published for one date.
struct Published {
    date: String,
    server: Role,
    outcomes: Vec<BatchOutcome>,
    timings: BTreeMap<String, f64>,
}

/// Reads what each server's private bucket holds for each date.
fn gather(
    servers: &[(Role, Location)],
    dates: &[String],
) -> Result<(Vec<Published>, Vec<String>), ReportError> {
    let mut published = Vec::new();
    let mut missing = Vec::new();
    for date in dates {
        for (server, bucket) in servers {
            let results = ServerBuckets::results(bucket.clone(), date);
            match results.outcomes()? {
                Some(outcomes) => published.push(Published {
                    date: date.clone(),
                    server: *server,
                    outcomes,
                    timings: results.timings()?,
                }),
                None => missing.push(format!("{date} (server {server})")),
            }
        }
    }
    Ok((published, missing))
}

#[derive(Template)]
#[template(path = "report.html")]
struct Page {
    title: String,
    servers: String,
    missing: Vec<String>,
    batches: Vec<BatchView>,
    timings: Vec<TimingRow>,
    passes: Vec<String>,
}

struct BatchView {
    batch_id: String,
    anchor: String,
    vdaf: String,
    /// What the bars add up: one date's sum, or the sum over the range.
    sum_label: String,
    chart: Option<String>,
    length: usize,
    total: u128,
    top: Vec<(usize, u128)>,
    trend: Option<String>,
    counts: Vec<CountsRow>,
    /// Reports aggregated over the dates, and the statuses the servers gave.
    aggregated: u64,
    statuses: String,
    /// Set when the servers published different sums (they never should).
    disagreement: Option<String>,
}

struct CountsRow {
    date: String,
    server: String,
    status: String,
    reports_total: u64,
    reports_aggregated: u64,
    rejected: String,
    note: String,
}

struct TimingRow {
    date: String,
    server: String,
    seconds: Vec<String>,
}

/// The page for `dates` of the servers' results.
pub fn render(servers: &[(Role, Location)], dates: &[String]) -> Result<String, ReportError> {
    let (published, missing) = gather(servers, dates)?;
    if published.is_empty() {
        return Err(ReportError::NothingPublished(dates.join(", ")));
    }
    let batch_ids: std::collections::BTreeSet<&str> = published
        .iter()
        .flat_map(|p| p.outcomes.iter().map(|o| o.batch_id.as_str()))
        .collect();
    let batches = batch_ids
        .into_iter()
        .enumerate()
        .map(|(n, id)| batch_view(n, id, &published, dates))
        .collect::<Result<_, _>>()?;
    let passes: Vec<String> = published
        .iter()
        .flat_map(|p| p.timings.keys().cloned())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let timings = published
        .iter()
        .map(|p| TimingRow {
            date: p.date.clone(),
            server: p.server.as_str().to_uppercase(),
            seconds: passes
                .iter()
                .map(|pass| {
                    p.timings
                        .get(pass)
                        .map_or("–".into(), |s| format!("{s:.2}"))
                })
                .collect(),
        })
        .collect();
    let title = match dates {
        [one] => format!("Prio results for {one}"),
        [first, .., last] => format!("Prio results for {first} to {last}"),
        [] => "Prio results".to_string(),
    };
    let servers = servers
        .iter()
        .map(|(role, bucket)| format!("server {} ({})", role.as_str().to_uppercase(), bucket.url()))
        .collect::<Vec<_>>()
        .join(", ");
    Ok(Page {
        title,
        servers,
        missing,
        batches,
        timings,
        passes,
    }
    .render()?)
}

fn batch_view(
    n: usize,
    batch_id: &str,
    published: &[Published],
    dates: &[String],
) -> Result<BatchView, ReportError> {
    let mut counts = Vec::new();
    let mut vdaf = String::new();
    // Per date: the sum the first server published, and the counts it gave.
    let mut by_date: BTreeMap<&str, (&BatchOutcome, Role)> = BTreeMap::new();
    let mut disagreement = None;
    for p in published {
        let Some(o) = p.outcomes.iter().find(|o| o.batch_id == batch_id) else {
            continue;
        };
        vdaf.clone_from(&o.vdaf);
        counts.push(CountsRow {
            date: p.date.clone(),
            server: p.server.as_str().to_uppercase(),
            status: o.status.name().to_string(),
            reports_total: o.reports_total,
            reports_aggregated: o.reports_aggregated,
            rejected: o
                .rejected
                .iter()
                .map(|(r, k)| format!("{} {k}", r.reason()))
                .collect::<Vec<_>>()
                .join(", "),
            note: o
                .alarm
                .clone()
                .or_else(|| o.message.clone())
                .unwrap_or_default(),
        });
        match by_date.get(p.date.as_str()) {
            Some((first, server)) if first.aggregate != o.aggregate => {
                disagreement = Some(format!(
                    "on {}, servers {} and {} published different sums",
                    p.date,
                    server.as_str().to_uppercase(),
                    p.server.as_str().to_uppercase()
                ));
            }
            Some(_) => {}
            None => {
                by_date.insert(&p.date, (o, p.server));
            }
        }
    }
    let summed: Vec<&Vec<u128>> = by_date
        .values()
        .filter_map(|(o, _)| o.aggregate.as_ref())
        .collect();
    let mut sum: Vec<u128> = Vec::new();
    for aggregate in &summed {
        if sum.len() < aggregate.len() {
            sum.resize(aggregate.len(), 0);
        }
        for (total, v) in sum.iter_mut().zip(aggregate.iter()) {
            *total = total.saturating_add(*v);
        }
    }
    let sum_label = match summed.len() {
        0 => "no date of this batch was published (below the threshold, or refused)".into(),
        1 => "the published sum".into(),
        k => format!("the sum of the {k} dates published"),
    };
    let mut top: Vec<(usize, u128)> = sum.iter().copied().enumerate().collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    top.truncate(if sum.len() > TOP_BUCKETS {
        TOP_BUCKETS
    } else {
        0
    });
    let chart = (!sum.is_empty())
        .then(|| charts::aggregate_bars(&sum))
        .transpose()
        .map_err(ReportError::Chart)?;
    let trend = if dates.len() > 1 {
        let per_date = |f: fn(&BatchOutcome) -> u64| -> Vec<u64> {
            dates
                .iter()
                .map(|d| by_date.get(d.as_str()).map_or(0, |(o, _)| f(o)))
                .collect()
        };
        let aggregated = per_date(|o| o.reports_aggregated);
        let rejected = per_date(|o| o.rejected.values().sum());
        Some(charts::trend(dates, &aggregated, &rejected).map_err(ReportError::Chart)?)
    } else {
        None
    };
    let statuses: std::collections::BTreeSet<&str> =
        counts.iter().map(|c| c.status.as_str()).collect();
    let statuses = statuses.into_iter().collect::<Vec<_>>().join(", ");
    Ok(BatchView {
        aggregated: by_date.values().map(|(o, _)| o.reports_aggregated).sum(),
        statuses,
        batch_id: batch_id.to_string(),
        anchor: format!("batch-{n}"),
        vdaf,
        sum_label,
        chart,
        length: sum.len(),
        total: sum.iter().fold(0u128, |t, v| t.saturating_add(*v)),
        top,
        trend,
        counts,
        disagreement,
    })
}
