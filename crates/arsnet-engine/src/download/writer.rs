//! The storage side of a download job: writes verified segments at their final offsets and
//! makes them durable in batches (fdatasync dump, then journal append + fsync, inside
//! `DownloadStore::commit`). Runs as a task that moves the store onto the blocking pool for
//! every disk operation, so slow disks never stall the network side except through the
//! bounded channel that feeds it (which is the backpressure we want).

use std::path::PathBuf;
use std::time::Duration;

use arsnet_store::{DownloadStore, StoreError};

use super::buffers::BufferPool;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// What the job asks of the writer.
pub(crate) enum WriteMsg {
    Segment {
        segment: u64,
        data: Vec<u8>,
    },
    /// Every segment is in: commit, check the SHA-256 pin if any, then publish the dump.
    Finish {
        overwrite: bool,
        /// `(uid, gid)` the published file is given to, if not the daemon's user.
        give_to: Option<(u32, u32)>,
        sha256: Option<[u8; 32]>,
    },
    /// Stop at a durable point; `discard` removes the partial files (cancel without --keep).
    Close {
        discard: bool,
    },
}

/// What the writer tells the job.
pub(crate) enum WriteReport {
    Durable(u64),
    Finished(PathBuf),
    Closed,
    Failed(String),
}

pub(crate) struct WriterConfig {
    pub commit_batch: usize,
    pub commit_interval: Duration,
    /// Written segments' buffers go back here for the connections to reuse.
    pub buffers: BufferPool,
}

async fn blocking<T: Send + 'static>(
    store: DownloadStore,
    f: impl FnOnce(&mut DownloadStore) -> Result<T, StoreError> + Send + 'static,
) -> (Option<DownloadStore>, Result<T, String>) {
    let joined = tokio::task::spawn_blocking(move || {
        let mut store = store;
        let result = f(&mut store);
        (store, result)
    })
    .await;
    match joined {
        Ok((store, result)) => (Some(store), result.map_err(|e| e.to_string())),
        Err(e) => (None, Err(format!("storage task failed: {e}"))),
    }
}

/// The writer task's state: the store (absent while an operation runs on the blocking
/// pool) and the written-but-not-yet-durable segments.
struct Writer {
    store: Option<DownloadStore>,
    pending: Vec<u64>,
    deadline: Option<Instant>,
    reports: mpsc::UnboundedSender<WriteReport>,
}

impl Writer {
    /// Runs `f` on the store on the blocking pool.
    async fn with_store<T: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut DownloadStore) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, String> {
        let store = self
            .store
            .take()
            .ok_or("storage is gone after an earlier failure")?;
        let (store, result) = blocking(store, f).await;
        self.store = store;
        result
    }

    /// Makes the pending batch durable and reports it.
    async fn commit(&mut self) -> Result<(), String> {
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

    async fn handle(&mut self, msg: WriteMsg, config: &WriterConfig) -> Result<bool, String> {
        match msg {
            WriteMsg::Segment { segment, data } => {
                let data = self
                    .with_store(move |s| s.write_segment(segment, &data).map(|()| data))
                    .await?;
                config.buffers.give(data);
                self.pending.push(segment);
                self.deadline
                    .get_or_insert_with(|| Instant::now() + config.commit_interval);
                if self.pending.len() >= config.commit_batch {
                    self.commit().await?;
                }
                Ok(true)
            }
            WriteMsg::Finish {
                overwrite,
                give_to,
                sha256,
            } => {
                self.commit().await?;
                let store = self.store.take().ok_or("storage is gone")?;
                let path = tokio::task::spawn_blocking(move || {
                    if let Some(pin) = sha256 {
                        check_sha256(&store, &pin)?;
                    }
                    store
                        .finalize(overwrite, give_to)
                        .map_err(|e| e.to_string())
                })
                .await
                .map_err(|e| format!("storage task failed: {e}"))??;
                let _ = self.reports.send(WriteReport::Finished(path));
                Ok(false)
            }
            WriteMsg::Close { discard } => {
                self.commit().await?;
                if discard {
                    if let Some(store) = self.store.take() {
                        tokio::task::spawn_blocking(move || store.discard())
                            .await
                            .map_err(|e| format!("storage task failed: {e}"))?
                            .map_err(|e| e.to_string())?;
                    }
                }
                let _ = self.reports.send(WriteReport::Closed);
                Ok(false)
            }
        }
    }
}

pub(crate) fn spawn_writer(
    store: DownloadStore,
    config: WriterConfig,
) -> (mpsc::Sender<WriteMsg>, mpsc::UnboundedReceiver<WriteReport>) {
    let (tx, mut rx) = mpsc::channel::<WriteMsg>(8);
    let (report_tx, report_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut writer = Writer {
            store: Some(store),
            pending: Vec::new(),
            deadline: None,
            reports: report_tx,
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

/// Hashes the finished dump through its descriptor and compares it with the user's SHA-256
/// pin, before anything is published: a mismatch fails the job and leaves the partial files.
fn check_sha256(store: &DownloadStore, pin: &[u8; 32]) -> Result<(), String> {
    use sha2::Digest as _;
    let mut hasher = sha2::Sha256::new();
    store
        .scan_dump(|bytes| hasher.update(bytes))
        .map_err(|e| e.to_string())?;
    let got: [u8; 32] = hasher.finalize().into();
    if got == *pin {
        Ok(())
    } else {
        Err(format!(
            "the downloaded file's SHA-256 is {}, not the pinned {}; nothing was published",
            arsnet_proto::manifest::to_hex(&got),
            arsnet_proto::manifest::to_hex(pin)
        ))
    }
}
