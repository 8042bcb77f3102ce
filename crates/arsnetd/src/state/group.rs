//! One server group as the daemon holds it: what was asked, and the running group.

use std::sync::Arc;

use arsnet_engine::server::ServerGroup;
use arsnet_proto::control::{GroupId, ServeSpec};
use arsnet_store::dir::FileId;

use crate::persist::GroupRecord;

pub(crate) struct GroupEntry {
    pub spec: ServeSpec,
    pub group: Arc<ServerGroup>,
    /// For a group served for a caller other than the daemon's user: the identity of the
    /// file that caller opened. The group serves that file or nothing, also after a restart.
    pub file_identity: Option<FileId>,
}

impl GroupEntry {
    /// What is saved of the group.
    pub fn record(&self, id: GroupId) -> GroupRecord {
        GroupRecord {
            id,
            spec: self.spec.clone(),
            stopped_ports: self.group.stopped_ports(),
            file_identity: self.file_identity,
        }
    }
}
