//! The daemon's durable state: the job table and the server groups, in one JSON file in the
//! state dir, rewritten atomically (temp file, fsync, rename, directory fsync) on every
//! change. A file that cannot be read back is moved aside, never deleted, and reported.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use arsnet_proto::control::{FetchSpec, GroupId, JobId, JobState, ServeSpec};
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
}

/// One server group as persisted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupRecord {
    pub id: GroupId,
    pub spec: ServeSpec,
    pub stopped_ports: Vec<u16>,
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

/// Writes `bytes` to `path` so that a crash leaves either the old or the new content.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()
}

pub fn save(dir: &Path, state: &StateFile) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?;
    write_atomic(&dir.join(STATE_FILE), &bytes)
}

/// What loading the state file found.
pub enum Loaded {
    Fresh,
    State(StateFile),
    /// Unreadable: it was moved to `kept_at`; `reason` says what was wrong.
    Corrupt {
        reason: String,
        kept_at: PathBuf,
    },
}

pub fn load(dir: &Path) -> std::io::Result<Loaded> {
    let path = dir.join(STATE_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Loaded::Fresh),
        Err(e) => return Err(e),
    };
    let parsed: Result<StateFile, String> = serde_json::from_slice(&bytes)
        .map_err(|e| e.to_string())
        .and_then(|s: StateFile| {
            if s.version == STATE_VERSION {
                Ok(s)
            } else {
                Err(format!("unsupported state version {}", s.version))
            }
        });
    match parsed {
        Ok(state) => Ok(Loaded::State(state)),
        Err(reason) => {
            let stamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let kept_at = dir.join(format!("{STATE_FILE}.corrupt-{stamp}"));
            std::fs::rename(&path, &kept_at)?;
            Ok(Loaded::Corrupt { reason, kept_at })
        }
    }
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
    }
}
