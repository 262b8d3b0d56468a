//! The resume journal. Every expensive, state-changing native call of a script (training,
//! sampling) is numbered; when it finishes, its result — the returned value, the tensors it
//! changed (trained weights, optimizer moments) and how many metrics rows the run had — is
//! written to `journal/NNNNN.safetensors` and then `journal/NNNNN.json` (the commit marker),
//! each atomically. `host run --resume DIR` runs the script again from the top: a journaled
//! call whose entry exists is replayed (its result restored, nothing recomputed), and the first
//! call without one runs live, so a run killed at any point (even `kill -9` inside a DPO epoch)
//! continues from its last finished call. The torch generator is reseeded from the run seed and
//! the call number before and after every journaled call, so random draws do not depend on
//! whether earlier calls ran or were replayed. A commit copies the tensors and writes them in
//! a background thread while the script goes on (a checkpoint written asynchronously, as
//! torch.distributed.checkpoint's `async_save`); the next commit, and the end of the run, wait
//! for it, so entries reach the disk in order and a run killed during a write resumes from the
//! entry before.
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::{Path, PathBuf};
use tch::Tensor;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    pub index: usize,
    /// The script function: `dpo`, `sft`, `generate`, `train_scorer`.
    pub kind: String,
    /// A hash of the call's inputs, to catch a script or settings that changed before resuming.
    pub key: String,
    pub output: Value,
    /// Metrics rows of the run when the call finished.
    pub rows_after: usize,
    /// Whether `NNNNN.safetensors` holds tensors for this entry.
    pub tensors: bool,
}

pub struct Journal {
    dir: PathBuf,
    done: Vec<Entry>,
    next: usize,
    seed: i64,
    /// Whether this process writes the journal (rank 0 of a distributed run; the other ranks
    /// replay the same entries and commit nothing).
    write: bool,
    /// The last commit's files being written: its index and the writer thread.
    writing: Option<(usize, std::thread::JoinHandle<Result<()>>)>,
}

/// What `begin` found for a call.
pub enum Start {
    /// Run the call; pass this index to `commit`.
    Live(usize),
    /// The call finished before: its entry and tensors.
    Replay(Entry, Vec<(String, Tensor)>),
}

fn mix(seed: i64, index: usize, phase: u64) -> i64 {
    let mut z = (seed as u64) ^ ((index as u64) << 1 | phase).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) >> 1) as i64
}

impl Journal {
    /// The journal of the run at `run_dir`: empty for a new run; for a resumed run, the
    /// consecutive committed entries (anything after the first missing or unreadable one is
    /// removed, as a call that did not finish). With `write` false (ranks other than 0, after rank
    /// 0 has opened it) the entries are read and no file is touched.
    pub fn open(run_dir: &Path, seed: i64, resume: bool, write: bool) -> Result<Journal> {
        let dir = run_dir.join("journal");
        if write {
            std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let mut done = Vec::new();
        if resume {
            loop {
                let path = dir.join(format!("{:05}.json", done.len()));
                let Ok(text) = std::fs::read_to_string(&path) else { break };
                let entry: Entry = serde_json::from_str(&text).with_context(|| format!("{}: not a journal entry", path.display()))?;
                if entry.index != done.len() {
                    bail!("{}: entry {} out of order", path.display(), entry.index);
                }
                done.push(entry);
            }
        }
        if !write {
            return Ok(Journal { dir, done, next: 0, seed, write, writing: None });
        }
        // Files of calls that did not commit (or of an earlier run in this folder).
        for f in std::fs::read_dir(&dir)? {
            let p = f?.path();
            let n = p.file_stem().and_then(|s| s.to_str()).and_then(|s| s.trim_start_matches('.').split('.').next().map(str::to_string)).and_then(|s| s.parse::<usize>().ok());
            if n.is_none_or(|n| n >= done.len()) {
                let _ = std::fs::remove_file(&p);
            }
        }
        Ok(Journal { dir, done, next: 0, seed, write, writing: None })
    }

    /// Committed entries (a resumed run replays these).
    pub fn len(&self) -> usize {
        self.done.len()
    }

    pub fn is_empty(&self) -> bool {
        self.done.is_empty()
    }

    /// Metrics rows the run had after its last committed call (0 with none).
    pub fn rows_after_last(&self) -> usize {
        self.done.last().map_or(0, |e| e.rows_after)
    }

    /// Starts the next journaled call: reseeds the torch generator and says whether to run it
    /// (a failed write of the last commit, when it has ended, is reported here).
    pub fn begin(&mut self, kind: &str, key: &str) -> Result<Start> {
        if self.writing.as_ref().is_some_and(|(_, w)| w.is_finished()) {
            self.finish()?; // a failed write stops the run here rather than after this call
        }
        let index = self.next;
        self.next += 1;
        tch::manual_seed(mix(self.seed, index, 0));
        let Some(entry) = self.done.get(index) else { return Ok(Start::Live(index)) };
        if entry.kind != kind || entry.key != key {
            bail!(
                "resume: call {index} of the interrupted run was `{}` with other inputs than this `{kind}` call; the script, its settings or its data changed since — start a new run instead",
                entry.kind
            );
        }
        let tensors = if entry.tensors {
            let path = self.dir.join(format!("{index:05}.safetensors"));
            Tensor::read_safetensors(&path).map_err(|e| anyhow::anyhow!("{}: {}", path.display(), crate::util::first_line(&e.to_string())))?
        } else {
            Vec::new()
        };
        let entry = entry.clone();
        tch::manual_seed(mix(self.seed, index, 1));
        Ok(Start::Replay(entry, tensors))
    }

    /// Records a finished call: a copy of its tensors, written in the background, first to
    /// `NNNNN.safetensors`, then the entry (the commit marker). Waits for the previous commit's
    /// files first; a failed write is reported here or by `finish`.
    pub fn commit(&mut self, index: usize, kind: &str, key: &str, output: Value, rows_after: usize, tensors: &[(String, Tensor)]) -> Result<()> {
        if !self.write {
            tch::manual_seed(mix(self.seed, index, 1));
            return Ok(());
        }
        self.finish()?;
        // A copy the script cannot change while it is written (training goes on in place).
        let copy = |t: &Tensor| -> Result<Tensor> { Ok(t.f_detach()?.f_to_device_(tch::Device::Cpu, t.kind(), false, true)?.f_contiguous()?) };
        let cpu: Vec<(String, Tensor)> = tensors.iter().map(|(n, t)| Ok((n.clone(), copy(t)?))).collect::<Result<_>>()?;
        let entry = Entry { index, kind: kind.into(), key: key.into(), output, rows_after, tensors: !tensors.is_empty() };
        let marker = serde_json::to_string(&entry)?;
        let dir = self.dir.clone();
        let writer = std::thread::Builder::new().name("journal".into()).spawn(move || -> Result<()> {
            if !cpu.is_empty() {
                // A full disk leaves no partial file behind, and the call is not committed.
                super::write_safetensors_atomic(&dir.join(format!("{index:05}.safetensors")), &cpu)?;
            }
            super::write_atomic(&dir.join(format!("{index:05}.json")), marker.as_bytes())
        })?;
        self.writing = Some((index, writer));
        self.done.push(entry);
        tch::manual_seed(mix(self.seed, index, 1));
        Ok(())
    }

    /// Waits for the last commit's files to be written (the end of a run, and every commit).
    pub fn finish(&mut self) -> Result<()> {
        match self.writing.take() {
            None => Ok(()),
            Some((index, writer)) => {
                let written = writer.join().map_err(|_| anyhow::anyhow!("the writer thread stopped"))?;
                written.with_context(|| format!("resume journal: writing call {index} (the run cannot resume past it)"))
            }
        }
    }
}

impl Drop for Journal {
    /// A run that ends without `finish` (an error on the way out) still completes the write.
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

/// A short content hash of a call's inputs.
pub fn key(parts: &[&str]) -> String {
    let mut h = crate::util::Hasher::new();
    for p in parts {
        h.bytes(p.as_bytes());
        h.word(p.len() as u64);
    }
    format!("{:016x}", h.finish())
}
