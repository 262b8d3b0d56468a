//! The run directory every `host run` writes to: `config.json` (the resolved configuration, seed,
//! versions and status), and the metrics that `log(map)` appends to `metrics.jsonl` and
//! `metrics.csv`. Files that are replaced as a whole are written to a temporary name and renamed,
//! so a run killed at any moment never leaves a half-written file.
pub mod journal;
pub mod progress;
pub mod report;

use anyhow::{Context, Result};
use serde_json::{Map, Value};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Writes `path` atomically: `write` fills a temporary file of this writer's own beside it, which
/// is then renamed over `path`. A reader sees the old file or the new one; two processes writing
/// the same path at once both succeed, leaving one of the two complete files; when writing fails
/// (a full disk, a read-only folder) the temporary file is removed and the error names `path`.
pub fn write_via_temp(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!(".{name}.{}-{n}.tmp", std::process::id()));
    if let Err(e) = write(&tmp) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot write {}", path.display()));
    }
    std::fs::rename(&tmp, path).with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))
}

/// Writes `bytes` to `path` atomically (`write_via_temp`), synced to disk before the rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_via_temp(path, |tmp| {
        let mut f = File::create(tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        Ok(())
    })
}

/// Writes tensors as a safetensors file at `path` atomically (`write_via_temp`).
pub fn write_safetensors_atomic(path: &Path, tensors: &[(String, tch::Tensor)]) -> Result<()> {
    write_via_temp(path, |tmp| {
        tch::Tensor::write_safetensors(tensors, tmp).map_err(|e| anyhow::anyhow!("{}", crate::util::first_line(&e.to_string())))
    })
}

/// `runs/<script stem>-<UTC time>`, with a numeric suffix if that folder already exists.
pub fn default_dir(script: &Path, now: SystemTime) -> PathBuf {
    let stem = script.file_stem().and_then(|s| s.to_str()).unwrap_or("run");
    let stamp: String = humantime::format_rfc3339_seconds(now)
        .to_string()
        .chars()
        .filter_map(|c| match c {
            '-' | ':' | 'Z' => None,
            'T' => Some('-'),
            c => Some(c),
        })
        .collect();
    let base = Path::new("runs").join(format!("{stem}-{stamp}"));
    let mut dir = base.clone();
    let mut n = 2;
    while dir.exists() {
        dir = PathBuf::from(format!("{}-{n}", base.display()));
        n += 1;
    }
    dir
}

pub struct RunDir {
    pub path: PathBuf,
    /// `config.json` as it stands; rewritten whenever it changes.
    config: Map<String, Value>,
    columns: Vec<String>,
    rows: Vec<Map<String, Value>>,
    /// `metrics.jsonl`, open for appending; None on a rank other than 0 of a distributed run,
    /// which keeps its rows in memory (for `report`) and writes no file of the run directory.
    jsonl: Option<File>,
    started: std::time::Instant,
    /// Rows a resumed run already has: the first `replayed` calls of `log` write nothing.
    replayed: usize,
    /// Rows logged (or replayed) so far in this process.
    cursor: usize,
}

impl RunDir {
    /// Creates the folder and writes the first `config.json`.
    pub fn create(path: &Path, header: Map<String, Value>) -> Result<Self> {
        std::fs::create_dir_all(path).with_context(|| format!("cannot create run directory {}", path.display()))?;
        // A new run starts its metrics afresh, even in a folder an earlier run used.
        let _ = std::fs::remove_file(path.join("metrics.csv"));
        let jsonl = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(path.join("metrics.jsonl"))
            .with_context(|| format!("cannot write {}", path.join("metrics.jsonl").display()))?;
        let mut run = RunDir {
            path: path.to_path_buf(),
            config: header,
            columns: Vec::new(),
            rows: Vec::new(),
            jsonl: Some(jsonl),
            started: std::time::Instant::now(),
            replayed: 0,
            cursor: 0,
        };
        run.set("status", "running".into())?;
        Ok(run)
    }

    /// The run directory at `path` as a rank other than 0 of a distributed run sees it: the same
    /// path and the rows it logs, kept in memory; it writes nothing (rank 0 writes the folder).
    pub fn follow(path: &Path, header: Map<String, Value>) -> Self {
        RunDir { path: path.to_path_buf(), config: header, columns: Vec::new(), rows: Vec::new(), jsonl: None, started: std::time::Instant::now(), replayed: 0, cursor: 0 }
    }

    /// Whether this process writes the run directory (false on ranks other than 0).
    pub fn writes(&self) -> bool {
        self.jsonl.is_some()
    }

    /// Reopens the run at `path` to resume it: keeps its `config.json` and its first `rows`
    /// metrics rows (those written up to its last journaled call), which the replayed part of
    /// the script will not write again. With `write` false (ranks other than 0) the same state
    /// is read and nothing is written.
    pub fn resume(path: &Path, rows: usize, write: bool) -> Result<Self> {
        let config_path = path.join("config.json");
        let text = std::fs::read_to_string(&config_path).with_context(|| format!("{}: cannot read; is this a run directory?", config_path.display()))?;
        let Value::Object(config) = serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", config_path.display()))? else {
            anyhow::bail!("{}: not a JSON object", config_path.display());
        };
        let jsonl_path = path.join("metrics.jsonl");
        let mut kept = Vec::new();
        if let Ok(text) = std::fs::read_to_string(&jsonl_path) {
            for (i, line) in text.lines().take(rows).enumerate() {
                match serde_json::from_str(line) {
                    Ok(Value::Object(m)) => kept.push(m),
                    _ => anyhow::bail!("{}:{}: not a JSON object", jsonl_path.display(), i + 1),
                }
            }
        }
        if kept.len() < rows {
            anyhow::bail!("{}: {} rows, but the journal says {rows} were written", jsonl_path.display(), kept.len());
        }
        if !write {
            let mut run = RunDir::follow(path, config);
            run.rows = kept;
            run.replayed = rows;
            return Ok(run);
        }
        let mut text = String::new();
        let mut columns: Vec<String> = Vec::new();
        if let Ok(old) = std::fs::read_to_string(&jsonl_path) {
            for line in old.lines().take(rows) {
                text.push_str(line);
                text.push('\n');
            }
        }
        for r in &kept {
            for k in r.keys() {
                if !columns.contains(k) {
                    columns.push(k.clone());
                }
            }
        }
        write_atomic(&jsonl_path, text.as_bytes())?;
        let mut w = csv::Writer::from_writer(Vec::new());
        w.write_record(&columns)?;
        for r in &kept {
            w.write_record(columns.iter().map(|c| cell(r.get(c))))?;
        }
        write_atomic(&path.join("metrics.csv"), &w.into_inner()?)?;
        let jsonl = OpenOptions::new().append(true).open(&jsonl_path)?;
        let resumed = config.get("resumed").and_then(Value::as_u64).unwrap_or(0) + 1;
        let mut run = RunDir { path: path.to_path_buf(), config, columns, rows: kept, jsonl: Some(jsonl), started: std::time::Instant::now(), replayed: rows, cursor: 0 };
        run.set("resumed", resumed.into())?;
        run.set("status", "running".into())?;
        Ok(run)
    }

    /// A field of `config.json`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.config.get(key)
    }

    /// Rows logged so far, replayed ones included.
    pub fn cursor(&self) -> usize {
        self.cursor
    }

    /// After a replayed call: the rows it had logged count as logged.
    pub fn skip_to(&mut self, rows: usize) {
        self.cursor = self.cursor.max(rows);
    }

    /// Sets one top-level field of `config.json` and rewrites it.
    pub fn set(&mut self, key: &str, value: Value) -> Result<()> {
        self.config.insert(key.to_string(), value);
        if !self.writes() {
            return Ok(());
        }
        write_atomic(&self.path.join("config.json"), serde_json::to_string_pretty(&self.config)?.as_bytes())
    }

    /// Records a resolved `config(key, default)` value under `config` in `config.json`.
    pub fn record_config(&mut self, key: &str, value: Value) -> Result<()> {
        let mut map = self.config.get("config").and_then(Value::as_object).cloned().unwrap_or_default();
        if map.get(key) == Some(&value) {
            return Ok(());
        }
        map.insert(key.to_string(), value);
        self.set("config", Value::Object(map))
    }

    /// Appends one metrics row. A row with a column never seen before rewrites `metrics.csv`
    /// with the widened header (earlier rows get empty cells); otherwise the row is appended.
    pub fn log(&mut self, row: Map<String, Value>) -> Result<()> {
        self.cursor += 1;
        if self.cursor <= self.replayed {
            return Ok(());
        }
        let before = self.columns.len();
        for k in row.keys() {
            if !self.columns.contains(k) {
                self.columns.push(k.clone());
            }
        }
        let Some(jsonl) = self.jsonl.as_mut() else {
            self.rows.push(row);
            return Ok(());
        };
        writeln!(jsonl, "{}", Value::Object(row.clone()))
            .and_then(|()| jsonl.flush())
            .with_context(|| format!("cannot append to {}", self.path.join("metrics.jsonl").display()))?;
        self.rows.push(row);
        let csv_path = self.path.join("metrics.csv");
        if self.columns.len() != before {
            let mut w = csv::Writer::from_writer(Vec::new());
            w.write_record(&self.columns)?;
            for r in &self.rows {
                w.write_record(self.columns.iter().map(|c| cell(r.get(c))))?;
            }
            write_atomic(&csv_path, &w.into_inner()?)?;
        } else {
            let appended = (|| -> Result<()> {
                let file = OpenOptions::new().append(true).open(&csv_path)?;
                let mut w = csv::Writer::from_writer(file);
                w.write_record(self.columns.iter().map(|c| cell(self.rows.last().and_then(|r| r.get(c)))))?;
                w.flush()?;
                Ok(())
            })();
            appended.with_context(|| format!("cannot append to {}", csv_path.display()))?;
        }
        Ok(())
    }

    /// Every metrics row logged so far.
    pub fn rows(&self) -> &[Map<String, Value>] {
        &self.rows
    }

    /// Marks the run finished (`ok`, `failed` or `interrupted`) with its wall time.
    pub fn finish(&mut self, status: &str) -> Result<()> {
        let elapsed = humantime::format_duration(std::time::Duration::from_secs(self.started.elapsed().as_secs())).to_string();
        self.set("elapsed", elapsed.into())?;
        self.set("status", status.into())
    }
}

fn cell(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}
