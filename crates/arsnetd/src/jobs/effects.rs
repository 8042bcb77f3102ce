//! Carrying out what the job lifecycle decided: a command to the running engine, or the
//! removal of the job's partial files.

use arsnet_proto::control::JobId;
use arsnet_store::dir::Dir;
use arsnet_store::DownloadStore;
use tracing::warn;

use crate::lifecycle::Effect;
use crate::state::JobEntry;

pub(crate) fn apply(id: JobId, entry: &JobEntry, effect: Effect) {
    match effect {
        Effect::Nothing => {}
        Effect::Command(command) => {
            if let Some(live) = &entry.live {
                // A full channel already holds a stop command; the lifecycle decides the
                // final state from what was asked last.
                let _ = live.commands.try_send(command);
            }
        }
        Effect::RemovePartial => remove_partial(id, entry),
    }
}

/// Removes a job's partial files (journal first, so a crash half way leaves nothing that
/// looks adoptable). A job that never learned its file name created none.
fn remove_partial(id: JobId, entry: &JobEntry) {
    let Some(name) = entry.name.as_deref() else {
        return;
    };
    let identity = entry.grant.map(|g| g.dir_identity);
    let removed = Dir::open_expecting(&entry.spec.dir, identity)
        .and_then(|dir| DownloadStore::discard_partial(&dir, name, &entry.tag));
    if let Err(e) = removed {
        warn!(job = id, error = %e, "could not remove partial files");
    }
}
