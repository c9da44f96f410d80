//! The bench file format (`refqsr-bench-1`, documented in BENCHMARKS.md) that `refqsr bench`
//! and `benches/ncnn_peer.py` write and `refqsr bench --compare` reads, and the tables printed
//! from it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::peak::Peak;
use crate::profile::Stage;

/// The `schema` of files this version reads and writes.
pub const SCHEMA: &str = "refqsr-bench-1";

/// One bench file: what one invocation of a tool measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchFile {
    pub schema: String,
    pub tool: String,
    pub tool_version: String,
    pub date: String,
    /// Interrupted before every measurement was done.
    #[serde(default)]
    pub partial: bool,
    pub results: Vec<Record>,
}

/// The device a result was measured on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterRecord {
    pub name: String,
    pub backend: String,
    pub vendor: Option<String>,
    pub device_type: Option<String>,
    pub driver: Option<String>,
    pub driver_info: Option<String>,
    /// `native`, `emulated` or `unknown`.
    pub int_dot: Option<String>,
    pub threads: Option<u32>,
}

/// The per-stage split of one profiled run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageSplit {
    /// `gpu-timestamps` or `host` (see [`crate::profile::Clock`]).
    pub clock: String,
    /// Milliseconds per stage key ([`Stage::key`]); stages that did not occur are left out.
    pub ms: BTreeMap<String, f64>,
}

/// One (adapter, model, mode, size) measurement.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub tool: String,
    pub tool_version: String,
    pub date: String,
    pub adapter: AdapterRecord,
    pub model: String,
    pub mode: String,
    pub width: u32,
    pub height: u32,
    pub scale: u32,
    pub warmup: Option<u32>,
    pub runs: u32,
    pub times_ms: Vec<f64>,
    pub median_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    pub gops: Option<f64>,
    pub peak_share: Option<f64>,
    pub peak: Option<Peak>,
    pub memory_bytes: Option<u64>,
    pub stages: Option<StageSplit>,
}

/// Median (the mean of the middle two for an even count), min and max.
pub fn summarize(times: &[f64]) -> (f64, f64, f64) {
    let mut s = times.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    assert!(n > 0, "no times to summarize");
    let median = if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    };
    (median, s[0], s[n - 1])
}

/// Read a bench file. The error names the file and what is wrong with it (another schema
/// version, a missing field, bad JSON), for the caller to report and skip it.
pub fn load(path: &Path) -> Result<BenchFile, String> {
    let name = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| format!("{name}: {e}"))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{name}: not JSON: {e}"))?;
    match value.get("schema").and_then(|s| s.as_str()) {
        Some(SCHEMA) => {}
        Some(other) => {
            return Err(format!(
                "{name}: schema `{other}`, this refqsr reads `{SCHEMA}`"
            ))
        }
        None => return Err(format!("{name}: no `schema` field (expected `{SCHEMA}`)")),
    }
    let file: BenchFile = serde_json::from_value(value).map_err(|e| format!("{name}: {e}"))?;
    for (i, r) in file.results.iter().enumerate() {
        let finite = [r.median_ms, r.min_ms, r.max_ms]
            .iter()
            .all(|t| t.is_finite() && *t >= 0.0);
        if r.times_ms.is_empty() || !finite || r.width == 0 || r.height == 0 {
            return Err(format!(
                "{name}: result {i} ({} {} {}x{}) has no usable times or no size",
                r.tool, r.mode, r.width, r.height
            ));
        }
    }
    Ok(file)
}

/// What identifies one measurement across files.
fn key(r: &Record) -> (&str, &str, &str, &str, &str, u32, u32, u32) {
    (
        &r.tool,
        &r.adapter.name,
        &r.adapter.backend,
        &r.model,
        &r.mode,
        r.width,
        r.height,
        r.scale,
    )
}

/// Pool the runs of records that measured the same thing (tool, adapter, backend, model, mode,
/// size), in order of first appearance: alternating rounds of a side-by-side run become one
/// record each.
pub fn merge(records: &[Record]) -> Vec<Record> {
    let mut out: Vec<Record> = Vec::new();
    for r in records {
        match out.iter_mut().find(|o| key(o) == key(r)) {
            Some(o) => {
                let old_gops = o.gops;
                let ops = o.gops.map(|g| g * o.median_ms);
                o.times_ms.extend(&r.times_ms);
                o.runs += r.runs;
                (o.median_ms, o.min_ms, o.max_ms) = summarize(&o.times_ms);
                o.gops = ops.map(|x| x / o.median_ms);
                // the share of peak scales with the pooled throughput
                if let (Some(share), Some(old), Some(new)) = (o.peak_share, old_gops, o.gops) {
                    o.peak_share = Some(share * new / old);
                }
            }
            None => out.push(r.clone()),
        }
    }
    out
}

fn mib(bytes: u64) -> String {
    format!("{:.0}", bytes as f64 / (1u64 << 20) as f64)
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |x| format!("{x:.digits$}"))
}

/// The latency table (markdown), one block of rows per input size, each row with its speed-up
/// against the first row of its size.
pub fn latency_table(records: &[Record]) -> String {
    let mut sizes: Vec<(u32, u32, u32)> = Vec::new();
    for r in records {
        if !sizes.contains(&(r.width, r.height, r.scale)) {
            sizes.push((r.width, r.height, r.scale));
        }
    }
    let mut s = String::new();
    for (w, h, scale) in sizes {
        let rows: Vec<&Record> = records
            .iter()
            .filter(|r| (r.width, r.height, r.scale) == (w, h, scale))
            .collect();
        let first = rows[0];
        let _ = writeln!(
            s,
            "\n{w}x{h} -> x{scale} (speed-up against {} {} on {})\n",
            first.tool, first.mode, first.adapter.name
        );
        let _ = writeln!(
            s,
            "| tool | adapter | backend | model | mode | median ms | min | max | runs | GOPS | % of peak | memory MiB | speed-up |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        for r in rows {
            let _ = writeln!(
                s,
                "| {} {} | {} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {} | {} | {} | {} | {:.2}x |",
                r.tool,
                r.tool_version,
                r.adapter.name,
                r.adapter.backend,
                r.model,
                r.mode,
                r.median_ms,
                r.min_ms,
                r.max_ms,
                r.runs,
                opt(r.gops, 2),
                opt(r.peak_share.map(|p| p * 100.0), 1),
                r.memory_bytes.map_or("-".into(), mib),
                first.median_ms / r.median_ms,
            );
        }
    }
    s
}

/// The per-stage table (markdown, ms) of the records that have a split; only the stages that
/// occurred get a column.
pub fn stage_table(records: &[Record]) -> String {
    let with: Vec<&Record> = records.iter().filter(|r| r.stages.is_some()).collect();
    if with.is_empty() {
        return String::new();
    }
    let split = |r: &Record| r.stages.clone().expect("filtered");
    let columns: Vec<Stage> = Stage::ALL
        .into_iter()
        .filter(|s| with.iter().any(|r| split(r).ms.contains_key(s.key())))
        .collect();
    let mut s = String::new();
    let _ = write!(s, "| adapter | mode | size | clock |");
    for c in &columns {
        let _ = write!(s, " {} |", c.key());
    }
    let _ = write!(s, "\n|---|---|---|---|");
    for _ in &columns {
        let _ = write!(s, "---|");
    }
    s.push('\n');
    for r in with {
        let sp = split(r);
        let _ = write!(
            s,
            "| {} | {} | {}x{} | {} |",
            r.adapter.name, r.mode, r.width, r.height, sp.clock
        );
        for c in &columns {
            let _ = write!(
                s,
                " {} |",
                sp.ms.get(c.key()).map_or("-".into(), |v| format!("{v:.1}"))
            );
        }
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(tool: &str, mode: &str, times: &[f64]) -> Record {
        let (median_ms, min_ms, max_ms) = summarize(times);
        Record {
            tool: tool.into(),
            tool_version: "1".into(),
            date: "2026-11-22T00:00:00Z".into(),
            adapter: AdapterRecord {
                name: "gpu".into(),
                backend: "Vulkan".into(),
                vendor: None,
                device_type: None,
                driver: None,
                driver_info: None,
                int_dot: None,
                threads: None,
            },
            model: "m".into(),
            mode: mode.into(),
            width: 8,
            height: 8,
            scale: 4,
            warmup: None,
            runs: times.len() as u32,
            times_ms: times.to_vec(),
            median_ms,
            min_ms,
            max_ms,
            gops: Some(100.0 / median_ms),
            peak_share: None,
            peak: None,
            memory_bytes: None,
            stages: None,
        }
    }

    #[test]
    fn summarize_takes_the_middle() {
        assert_eq!(summarize(&[3.0, 1.0, 2.0]), (2.0, 1.0, 3.0));
        assert_eq!(summarize(&[4.0, 1.0, 2.0, 3.0]), (2.5, 1.0, 4.0));
    }

    #[test]
    fn merge_pools_same_measurements_and_keeps_others() {
        let rs = [
            record("refqsr", "fp32", &[10.0, 12.0]),
            record("ncnn", "ncnn-fp32", &[20.0]),
            record("refqsr", "fp32", &[11.0, 30.0, 9.0]),
        ];
        let m = merge(&rs);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].runs, 5);
        assert_eq!(
            (m[0].median_ms, m[0].min_ms, m[0].max_ms),
            (11.0, 9.0, 30.0)
        );
        // the same work in the pooled median time
        assert!((m[0].gops.unwrap() - 100.0 / 11.0).abs() < 1e-12);
        assert_eq!(m[1].tool, "ncnn");
    }

    #[test]
    fn tables_name_every_record_and_ratio_to_the_first() {
        let rs = [
            record("ncnn", "ncnn-fp32", &[20.0]),
            record("refqsr", "w8a8", &[10.0]),
        ];
        let t = latency_table(&rs);
        assert!(t.contains("| ncnn 1 |") && t.contains("| w8a8 |"), "{t}");
        assert!(t.contains("2.00x"), "{t}");
        assert!(stage_table(&rs).is_empty());
    }
}
