//! The daemon's durable state: the job table and the server groups, in one JSON file in the
//! state dir, rewritten atomically (temp file, fsync, rename, directory fsync) on every
//! change. A file that cannot be parsed is moved aside, never deleted, and reported; one
//! that cannot be read at all (permissions, a directory in its place) stops the daemon, so
//! that its first save does not overwrite state it never saw.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use arsnet_proto::control::{FetchSpec, GroupId, JobId, JobState, RunFigures, ServeSpec};
use arsnet_proto::{Digest, JobTag};
use serde::{Deserialize, Serialize};

pub const STATE_FILE: &str = "state.json";
const STATE_VERSION: u32 = 1;

/// One download job as persisted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: JobId,
    pub spec: FetchSpec,
    pub state: JobState,
    /// File name, once a server told it: picks the partial files to adopt on restore.
    pub name: Option<String>,
    /// The next start adopts the partial files (the job ran before).
    #[serde(default)]
    pub resume: bool,
    /// The job's tag, carried by its partial files.
    #[serde(default)]
    pub tag: Option<JobTag>,
    /// The content the job accepted (BLAKE3), once known.
    #[serde(default)]
    pub content: Option<Digest>,
    /// What a caller other than the daemon's user proved about the download directory.
    #[serde(default)]
    pub grant: Option<crate::caller::DirGrant>,
    /// The figures of the job's last run, so that `status` and `list` show them after a
    /// restart too.
    #[serde(default)]
    pub figures: Option<Figures>,
}

/// What a job's last run reached (see [`JobRecord::figures`]): [`RunFigures`] as the state
/// file keeps them, readable in the records of earlier releases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Figures {
    pub size: Option<u64>,
    pub segments_total: Option<u64>,
    pub segments_done: u64,
    pub bytes_done: u64,
    pub adopted_segments: u64,
    pub elapsed_ms: u64,
    /// What the run fetched itself (not adopted): its average rate is of these. Absent in
    /// records from before it was kept, which count `bytes_done` instead.
    #[serde(default)]
    pub fetched_bytes: Option<u64>,
}

impl From<RunFigures> for Figures {
    fn from(f: RunFigures) -> Self {
        Figures {
            size: f.size,
            segments_total: f.segments_total,
            segments_done: f.segments_done,
            bytes_done: f.bytes_done,
            adopted_segments: f.adopted_segments,
            elapsed_ms: f.elapsed_ms,
            fetched_bytes: Some(f.fetched_bytes),
        }
    }
}

impl From<Figures> for RunFigures {
    fn from(f: Figures) -> Self {
        RunFigures {
            size: f.size,
            segments_total: f.segments_total,
            segments_done: f.segments_done,
            bytes_done: f.bytes_done,
            adopted_segments: f.adopted_segments,
            // A record from before `fetched_bytes` was kept: count what it had.
            fetched_bytes: f.fetched_bytes.unwrap_or(f.bytes_done),
            elapsed_ms: f.elapsed_ms,
        }
    }
}

/// One server group as persisted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupRecord {
    pub id: GroupId,
    pub spec: ServeSpec,
    pub stopped_ports: Vec<u16>,
    /// (device, inode) of the file a caller other than the daemon's user opened to serve.
    #[serde(default)]
    pub file_identity: Option<arsnet_store::dir::FileId>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateFile {
    pub version: u32,
    pub next_job_id: JobId,
    pub next_group_id: GroupId,
    pub jobs: Vec<JobRecord>,
    pub groups: Vec<GroupRecord>,
}

impl Default for StateFile {
    fn default() -> Self {
        StateFile {
            version: STATE_VERSION,
            next_job_id: 1,
            next_group_id: 1,
            jobs: vec![],
            groups: vec![],
        }
    }
}

/// A state change that could not be written: the state file on disk is the previous one.
#[derive(Debug, thiserror::Error)]
#[error("could not save daemon state to {}: {step}: {error}", path.display())]
pub struct SaveError {
    pub path: PathBuf,
    /// What failed, naming the file it failed on (the temp file, the directory…).
    pub step: String,
    pub error: std::io::Error,
}

/// Writes `bytes` to `path` so that a crash leaves either the old or the new content.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), SaveError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("tmp");
    let fail = |step: String| {
        let path = path.to_path_buf();
        move |error| SaveError { path, step, error }
    };
    // 0600 whatever the umask and whatever a stale temp file had: the state holds mirror
    // URLs with their credentials.
    let written = {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|f| {
                f.set_permissions(std::fs::Permissions::from_mode(0o600))
                    .map(|()| f)
            })
    }
    .map_err(fail(format!("creating {}", tmp.display())))
    .and_then(|mut f: File| {
        f.write_all(bytes)
            .and_then(|()| f.sync_all())
            .map_err(fail(format!("writing {}", tmp.display())))
    })
    .and_then(|()| {
        std::fs::rename(&tmp, path).map_err(fail(format!(
            "renaming {} to {}",
            tmp.display(),
            path.display()
        )))
    });
    if let Err(e) = written {
        // A half-written temp file is of no use to anyone; the real file is untouched.
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(fail(format!("syncing directory {}", dir.display())))
}

pub fn save(dir: &Path, state: &StateFile) -> Result<(), SaveError> {
    let path = dir.join(STATE_FILE);
    let bytes = serde_json::to_vec_pretty(state).map_err(|e| SaveError {
        path: path.clone(),
        step: "encoding".into(),
        error: std::io::Error::other(e),
    })?;
    write_atomic(&path, &bytes)
}

/// What loading the state file found.
pub enum Loaded {
    Fresh,
    State(StateFile),
    /// Unparseable: it was moved to `kept_at`; `reason` says what was wrong.
    Corrupt {
        reason: String,
        kept_at: PathBuf,
    },
}

/// State that exists but could not be read, or not be kept aside: the daemon must not
/// start, as its first save would overwrite it.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "cannot read saved state {}: {error}; refusing to start so that it is not \
         overwritten (fix its permissions, or move it away to start empty)",
        path.display()
    )]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(
        "saved state {} is unparseable ({reason}) and could not be kept aside as {}: {error}; \
         refusing to start so that it is not overwritten",
        path.display(),
        kept_at.display()
    )]
    KeepAside {
        path: PathBuf,
        kept_at: PathBuf,
        reason: String,
        error: std::io::Error,
    },
}

/// Reads the state file. Only a missing file means "fresh"; any other I/O error is an
/// error (never "start empty"), and an unparseable file is moved aside, not deleted.
/// Decodes a state file's bytes (the one decoder of the state file, fuzzed in `fuzz/`):
/// JSON of the right shape and version, or why not.
pub fn parse_state(bytes: &[u8]) -> Result<StateFile, String> {
    let state: StateFile = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if state.version == STATE_VERSION {
        Ok(state)
    } else {
        Err(format!("unsupported state version {}", state.version))
    }
}

pub fn load(dir: &Path) -> Result<Loaded, LoadError> {
    let path = dir.join(STATE_FILE);
    let read_error = |error| LoadError::Read {
        path: path.clone(),
        error,
    };
    match std::fs::metadata(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Loaded::Fresh),
        Err(e) => return Err(read_error(e)),
        // A FIFO or device would block or never end: not ours to read.
        Ok(meta) if !meta.is_file() && !meta.is_dir() => {
            return Err(read_error(std::io::Error::other("not a regular file")))
        }
        Ok(_) => {}
    }
    let bytes = std::fs::read(&path).map_err(read_error)?;
    match parse_state(&bytes) {
        Ok(state) => Ok(Loaded::State(state)),
        Err(reason) => {
            let kept_at = free_corrupt_name(dir);
            // The state dir is locked by this daemon, so the name stays free until renamed.
            match std::fs::rename(&path, &kept_at) {
                Ok(()) => Ok(Loaded::Corrupt { reason, kept_at }),
                Err(error) => Err(LoadError::KeepAside {
                    path,
                    kept_at,
                    reason,
                    error,
                }),
            }
        }
    }
}

/// `state.json.corrupt-SECS`, with `-N` added if an earlier file (same second) has it:
/// a rename must never replace an older kept-aside copy.
fn free_corrupt_name(dir: &Path) -> PathBuf {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let base = format!("{STATE_FILE}.corrupt-{stamp}");
    let mut candidate = dir.join(&base);
    let mut n = 1u32;
    while std::fs::symlink_metadata(&candidate).is_ok() {
        candidate = dir.join(format!("{base}-{n}"));
        n += 1;
    }
    candidate
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corrupt_file_is_kept_aside() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(load(dir.path()).unwrap(), Loaded::Fresh));
        let state = StateFile {
            next_job_id: 7,
            ..StateFile::default()
        };
        save(dir.path(), &state).unwrap();
        match load(dir.path()).unwrap() {
            Loaded::State(s) => assert_eq!(s, state),
            _ => panic!("expected state"),
        }
        std::fs::write(dir.path().join(STATE_FILE), b"{ not json").unwrap();
        match load(dir.path()).unwrap() {
            Loaded::Corrupt { kept_at, reason } => {
                assert!(kept_at.exists());
                assert!(!reason.is_empty());
                assert!(!dir.path().join(STATE_FILE).exists());
            }
            _ => panic!("expected corrupt"),
        }
        // A second corrupt file in the same second does not replace the first one kept.
        std::fs::write(dir.path().join(STATE_FILE), b"also broken").unwrap();
        let Ok(Loaded::Corrupt {
            kept_at: second, ..
        }) = load(dir.path())
        else {
            panic!("expected corrupt");
        };
        let kept: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(kept.len(), 2, "both kept");
        assert_eq!(std::fs::read(&second).unwrap(), b"also broken");
    }

    #[test]
    fn state_that_cannot_be_read_is_an_error_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(STATE_FILE)).unwrap();
        let err = load(dir.path()).err().expect("a directory is not state");
        assert!(matches!(err, LoadError::Read { .. }));
        assert!(err.to_string().contains(STATE_FILE), "{err}");
        assert!(dir.path().join(STATE_FILE).is_dir());
    }

    #[test]
    fn a_failed_save_names_the_file_and_keeps_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        save(dir.path(), &StateFile::default()).unwrap();
        let before = std::fs::read(dir.path().join(STATE_FILE)).unwrap();
        // A directory where the temp file goes fails for root too.
        std::fs::create_dir(dir.path().join("state.tmp")).unwrap();
        let err = save(
            dir.path(),
            &StateFile {
                next_job_id: 9,
                ..StateFile::default()
            },
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(STATE_FILE) && text.contains("state.tmp"),
            "{text}"
        );
        assert_eq!(std::fs::read(dir.path().join(STATE_FILE)).unwrap(), before);
    }
}
