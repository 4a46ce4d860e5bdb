//! Rows of results, their ratios to baselines of the same run, and the markdown and JSON output.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use crate::Plan;

/// One measured (or skipped) figure.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// What is measured, e.g. `rtt` or `throughput, 3 subscribers`.
    pub section: String,
    /// Which system and variant, e.g. `Starling RPC (PSK)`.
    pub name: String,
    /// Payload bytes, where the figure depends on them.
    pub size: Option<usize>,
    /// Unit of `p50` and `p99`.
    pub unit: &'static str,
    /// Median over all samples (latencies) or over runs (rates).
    pub p50: Option<f64>,
    /// 99th percentile of samples (latencies), or the worst run (rates).
    pub p99: Option<f64>,
    /// Anything else worth knowing: delivery, counts.
    pub note: String,
    /// Names of rows (same section and size) this one is compared to.
    #[serde(skip)]
    pub baselines: Vec<&'static str>,
    /// `p50 / baseline p50` for each baseline found, filled in by [`Report::finish`].
    pub ratios: Vec<(String, f64)>,
    /// Why there is no figure, when there is none.
    pub skipped: Option<String>,
}

impl Row {
    /// A row with a figure.
    pub fn value(
        section: &str,
        name: &str,
        size: Option<usize>,
        unit: &'static str,
        p50: f64,
        p99: Option<f64>,
    ) -> Row {
        Row {
            section: section.into(),
            name: name.into(),
            size,
            unit,
            p50: Some(p50),
            p99,
            note: String::new(),
            baselines: Vec::new(),
            ratios: Vec::new(),
            skipped: None,
        }
    }

    /// A row that says why it was not measured.
    pub fn skipped(section: &str, name: &str, size: Option<usize>, why: impl Into<String>) -> Row {
        Row {
            section: section.into(),
            name: name.into(),
            size,
            unit: "",
            p50: None,
            p99: None,
            note: String::new(),
            baselines: Vec::new(),
            ratios: Vec::new(),
            skipped: Some(why.into()),
        }
    }

    /// Latency samples as a row in microseconds (median and p99 of all samples).
    pub fn latency(section: &str, name: &str, size: usize, samples: &mut [Duration]) -> Row {
        if samples.is_empty() {
            return Row::skipped(section, name, Some(size), "no sample completed");
        }
        samples.sort();
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        let mut r = Row::value(
            section,
            name,
            Some(size),
            "µs",
            us(percentile(samples, 50.0)),
            Some(us(percentile(samples, 99.0))),
        );
        r.note = format!("{} samples", samples.len());
        r
    }

    /// Per-run rates as a row: median run and worst run.
    pub fn rate(section: &str, name: &str, size: Option<usize>, unit: &'static str, runs: &mut [f64]) -> Row {
        if runs.is_empty() {
            return Row::skipped(section, name, size, "no run completed");
        }
        runs.sort_by(f64::total_cmp);
        Row::value(section, name, size, unit, runs[runs.len() / 2], Some(runs[0]))
    }

    /// Per-run costs as a row: median run and the most expensive run.
    pub fn cost(section: &str, name: &str, size: Option<usize>, unit: &'static str, runs: &mut [f64]) -> Row {
        if runs.is_empty() {
            return Row::skipped(section, name, size, "no run completed");
        }
        runs.sort_by(f64::total_cmp);
        Row::value(section, name, size, unit, runs[runs.len() / 2], Some(runs[runs.len() - 1]))
    }

    /// Compares this row to the rows named `names` in the same section and size.
    pub fn against(mut self, names: &[&'static str]) -> Row {
        self.baselines.extend_from_slice(names);
        self
    }

    /// Adds a note.
    pub fn note(mut self, note: impl Into<String>) -> Row {
        let note = note.into();
        if self.note.is_empty() {
            self.note = note;
        } else {
            self.note = format!("{}; {note}", self.note);
        }
        self
    }
}

/// The `p`th percentile of sorted samples (nearest rank).
pub fn percentile<T: Copy>(sorted: &[T], p: f64) -> T {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Every row of one run of the bench, with what is needed to rerun it.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `smoke`, `quick` or `full`.
    pub mode: String,
    /// Repetitions of each measurement.
    pub runs: usize,
    /// Host description: CPU model, cores, kernel.
    pub machine: String,
    /// Seconds since the Unix epoch when the run ended.
    pub finished_unix: u64,
    /// Wall-clock seconds the run took.
    pub seconds: f64,
    /// The figures.
    pub rows: Vec<Row>,
}

impl Report {
    /// An empty report for `plan`.
    pub fn new(plan: Plan) -> Report {
        Report {
            mode: format!("{:?}", plan.mode).to_lowercase(),
            runs: plan.runs,
            machine: machine(),
            finished_unix: 0,
            seconds: 0.0,
            rows: Vec::new(),
        }
    }

    /// Adds rows.
    pub fn extend(&mut self, rows: impl IntoIterator<Item = Row>) {
        for r in rows {
            eprintln!("  {}", one_line(&r));
            self.rows.push(r);
        }
    }

    /// Computes every ratio and stamps the time.
    pub fn finish(&mut self, took: Duration) {
        let snapshot = self.rows.clone();
        for row in &mut self.rows {
            let Some(v) = row.p50 else { continue };
            for b in &row.baselines {
                let base = snapshot.iter().find(|o| o.section == row.section && o.size == row.size && o.name == *b);
                if let Some(base_v) = base.and_then(|o| o.p50).filter(|x| *x > 0.0) {
                    row.ratios.push(((*b).to_string(), v / base_v));
                }
            }
        }
        self.seconds = took.as_secs_f64();
        self.finished_unix =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    }

    /// The report as a markdown table, one table per section.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Mode `{}`, {} runs each, {:.0} s, on {}.\n",
            self.mode, self.runs, self.seconds, self.machine
        );
        let mut sections: Vec<&str> = Vec::new();
        for r in &self.rows {
            if !sections.contains(&r.section.as_str()) {
                sections.push(&r.section);
            }
        }
        for s in sections {
            let _ = writeln!(out, "### {s}\n");
            let _ = writeln!(
                out,
                "| what | size | p50 / median | p99 / worst run | unit | vs baseline (p50 ratio) | note |"
            );
            let _ = writeln!(out, "|---|---:|---:|---:|---|---|---|");
            for r in self.rows.iter().filter(|r| r.section == s) {
                let size = r.size.map(human_size).unwrap_or_default();
                let (p50, p99) = match &r.skipped {
                    Some(why) => (format!("not measured: {why}"), String::new()),
                    None => (r.p50.map(fmt_num).unwrap_or_default(), r.p99.map(fmt_num).unwrap_or_default()),
                };
                let ratios: Vec<String> = r.ratios.iter().map(|(n, x)| format!("{x:.2}x {n}")).collect();
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} | {} | {} |",
                    r.name,
                    size,
                    p50,
                    p99,
                    r.unit,
                    ratios.join("; "),
                    r.note
                );
            }
            out.push('\n');
        }
        out
    }
}

fn one_line(r: &Row) -> String {
    let size = r.size.map(human_size).unwrap_or_default();
    match (&r.skipped, r.p50) {
        (Some(why), _) => format!("{} | {} {size}: not measured: {why}", r.section, r.name),
        (None, Some(v)) => format!("{} | {} {size}: {} {} {}", r.section, r.name, fmt_num(v), r.unit, r.note),
        _ => format!("{} | {} {size}", r.section, r.name),
    }
}

/// `64 B`, `1 KiB`, `16 KiB`.
pub fn human_size(n: usize) -> String {
    if n >= 1024 && n.is_multiple_of(1024) {
        format!("{} KiB", n / 1024)
    } else {
        format!("{n} B")
    }
}

fn fmt_num(v: f64) -> String {
    if v >= 1000.0 {
        format!("{:.0}", v)
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let kernel =
        std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default();
    format!("{cpu}, {cores} cores, Linux {kernel}")
}
