//! `ztagent run --events-file PATH`: every event record appended to PATH as one JSON line, in
//! the schema of `ztagent events -o json` ([`EventRecord`]). When a line would take the file
//! past `--events-file-max-bytes`, the files rotate: PATH.2 -> PATH.3, PATH.1 -> PATH.2,
//! PATH -> PATH.1, and a new PATH is started (PATH.3's old content is dropped). The agent
//! rotates by itself: do not point an external logrotate at these files.
//!
//! The writer subscribes to the event stream like any client: if it falls behind (a slow
//! disk), it writes `{"missed": N}` where N records are absent, and carries on from the
//! newest; it never holds up the event reader. Records it failed to write (disk full, ...)
//! are reported the same way once writing works again.
use std::{
    ffi::OsString,
    fs::{self, File, OpenOptions},
    io::{self, BufWriter, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    sync::Arc,
};

use tokio::sync::{
    broadcast::{self, error::RecvError, error::TryRecvError},
    oneshot,
};

use crate::{
    api::Missed,
    api::{EventFilter, EventRecord},
    events::EventHub,
};

/// Default `--events-file-max-bytes`: 64 MiB.
pub const DEFAULT_MAX_BYTES: u64 = 64 << 20;
/// Rotated files kept: PATH.1 (the newest) .. PATH.3.
pub const KEEP: usize = 3;
/// Records written per batch (one flush each).
const BATCH: usize = 4096;

/// An append-only JSON-lines file, rotated by size.
pub struct EventFile {
    path: PathBuf,
    max_bytes: u64,
    keep: usize,
    out: Option<BufWriter<File>>,
    /// Bytes in the current file.
    size: u64,
}

impl EventFile {
    /// Opens (creating it, mode 0640) `path` for appending.
    pub fn open(path: &Path, max_bytes: u64) -> io::Result<EventFile> {
        let mut f = EventFile { path: path.into(), max_bytes: max_bytes.max(1), keep: KEEP, out: None, size: 0 };
        f.reopen()?;
        Ok(f)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn reopen(&mut self) -> io::Result<()> {
        let file = OpenOptions::new().create(true).append(true).mode(0o640).open(&self.path)?;
        self.size = file.metadata()?.len();
        self.out = Some(BufWriter::with_capacity(1 << 16, file));
        Ok(())
    }

    /// PATH.n
    fn numbered(&self, n: usize) -> PathBuf {
        let mut s: OsString = self.path.clone().into_os_string();
        s.push(format!(".{n}"));
        PathBuf::from(s)
    }

    /// Appends `line` (which ends with a newline), rotating first if it would take the file
    /// past the maximum size. A line larger than the maximum gets a file of its own.
    pub fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
        let r = self.try_write_line(line);
        if r.is_err() {
            // Start again from a freshly opened file next time.
            self.out = None;
        }
        r
    }

    fn try_write_line(&mut self, line: &[u8]) -> io::Result<()> {
        if self.out.is_none() {
            self.reopen()?;
        }
        if self.size > 0 && self.size + line.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        let out = self.out.as_mut().ok_or_else(|| io::Error::other("the events file is not open"))?;
        out.write_all(line)?;
        self.size += line.len() as u64;
        Ok(())
    }

    pub fn flush(&mut self) -> io::Result<()> {
        match self.out.as_mut().map(|o| o.flush()) {
            Some(Err(e)) => {
                self.out = None;
                Err(e)
            }
            _ => Ok(()),
        }
    }

    /// PATH.(keep-1) -> PATH.keep, ..., PATH -> PATH.1, and a new, empty PATH.
    fn rotate(&mut self) -> io::Result<()> {
        if let Some(mut out) = self.out.take() {
            out.flush()?;
        }
        for n in (1..self.keep).rev() {
            match fs::rename(self.numbered(n), self.numbered(n + 1)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        if self.keep > 0 {
            fs::rename(&self.path, self.numbered(1))?;
        } else {
            fs::remove_file(&self.path)?;
        }
        self.reopen()
    }
}

/// One line of the file.
enum Line {
    Record(Arc<EventRecord>),
    Missed(u64),
}

impl Line {
    fn bytes(&self) -> Vec<u8> {
        let mut v = match self {
            Line::Record(r) => serde_json::to_vec(&**r),
            Line::Missed(n) => serde_json::to_vec(&Missed { missed: *n }),
        }
        .unwrap_or_default();
        v.push(b'\n');
        v
    }

    /// Records this line stands for (to report them if it cannot be written).
    fn records(&self) -> u64 {
        match self {
            Line::Record(_) => 1,
            Line::Missed(n) => *n,
        }
    }
}

/// Writes `lines`, then flushes; on failure, how many records did not make it (all of the
/// batch: some may in fact be in the file).
fn write_batch(file: &mut EventFile, lines: &[Line]) -> Result<(), (u64, io::Error)> {
    let lost = || lines.iter().map(Line::records).sum::<u64>();
    for l in lines {
        file.write_line(&l.bytes()).map_err(|e| (lost(), e))?;
    }
    file.flush().map_err(|e| (lost(), e))
}

/// The task writing the event stream to a file.
pub struct Sink {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Sink {
    /// Subscribes to `hub` and writes every record from now on to `file`.
    pub fn start(file: EventFile, hub: &EventHub) -> Sink {
        let live = hub.subscribe(&EventFilter::default()).live;
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(run(file, live, stopped));
        Sink { stop, task }
    }

    /// Writes what is already queued, then stops.
    pub async fn finish(self) {
        let _ = self.stop.send(());
        if tokio::time::timeout(std::time::Duration::from_secs(5), self.task).await.is_err() {
            tracing::warn!("the events file writer did not finish in time");
        }
    }
}

async fn run(mut file: EventFile, mut live: broadcast::Receiver<Arc<EventRecord>>, mut stop: oneshot::Receiver<()>) {
    // Records not in the file because writing failed, reported when it works again.
    let mut unwritten: u64 = 0;
    let mut failing = false;
    loop {
        let mut lines = Vec::new();
        if unwritten > 0 {
            lines.push(Line::Missed(unwritten));
        }
        let mut done = false;
        // Wait for the first record (or the stop), then take whatever else is queued.
        tokio::select! {
            r = live.recv() => match r {
                Ok(r) => lines.push(Line::Record(r)),
                Err(RecvError::Lagged(n)) => lines.push(Line::Missed(n)),
                Err(RecvError::Closed) => done = true,
            },
            _ = &mut stop => done = true,
        }
        // Stopping: everything queued goes in (the queue is bounded by the stream's lag).
        while lines.len() < BATCH || done {
            match live.try_recv() {
                Ok(r) => lines.push(Line::Record(r)),
                Err(TryRecvError::Lagged(n)) => lines.push(Line::Missed(n)),
                Err(TryRecvError::Empty | TryRecvError::Closed) => break,
            }
        }
        if !lines.is_empty() {
            let (f, result) = match tokio::task::spawn_blocking(move || {
                let r = write_batch(&mut file, &lines);
                (file, r)
            })
            .await
            {
                Ok(x) => x,
                Err(e) => return tracing::error!("the events file writer failed: {e}"),
            };
            file = f;
            match result {
                Ok(()) => {
                    if failing {
                        tracing::info!("writing {} again ({unwritten} records missed)", file.path().display());
                    }
                    unwritten = 0;
                    failing = false;
                }
                Err((lost, e)) => {
                    if !failing {
                        let path = file.path().display();
                        tracing::warn!("cannot write events to {path}: {e}; retrying with the next events");
                    }
                    // The batch began with the previous report, which is counted in `lost`.
                    unwritten = lost;
                    failing = true;
                }
            }
        }
        if done {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ztagent-sink-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn read(p: &Path) -> String {
        fs::read_to_string(p).unwrap_or_default()
    }

    #[test]
    fn rotates_by_size_and_keeps_three() {
        let dir = tempdir("rotate");
        let path = dir.join("events.jsonl");
        // Lines of 10 bytes, files of at most 25: two lines a file.
        let mut f = EventFile::open(&path, 25).unwrap();
        for i in 0..11 {
            f.write_line(format!("line {i:03}\n").as_bytes()).unwrap();
        }
        f.flush().unwrap();
        assert_eq!(read(&path), "line 010\n");
        assert_eq!(read(&f.numbered(1)), "line 008\nline 009\n");
        assert_eq!(read(&f.numbered(2)), "line 006\nline 007\n");
        assert_eq!(read(&f.numbered(3)), "line 004\nline 005\n");
        assert!(!f.numbered(4).exists());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn appends_to_an_existing_file_and_counts_its_size() {
        let dir = tempdir("append");
        let path = dir.join("e.jsonl");
        fs::write(&path, "old line\n").unwrap();
        let mut f = EventFile::open(&path, 20).unwrap();
        f.write_line(b"new 1\n").unwrap(); // 9 + 6 = 15: fits
        f.write_line(b"new 2\n").unwrap(); // 21 > 20: rotates first
        f.flush().unwrap();
        assert_eq!(read(&f.numbered(1)), "old line\nnew 1\n");
        assert_eq!(read(&path), "new 2\n");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_oversized_line_gets_a_file_of_its_own() {
        let dir = tempdir("big");
        let path = dir.join("e.jsonl");
        let mut f = EventFile::open(&path, 4).unwrap();
        f.write_line(b"0123456789\n").unwrap();
        f.write_line(b"ab\n").unwrap();
        f.flush().unwrap();
        assert_eq!(read(&f.numbered(1)), "0123456789\n");
        assert_eq!(read(&path), "ab\n");
        let _ = fs::remove_dir_all(&dir);
    }

    fn record(n: u64) -> EventRecord {
        EventRecord {
            time: "2026-01-01T00:00:00.000Z".into(),
            iface: Some("eth0".into()),
            direction: Some("ingress".into()),
            verdict: "denied".into(),
            reason: "default".into(),
            rule: None,
            rate_limit: None,
            src: Some("10.0.0.1".parse().unwrap()),
            dst: Some("10.0.0.2".parse().unwrap()),
            sport: Some(1234),
            dport: Some(22),
            proto: Some("tcp".into()),
            icmp_id: None,
            icmp: None,
            ports: Vec::new(),
            src_segment: "world".into(),
            dst_segment: "payments".into(),
            count: n,
            len: Some(60),
            revision: 1,
            note: None,
            severity: None,
            src_pod: None,
            aggregate: None,
            http: None,
            dst_pod: None,
        }
    }

    #[tokio::test]
    async fn writes_records_and_what_it_missed() {
        let dir = tempdir("task");
        let path = dir.join("e.jsonl");
        let (tx, live) = broadcast::channel(4);
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(run(EventFile::open(&path, DEFAULT_MAX_BYTES).unwrap(), live, stopped));
        // Six records into a channel of four before the writer runs: it misses two.
        for n in 1..=6 {
            tx.send(Arc::new(record(n))).unwrap();
        }
        tokio::task::yield_now().await;
        stop.send(()).ok();
        let _ = task.await;
        let text = read(&path);
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines[0], serde_json::json!({ "missed": 2 }), "{text}");
        let counts: Vec<u64> = lines[1..].iter().map(|v| v["count"].as_u64().unwrap()).collect();
        assert_eq!(counts, [3, 4, 5, 6], "{text}");
        let back: EventRecord = serde_json::from_value(lines[1].clone()).unwrap();
        assert_eq!(back, record(3));
        let _ = fs::remove_dir_all(&dir);
    }
}
