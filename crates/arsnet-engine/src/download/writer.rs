//! The storage side of a download job: writes verified segments at their final offsets and
//! makes them durable in batches (fdatasync dump, then journal append + fsync, inside the
//! store's `commit`). Runs as a task that moves the store onto the blocking pool for every
//! disk operation, so slow disks never stall the network side except through the bounded
//! channel that feeds it (which is the backpressure we want; the job tells the scheduler
//! when that channel is full).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arsnet_proto::control::Pin;

use arsnet_store::{DownloadStore, StoreError};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::buffers::BufferPool;
use super::end_check::{self, Mismatch, RunningCheck, SegmentReader};

/// Messages queued to the writer at most: each may hold a segment buffer.
pub(crate) const WRITER_QUEUE: usize = 8;

/// What finishing needs besides the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Finish {
    pub overwrite: bool,
    /// `(uid, gid)` the published file is given to, if not the daemon's user.
    pub give_to: Option<(u32, u32)>,
    /// The pin the whole file is checked against before it is published, if any (see
    /// `DownloadSpec::end_check`).
    pub check: Option<arsnet_proto::control::Pin>,
}

/// What the job asks of the writer.
pub(crate) enum WriteMsg {
    Segment {
        segment: u64,
        data: Vec<u8>,
    },
    /// These segments will be written again (their source lied): the end check's running
    /// hash must wait for their new bytes.
    Redo(Vec<u64>),
    /// Every segment is in: commit, check the whole file against the pin if asked (a
    /// mismatch is reported and publishes nothing), then publish the dump.
    Finish(Finish),
    /// Stop at a durable point; `discard` removes the partial files (cancel without --keep).
    Close {
        discard: bool,
    },
}

/// What the writer tells the job.
#[derive(Debug)]
pub(crate) enum WriteReport {
    Durable(u64),
    Finished(PathBuf),
    /// The finished dump is not the pinned content; nothing was published, and the writer
    /// still holds the store.
    CheckFailed(Box<Mismatch>),
    Closed,
    Failed(WriteError),
}

/// Why the writer stopped.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    /// A store operation failed (it names the file and the operation). Shared, so that the
    /// job can keep the error it reports.
    #[error(transparent)]
    Store(Arc<StoreError>),
    #[error("storage task failed: {0}")]
    Task(TaskFailure),
    #[error("storage is gone after an earlier failure")]
    Gone,
}

impl From<StoreError> for WriteError {
    fn from(e: StoreError) -> Self {
        WriteError::Store(Arc::new(e))
    }
}

/// How a store operation on the blocking pool ended without an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TaskFailure {
    /// The operation panicked (a bug: its state is not to be trusted).
    #[error("a storage operation panicked")]
    Panicked,
    /// The runtime is shutting down and dropped it.
    #[error("a storage operation was cancelled by the runtime shutting down")]
    Cancelled,
}

impl From<tokio::task::JoinError> for TaskFailure {
    fn from(e: tokio::task::JoinError) -> Self {
        if e.is_panic() {
            TaskFailure::Panicked
        } else {
            TaskFailure::Cancelled
        }
    }
}

/// What the writer needs of a store: the production one is [`DownloadStore`]; tests use a
/// store over crash-simulating files.
pub(crate) trait Storage: SegmentReader + Send + 'static {
    fn write_segment(&mut self, segment: u64, data: &[u8]) -> Result<(), StoreError>;
    /// Makes `segments` (all written) durable and journaled.
    fn commit(&mut self, segments: &[u64]) -> Result<(), StoreError>;
    /// Everything is committed: whether the dump is the pinned content (`None`: it is).
    fn check(&self, pin: Pin) -> Result<Option<Mismatch>, StoreError>;
    /// Everything is committed and checked: publish the file, say where it is.
    fn finalize(self, finish: Finish) -> Result<PathBuf, WriteError>;
    /// Removes the partial files.
    fn discard(self) -> Result<(), StoreError>;
}

impl Storage for DownloadStore {
    fn write_segment(&mut self, segment: u64, data: &[u8]) -> Result<(), StoreError> {
        DownloadStore::write_segment(self, segment, data)
    }

    fn commit(&mut self, segments: &[u64]) -> Result<(), StoreError> {
        DownloadStore::commit(self, segments)
    }

    fn check(&self, pin: Pin) -> Result<Option<Mismatch>, StoreError> {
        end_check::check(self, pin)
    }

    fn finalize(self, finish: Finish) -> Result<PathBuf, WriteError> {
        Ok(DownloadStore::finalize(
            self,
            finish.overwrite,
            finish.give_to,
        )?)
    }

    fn discard(self) -> Result<(), StoreError> {
        DownloadStore::discard(self)
    }
}

pub(crate) struct WriterConfig {
    pub commit_batch: usize,
    pub commit_interval: Duration,
    /// Written segments' buffers go back here for the connections to reuse.
    pub buffers: BufferPool,
    /// The end check's hash, computed as the segments are written (see `end_check`).
    pub running_check: Option<RunningCheck>,
}

/// Runs `f` on the blocking pool with the store, giving the store back.
async fn on_pool<S: Storage, T: Send + 'static>(
    store: S,
    f: impl FnOnce(&mut S) -> Result<T, StoreError> + Send + 'static,
) -> (Option<S>, Result<T, WriteError>) {
    let joined = tokio::task::spawn_blocking(move || {
        let mut store = store;
        let result = f(&mut store);
        (store, result)
    })
    .await;
    match joined {
        Ok((store, result)) => (Some(store), result.map_err(WriteError::from)),
        Err(e) => (None, Err(WriteError::Task(e.into()))),
    }
}

/// Runs `f`, which consumes the store, on the blocking pool.
async fn consume<S: Storage, T: Send + 'static>(
    store: S,
    f: impl FnOnce(S) -> Result<T, WriteError> + Send + 'static,
) -> Result<T, WriteError> {
    tokio::task::spawn_blocking(move || f(store))
        .await
        .map_err(|e| WriteError::Task(e.into()))?
}

/// The writer task's state: the store (absent while an operation runs on the blocking
/// pool) and the written-but-not-yet-durable segments.
struct Writer<S> {
    store: Option<S>,
    pending: Vec<u64>,
    deadline: Option<Instant>,
    reports: mpsc::UnboundedSender<WriteReport>,
    /// Gone after the first finish: a repair rewrites segments, and then the full check
    /// decides.
    running: Option<RunningCheck>,
}

impl<S: Storage> Writer<S> {
    /// Runs `f` on the store on the blocking pool.
    async fn with_store<T: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut S) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, WriteError> {
        let store = self.store.take().ok_or(WriteError::Gone)?;
        let (store, result) = on_pool(store, f).await;
        self.store = store;
        result
    }

    /// Makes the pending batch durable and reports it.
    async fn commit(&mut self) -> Result<(), WriteError> {
        self.deadline = None;
        if self.pending.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.pending);
        let n = batch.len() as u64;
        self.with_store(move |s| s.commit(&batch)).await?;
        let _ = self.reports.send(WriteReport::Durable(n));
        Ok(())
    }

    /// Handles one message; `Ok(false)` means the writer is done.
    async fn handle(&mut self, msg: WriteMsg, config: &WriterConfig) -> Result<bool, WriteError> {
        match msg {
            WriteMsg::Segment { segment, data } => {
                let mut running = self.running.take();
                let (data, running) = self
                    .with_store(move |s| {
                        s.write_segment(segment, &data)?;
                        if let Some(running) = running.as_mut() {
                            running.on_written(segment, &data);
                            running.catch_up_after_write(s)?;
                        }
                        Ok((data, running))
                    })
                    .await?;
                self.running = running;
                config.buffers.give(data);
                self.pending.push(segment);
                self.deadline
                    .get_or_insert_with(|| Instant::now() + config.commit_interval);
                if self.pending.len() >= config.commit_batch {
                    self.commit().await?;
                }
                Ok(true)
            }
            WriteMsg::Redo(segments) => {
                if let Some(running) = self.running.as_mut() {
                    running.redo(&segments);
                }
                Ok(true)
            }
            WriteMsg::Finish(finish) => {
                self.commit().await?;
                if let Some(pin) = finish.check {
                    let running = self.running.take().filter(|r| r.pin() == pin);
                    if let Some((behind, spoiled)) = running.as_ref().map(RunningCheck::lag) {
                        tracing::debug!(behind, spoiled, "end check: segments left to hash");
                    }
                    let store = self.store.take().ok_or(WriteError::Gone)?;
                    let (store, checked) = on_pool(store, move |s| {
                        // Only a match is taken from the running hash; the full pass
                        // decides anything else, and says which segments differ.
                        let matched = match running {
                            Some(running) => running.matches(s)?,
                            None => false,
                        };
                        if matched {
                            Ok(None)
                        } else {
                            s.check(pin)
                        }
                    })
                    .await;
                    self.store = store;
                    if let Some(mismatch) = checked? {
                        // The store stays: the job may repair the dump and finish again.
                        let _ = self
                            .reports
                            .send(WriteReport::CheckFailed(Box::new(mismatch)));
                        return Ok(true);
                    }
                }
                let store = self.store.take().ok_or(WriteError::Gone)?;
                let path = consume(store, move |s| s.finalize(finish)).await?;
                let _ = self.reports.send(WriteReport::Finished(path));
                Ok(false)
            }
            WriteMsg::Close { discard } => {
                self.commit().await?;
                if discard {
                    if let Some(store) = self.store.take() {
                        consume(store, |s| s.discard().map_err(WriteError::from)).await?;
                    }
                }
                let _ = self.reports.send(WriteReport::Closed);
                Ok(false)
            }
        }
    }
}

pub(crate) fn spawn_writer<S: Storage>(
    store: S,
    mut config: WriterConfig,
) -> (mpsc::Sender<WriteMsg>, mpsc::UnboundedReceiver<WriteReport>) {
    let (tx, mut rx) = mpsc::channel::<WriteMsg>(WRITER_QUEUE);
    let (report_tx, report_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut writer = Writer {
            store: Some(store),
            pending: Vec::new(),
            deadline: None,
            reports: report_tx,
            running: config.running_check.take(),
        };
        loop {
            let deadline = writer.deadline;
            let result = tokio::select! {
                msg = rx.recv() => match msg {
                    Some(msg) => writer.handle(msg, &config).await,
                    // The job is gone: leave the store at a durable point.
                    None => writer.commit().await.map(|()| false),
                },
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    writer.commit().await.map(|()| true)
                }
            };
            match result {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => {
                    let _ = writer.reports.send(WriteReport::Failed(e));
                    return;
                }
            }
        }
    });
    (tx, report_rx)
}

#[cfg(test)]
mod tests {
    //! The writer over crash-simulating files: what a power cut leaves is exactly what the
    //! writer reported durable (and never a segment it did not write).

    use std::collections::BTreeSet;
    use std::path::Path;

    use super::*;
    use arsnet_proto::manifest::digest_all;
    use arsnet_proto::Manifest;
    use arsnet_store::crash::{CrashFile, PowerCut};
    use arsnet_store::{Store, StorePaths};

    const SEG: u32 = 4096;

    impl SegmentReader for Store<CrashFile, CrashFile> {
        fn read_segment(&self, segment: u64, buf: &mut Vec<u8>) -> Result<bool, StoreError> {
            Store::read_segment(self, segment, buf)
        }
    }

    impl Storage for Store<CrashFile, CrashFile> {
        fn write_segment(&mut self, segment: u64, data: &[u8]) -> Result<(), StoreError> {
            Store::write_segment(self, segment, data)
        }
        fn commit(&mut self, segments: &[u64]) -> Result<(), StoreError> {
            Store::commit(self, segments)
        }
        fn check(&self, _: Pin) -> Result<Option<Mismatch>, StoreError> {
            Ok(None)
        }
        fn finalize(mut self, _: Finish) -> Result<PathBuf, WriteError> {
            self.finish()?;
            Ok(PathBuf::from("/crash/f.bin"))
        }
        fn discard(self) -> Result<(), StoreError> {
            Ok(())
        }
    }

    fn paths() -> StorePaths {
        StorePaths::new(Path::new("/crash"), "f.bin")
    }

    struct Disk {
        data: Vec<u8>,
        manifest: Manifest,
        dump: CrashFile,
        journal: CrashFile,
        power: PowerCut,
    }

    fn disk() -> Disk {
        let data: Vec<u8> = (0..6 * SEG as usize + 100)
            .map(|i| (i * 13) as u8)
            .collect();
        let manifest = Manifest::new(
            "f.bin".into(),
            data.len() as u64,
            SEG,
            digest_all(&data, SEG),
        )
        .unwrap();
        let power = PowerCut::never();
        Disk {
            data,
            manifest,
            dump: CrashFile::new().with_power(power.clone()),
            journal: CrashFile::new().with_power(power.clone()),
            power,
        }
    }

    impl Disk {
        fn writer(
            &self,
            batch: usize,
        ) -> (mpsc::Sender<WriteMsg>, mpsc::UnboundedReceiver<WriteReport>) {
            let store = Store::create(
                self.dump.handle(),
                self.journal.handle(),
                &self.manifest,
                &[7; 16],
                &paths(),
            )
            .unwrap();
            let config = WriterConfig {
                commit_batch: batch,
                commit_interval: Duration::from_secs(3600),
                buffers: BufferPool::new(4),
                running_check: None,
            };
            spawn_writer(store, config)
        }

        fn segment(&self, segment: u64) -> WriteMsg {
            let (offset, len) = self.manifest.segment_range(segment);
            let data = self.data[offset as usize..(offset + u64::from(len)) as usize].to_vec();
            WriteMsg::Segment { segment, data }
        }

        /// What a restart adopts after a power cut now.
        fn adopt_after_crash(&self, seed: u64) -> BTreeSet<u64> {
            let (dump, journal) = (self.dump.crash(seed), self.journal.crash(seed));
            let (_, adopted) = Store::open(dump, journal, &paths()).unwrap();
            adopted.segments.into_iter().collect()
        }
    }

    #[tokio::test]
    async fn a_crash_keeps_exactly_the_batches_reported_durable() {
        for seed in 0..16 {
            let disk = disk();
            let (tx, mut reports) = disk.writer(2);
            for s in 0..4 {
                tx.send(disk.segment(s)).await.unwrap();
            }
            assert!(matches!(
                reports.recv().await,
                Some(WriteReport::Durable(2))
            ));
            assert!(matches!(
                reports.recv().await,
                Some(WriteReport::Durable(2))
            ));
            // Written, not yet committed (the batch is not full, the interval is long).
            tx.send(disk.segment(4)).await.unwrap();
            for _ in 0..1000 {
                if disk.dump.pending_ops() > 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            assert!(disk.dump.pending_ops() > 0, "segment 4 reached the dump");
            assert_eq!(
                disk.adopt_after_crash(seed),
                BTreeSet::from([0, 1, 2, 3]),
                "seed {seed}"
            );
        }
    }

    #[tokio::test]
    async fn a_power_cut_mid_commit_never_loses_a_reported_segment() {
        let mut cut_seen = false;
        for budget in 0..24 {
            let disk = disk();
            let (tx, mut reports) = disk.writer(2);
            disk.power.set_remaining(budget);
            let mut durable = 0;
            let mut failed = None;
            for s in 0..6 {
                if tx.send(disk.segment(s)).await.is_err() {
                    break;
                }
            }
            drop(tx);
            while let Some(report) = reports.recv().await {
                match report {
                    WriteReport::Durable(n) => durable += n,
                    WriteReport::Failed(e) => failed = Some(e),
                    other => panic!("{other:?}"),
                }
            }
            cut_seen |= failed.is_some();
            if let Some(e) = &failed {
                assert!(
                    matches!(e, WriteError::Store(m) if m.to_string().contains("power cut")),
                    "{e:?}"
                );
            }
            for seed in 0..4 {
                let adopted = disk.adopt_after_crash(seed);
                // Batches are committed in order, two at a time.
                let reported: BTreeSet<u64> = (0..durable).collect();
                assert!(
                    adopted.is_superset(&reported),
                    "budget {budget}: reported {reported:?}, adopted {adopted:?}"
                );
                assert!(adopted.iter().all(|&s| s < 6));
            }
        }
        assert!(cut_seen, "some budget cut the power mid-run");
    }
}
