//! Server groups as the daemon sees them: `serve`, `stop-server`, `start-server`,
//! `servers`, their persistence and restore, and their status pushed to watchers every `-i`.

use std::sync::Arc;

use arsnet_engine::server::{GroupConfig, ServeError, ServerGroup};
use arsnet_proto::control::{ControlError, ErrorKind, GroupId, GroupInfo, ServeSpec, Update};
use arsnet_store::dir::FileId;
use tracing::warn;

use arsnet_proto::request::interval;

use crate::persist::GroupRecord;
use crate::state::{Daemon, GroupEntry};

fn serve_error(e: ServeError) -> ControlError {
    let kind = match e {
        ServeError::Internal(_) => ErrorKind::Internal,
        ServeError::UnknownPort(_) => ErrorKind::NotFound,
        _ => ErrorKind::BadRequest,
    };
    ControlError::new(kind, e.to_string())
}

fn group_config(daemon: &Daemon, spec: &ServeSpec, expect_file: Option<FileId>) -> GroupConfig {
    GroupConfig {
        file: spec.file.clone(),
        count: spec.count,
        ports: spec.ports.clone(),
        bind: spec.bind.clone(),
        rate: spec.rate,
        status_interval: interval(spec.status_interval_secs),
        segment_size: daemon.config().segment_size,
        cache_dir: Some(daemon.state_dir.join("digests")),
        expect_file,
        http: spec.http,
    }
}

/// `serve`: validates, hashes, binds every port; all or nothing.
pub(crate) async fn serve(
    daemon: &Arc<Daemon>,
    spec: ServeSpec,
    file_identity: Option<FileId>,
) -> Result<GroupId, ControlError> {
    spec.validate()
        .map_err(|e| ControlError::new(ErrorKind::BadRequest, e.to_string()))?;
    let id = {
        let mut inner = daemon.lock();
        for (gid, entry) in &inner.groups {
            if let Some(port) = spec.ports.iter().find(|p| entry.group.ports().contains(p)) {
                return Err(ControlError::new(
                    ErrorKind::Conflict,
                    format!("port {port} cannot be used: already served by group {gid}"),
                ));
            }
        }
        let id = inner.next_group_id;
        inner.next_group_id += 1;
        id
    };
    let group = ServerGroup::start(id, group_config(daemon, &spec, file_identity))
        .await
        .map_err(serve_error)?;
    let interval = spec.status_interval_secs;
    let saved = {
        let mut inner = daemon.lock();
        inner.groups.insert(
            id,
            GroupEntry {
                spec,
                group: group.clone(),
                file_identity,
            },
        );
        let saved = daemon.persist(&inner);
        if saved.is_err() {
            inner.groups.remove(&id);
        }
        saved
    };
    if let Err(e) = saved {
        // Answered with an error, so it must not serve either (and not come back later).
        group.shutdown().await;
        return Err(e.into());
    }
    spawn_status_pusher(daemon, &group, interval);
    Ok(id)
}

fn spawn_status_pusher(daemon: &Arc<Daemon>, group: &Arc<ServerGroup>, interval_secs: u64) {
    let daemon_weak = Arc::downgrade(daemon);
    let group_weak = Arc::downgrade(group);
    let shutdown = daemon.shutdown.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval(interval_secs));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            let (Some(daemon), Some(group)) = (daemon_weak.upgrade(), group_weak.upgrade()) else {
                break;
            };
            daemon.broadcast(Update::Groups(vec![group.info()]));
        }
    });
}

pub(crate) fn infos(daemon: &Daemon) -> Vec<GroupInfo> {
    daemon
        .lock()
        .groups
        .values()
        .map(|g| g.group.info())
        .collect()
}

/// Finds the group of every port, checking that all exist before anything is done.
fn resolve(daemon: &Daemon, ports: &[u16]) -> Result<Vec<(Arc<ServerGroup>, u16)>, ControlError> {
    if ports.is_empty() {
        return Err(ControlError::new(ErrorKind::BadRequest, "no port given"));
    }
    let inner = daemon.lock();
    ports
        .iter()
        .map(|&port| {
            inner
                .groups
                .values()
                .find(|g| g.group.ports().contains(&port))
                .map(|g| (g.group.clone(), port))
                .ok_or_else(|| serve_error(ServeError::UnknownPort(port)))
        })
        .collect()
}

/// Saves and announces the groups' new port states; the error if they could not be saved.
fn ports_changed(daemon: &Daemon) -> Result<(), ControlError> {
    let inner = daemon.lock();
    let saved = daemon.persist(&inner);
    let groups: Vec<_> = inner.groups.values().map(|g| g.group.info()).collect();
    drop(inner);
    daemon.broadcast(Update::Groups(groups));
    Ok(saved?)
}

/// `unserve`: stops every port of the group and forgets it (also on restart).
pub(crate) async fn remove(daemon: &Daemon, id: GroupId) -> Result<(), ControlError> {
    let removed = {
        let mut inner = daemon.lock();
        let unrestored = inner.unrestored_groups.len();
        inner.unrestored_groups.retain(|g| g.id != id);
        let removed = inner.groups.remove(&id);
        // Its ports' counters go with it; the daemon's served-bytes counter must not.
        if let Some(entry) = &removed {
            let sent: u64 = entry.group.info().ports.iter().map(|p| p.bytes_sent).sum();
            let totals = &mut inner.totals;
            totals.served_bytes_of_removed_groups =
                totals.served_bytes_of_removed_groups.saturating_add(sent);
        }
        if removed.is_none() && inner.unrestored_groups.len() == unrestored {
            return Err(ControlError::new(
                ErrorKind::NotFound,
                format!("no server group with id {id}"),
            ));
        }
        removed
    };
    if let Some(entry) = removed {
        entry.group.shutdown().await;
    }
    ports_changed(daemon)
}

pub(crate) fn stop_ports(daemon: &Daemon, ports: &[u16]) -> Result<(), ControlError> {
    let targets = resolve(daemon, ports)?;
    let result = targets
        .iter()
        .try_for_each(|(g, p)| g.stop_port(*p))
        .map_err(serve_error);
    let saved = ports_changed(daemon);
    result.and(saved)
}

pub(crate) async fn start_ports(daemon: &Daemon, ports: &[u16]) -> Result<(), ControlError> {
    let targets = resolve(daemon, ports)?;
    let mut result = Ok(());
    for (group, port) in targets {
        if let Err(e) = group.start_port(port).await {
            result = Err(serve_error(e));
            break;
        }
    }
    let saved = ports_changed(daemon);
    result.and(saved)
}

/// Brings groups back after a restart. A port that cannot be bound is marked failed; a
/// group whose file is gone is reported and kept in the state file for the operator.
pub(crate) async fn restore_groups(daemon: &Arc<Daemon>, records: Vec<GroupRecord>) {
    for record in records {
        let config = group_config(daemon, &record.spec, record.file_identity);
        // The group config holds the caller's file identity: a replaced file is refused
        // before it is hashed or any port bound.
        let restored = ServerGroup::restore(record.id, config, &record.stopped_ports)
            .await
            .map_err(|e| e.to_string());
        match restored {
            Ok(group) => {
                spawn_status_pusher(daemon, &group, record.spec.status_interval_secs);
                for port in group
                    .info()
                    .ports
                    .iter()
                    .filter(|p| p.state == arsnet_proto::control::PortState::Failed)
                {
                    warn!(group = record.id, port = port.port, reason = %port.detail, "restored port failed to listen");
                }
                daemon.lock().groups.insert(
                    record.id,
                    GroupEntry {
                        spec: record.spec,
                        group,
                        file_identity: record.file_identity,
                    },
                );
            }
            Err(e) => {
                let note = format!(
                    "server group {} ({}) could not be restored: {e}; it is kept in the state \
                     file and retried at the next start (`unserve {}` forgets it)",
                    record.id,
                    record.spec.file.display(),
                    record.id
                );
                daemon.lock().unrestored_groups.push(record);
                daemon.note_restore_problem(note);
            }
        }
    }
}
