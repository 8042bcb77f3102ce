//! Finding, adopting and creating a job's files in DIR, on the blocking pool. These answer
//! what they found; the job decides what to do with it (start its writer, tell the
//! scheduler which segments are done).

use std::path::PathBuf;
use std::sync::Arc;

use arsnet_proto::{JobTag, Manifest};
use arsnet_store::dir::Dir;
use arsnet_store::{Adopted, DownloadStore, Found, StoreError};
use tracing::{info, warn};

use super::error::DownloadError;
use super::spec::DownloadSpec;

/// What a resume found in DIR.
pub(crate) enum Resumed {
    /// The download had in fact finished (a crash hit between publishing and recording
    /// "completed").
    Finished(PathBuf),
    /// Nothing to continue (or nothing trustworthy): start over.
    Fresh,
    /// A partial download of this job, adopted.
    Adopted(Box<DownloadStore>, Adopted),
}

/// What opening the store for a decided content gave.
pub(crate) enum Opened {
    Created(Box<DownloadStore>),
    /// `fetch -r` found an orphan's partial files of this very content and continues them.
    Adopted(Box<DownloadStore>, Adopted),
    /// `fetch -r` found `DIR/NAME` already there and verified as this very content (last
    /// night's run of a nightly fetch): the download is done, nothing is fetched.
    AlreadySaved(PathBuf),
}

/// Runs `f` on the blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, DownloadError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| DownloadError::Task(e.into()))
}

fn resume_error(e: StoreError) -> DownloadError {
    DownloadError::Resume(Arc::new(e))
}

/// Another handle on the job's directory, for a store call on the blocking pool.
fn held(dir: &Dir) -> Result<Dir, DownloadError> {
    dir.try_clone().map_err(|e| DownloadError::Dir(Arc::new(e)))
}

/// Opens the download directory once for the whole job: created first when the caller is the
/// daemon's own user, and otherwise required to be the very directory the caller showed it
/// may write to.
pub(crate) async fn open_dir(spec: &DownloadSpec) -> Result<Dir, DownloadError> {
    let (path, identity, caller_uid) = (spec.dir.clone(), spec.dir_identity, spec.caller_uid);
    blocking(move || {
        if identity.is_none() {
            std::fs::create_dir_all(&path).map_err(|e| DownloadError::CreateDir {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        }
        let mut dir =
            Dir::open_expecting(&path, identity).map_err(|e| DownloadError::Dir(Arc::new(e)))?;
        if let Some(uid) = caller_uid {
            dir.set_replace_owner(uid);
        }
        Ok(dir)
    })
    .await?
}

/// Looks for this job's partial download in DIR and adopts it. A journal that cannot be
/// trusted is kept aside and the download starts over.
pub(crate) async fn resume(spec: &DownloadSpec, dir: &Dir) -> Result<Resumed, DownloadError> {
    if let (Some(name), Some(expected)) = (spec.name.clone(), spec.published_check()) {
        let (d, tag, give_to) = (held(dir)?, spec.tag, spec.give_to);
        let finished =
            blocking(move || DownloadStore::verify_published(&d, &name, &expected, &tag, give_to))
                .await?
                .map_err(resume_error)?;
        if let Some(path) = finished {
            info!(job = spec.id, path = %path.display(), "found the download already finished and verified");
            return Ok(Resumed::Finished(path));
        }
    }
    let name = match spec.name.clone() {
        Some(name) => name,
        None => {
            let (d, s) = (held(dir)?, spec.clone());
            match blocking(move || DownloadStore::find_partial(&d, &|t| s.may_adopt(t)))
                .await?
                .map_err(resume_error)?
            {
                Found::Partial(name) => name,
                Found::Nothing => {
                    info!(job = spec.id, dir = %spec.dir.display(), "no partial download of this job to resume; starting fresh");
                    return Ok(Resumed::Fresh);
                }
            }
        }
    };
    let (d, n, s) = (held(dir)?, name.clone(), spec.clone());
    let (content, overwrite) = (spec.required_content(), spec.overwrite);
    let adopted = blocking(move || {
        DownloadStore::adopt(d, &n, &|t| s.may_adopt(t), content.as_ref(), overwrite)
    })
    .await?;
    match adopted {
        Ok((store, adopted)) => {
            log_adoption(spec, store.manifest(), &adopted);
            Ok(Resumed::Adopted(Box::new(store), adopted))
        }
        Err(StoreError::NoPartial(_) | StoreError::JournalCorrupt { .. }) => {
            set_aside(spec, dir, name).await?;
            Ok(Resumed::Fresh)
        }
        Err(e) => Err(resume_error(e)),
    }
}

/// A crash while the partial files were being created (no journal yet, or a torn header):
/// nothing verified exists, so the journal is kept as evidence and the download starts over.
async fn set_aside(spec: &DownloadSpec, dir: &Dir, name: String) -> Result<(), DownloadError> {
    let d = held(dir)?;
    let kept = blocking(move || DownloadStore::set_aside(&d, &name))
        .await?
        .map_err(resume_error)?;
    match kept {
        Some(path) => {
            warn!(job = spec.id, kept = %path.display(), "the journal could not be trusted; kept it aside and starting over")
        }
        None => info!(job = spec.id, "no journal to resume; starting over"),
    }
    Ok(())
}

fn log_adoption(spec: &DownloadSpec, manifest: &Manifest, adopted: &Adopted) {
    info!(
        job = spec.id,
        file = %manifest.name,
        adopted = adopted.segments.len(),
        rejected = adopted.rejected.len(),
        ignored_tail_bytes = adopted.ignored_tail_bytes,
        total = manifest.segment_count(),
        "adopted segments from the journal"
    );
    if !adopted.rejected.is_empty() {
        warn!(job = spec.id, segments = ?adopted.rejected, "journaled segments failed re-verification and will be fetched again");
    }
    if adopted.tag != spec.tag {
        info!(
            job = spec.id,
            "continuing partial files no other job owns; this job owns them now"
        );
    }
}

/// Saves the accepted name and content through the job's hook, before anything is written.
fn record_content(spec: &DownloadSpec, manifest: &Manifest) -> Result<(), DownloadError> {
    match &spec.on_content {
        Some(hook) => (hook.0)(&manifest.name, &manifest.root)
            .map_err(|e| DownloadError::ContentHook(Arc::new(e))),
        None => Ok(()),
    }
}

/// The content is decided: records it, refuses to clobber, then creates the store (or, for
/// `fetch -r`, continues an orphan's partial files of this very content).
pub(crate) async fn open_store(
    spec: &DownloadSpec,
    dir: &Dir,
    manifest: &Arc<Manifest>,
) -> Result<Opened, DownloadError> {
    record_content(spec, manifest)?;
    let (d, m, overwrite, tag) = (held(dir)?, manifest.clone(), spec.overwrite, spec.tag);
    let created = blocking(move || DownloadStore::create(d, &m, &tag, overwrite)).await?;
    match created {
        Ok(store) => {
            info!(job = spec.id, file = %manifest.name, size = manifest.size, segments = manifest.segment_count(), "download started");
            Ok(Opened::Created(Box::new(store)))
        }
        Err(StoreError::PartialExists(path)) if spec.resume => {
            adopt_after_election(spec, dir, manifest, path).await
        }
        Err(StoreError::TargetExists(path)) if spec.resume => {
            match already_saved(spec, dir, manifest).await? {
                Some(saved) => Ok(Opened::AlreadySaved(saved)),
                None => Err(DownloadError::TargetExists(path)),
            }
        }
        Err(StoreError::TargetExists(path)) => Err(DownloadError::TargetExists(path)),
        Err(StoreError::PartialExists(path)) => Err(DownloadError::PartialExists(path)),
        Err(e) => Err(DownloadError::Create(Arc::new(e))),
    }
}

/// `DIR/NAME`, when it is a file of ours whose hash is the decided content (through the
/// same check as a restored job's published file); `None` when it is anything else, or
/// when nothing can tell (mirrors alone without a pin).
async fn already_saved(
    spec: &DownloadSpec,
    dir: &Dir,
    manifest: &Arc<Manifest>,
) -> Result<Option<PathBuf>, DownloadError> {
    let expected = if manifest.is_unproven() {
        spec.pin
    } else {
        Some(arsnet_proto::control::Pin::Blake3(manifest.root))
    };
    let Some(expected) = expected else {
        return Ok(None);
    };
    let (d, name, tag, give_to) = (held(dir)?, manifest.name.clone(), spec.tag, spec.give_to);
    let saved =
        blocking(move || DownloadStore::verify_published(&d, &name, &expected, &tag, give_to))
            .await?
            .map_err(resume_error)?;
    if let Some(path) = &saved {
        info!(job = spec.id, path = %path.display(), "the file is already saved and verified as this content");
    }
    Ok(saved)
}

/// `fetch -r` found partial files it could not take before the content was known (an
/// orphan's): now that a pin or the servers' majority decided it, continue them if they
/// are that very download, else say how to proceed.
async fn adopt_after_election(
    spec: &DownloadSpec,
    dir: &Dir,
    manifest: &Arc<Manifest>,
    found: PathBuf,
) -> Result<Opened, DownloadError> {
    let (d, s, m, overwrite) = (held(dir)?, spec.clone(), manifest.clone(), spec.overwrite);
    // An unproven layout (mirrors only) names no content: no orphan can be shown to be it.
    let proven = !manifest.is_unproven();
    let orphan_or_own = move |t: &JobTag| *t == s.tag || (proven && !s.foreign_tags.contains(t));
    let adopted = blocking(move || {
        DownloadStore::adopt(d, &m.name, &orphan_or_own, Some(&m.root), overwrite)
    })
    .await?;
    match adopted {
        Ok((store, adopted)) if store.manifest().identity() == manifest.identity() => {
            info!(
                job = spec.id,
                adopted = adopted.segments.len(),
                "adopted segments from the journal of a partial download of the agreed content"
            );
            Ok(Opened::Adopted(Box::new(store), adopted))
        }
        Ok(_) | Err(StoreError::Foreign { .. }) => Err(DownloadError::PartialOfOtherContent(found)),
        Err(e) => Err(resume_error(e)),
    }
}
