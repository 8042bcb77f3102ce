//! The JSON that `--json` prints: one documented schema (`docs/json.md`, machine-readable in
//! `docs/json-schema.json`), version [`SCHEMA`]. Every document is one JSON object on one
//! line carrying `"schema": 1`; streams (`watch`, `fetch --wait`) print one event object per
//! line, the same shape for both. States are lowercase strings, with a failure's reason in a
//! field of its own; digests are lowercase hex.

use std::path::PathBuf;

use arsnet_proto::control::{GroupInfo, JobId, JobInfo, JobState, PortInfo, SourceInfo};
use arsnet_proto::manifest::to_hex;
use serde::Serialize;

/// The schema version: changes when a field changes meaning or goes away (adding fields
/// does not change it).
pub const SCHEMA: u32 = 1;

#[derive(Debug, Serialize)]
pub struct Job {
    pub id: JobId,
    pub state: &'static str,
    /// Why the job failed (only when `state` is "failed").
    pub reason: Option<String>,
    pub dir: PathBuf,
    pub name: Option<String>,
    /// Where the file is (or will be): `dir/name`, once the name is known.
    pub path: Option<PathBuf>,
    pub size: Option<u64>,
    pub segments_total: Option<u64>,
    pub segments_done: u64,
    pub bytes_done: u64,
    pub adopted_segments: u64,
    pub rate_bps: u64,
    pub elapsed_ms: u64,
    /// The accepted content's BLAKE3 (what `b3sum` prints), once known.
    pub blake3: Option<String>,
    /// How the file is checked before it is published: "segments", "whole-file" (mirrors
    /// only, against the pin) or "none" (`--no-verify`).
    pub verification: &'static str,
    pub sources: Vec<Source>,
}

#[derive(Debug, Serialize)]
pub struct Source {
    pub address: String,
    pub state: &'static str,
    pub detail: String,
    pub rate_bps: u64,
    pub bytes: u64,
    pub segments: u64,
    pub failures: u64,
}

#[derive(Debug, Serialize)]
pub struct Group {
    pub id: u64,
    pub file: PathBuf,
    pub size: u64,
    pub blake3: String,
    pub bind: String,
    pub ports: Vec<Port>,
}

#[derive(Debug, Serialize)]
pub struct Port {
    pub port: u16,
    pub state: &'static str,
    pub detail: String,
    pub connections: u64,
    pub bytes_sent: u64,
    pub segments_sent: u64,
    pub rate_bps: u64,
}

impl From<&JobInfo> for Job {
    fn from(info: &JobInfo) -> Self {
        Job {
            id: info.id,
            state: info.state.label(),
            reason: match &info.state {
                JobState::Failed(reason) => Some(reason.clone()),
                _ => None,
            },
            dir: info.dir.clone(),
            name: info.name.clone(),
            path: info.name.as_ref().map(|n| info.dir.join(n)),
            size: info.figures.size,
            segments_total: info.figures.segments_total,
            segments_done: info.figures.segments_done,
            bytes_done: info.figures.bytes_done,
            adopted_segments: info.figures.adopted_segments,
            rate_bps: info.rate_bps,
            elapsed_ms: info.figures.elapsed_ms,
            blake3: info.content.as_ref().map(to_hex),
            verification: info.verification.label(),
            sources: info.sources.iter().map(Source::from).collect(),
        }
    }
}

impl From<&SourceInfo> for Source {
    fn from(s: &SourceInfo) -> Self {
        Source {
            address: s.address.clone(),
            state: s.state.label(),
            detail: s.detail.clone(),
            rate_bps: s.rate_bps,
            bytes: s.bytes,
            segments: s.segments,
            failures: s.failures,
        }
    }
}

impl From<&GroupInfo> for Group {
    fn from(g: &GroupInfo) -> Self {
        Group {
            id: g.id,
            file: g.file.clone(),
            size: g.size,
            blake3: to_hex(&g.blake3),
            bind: g.bind.clone(),
            ports: g.ports.iter().map(Port::from).collect(),
        }
    }
}

impl From<&PortInfo> for Port {
    fn from(p: &PortInfo) -> Self {
        Port {
            port: p.port,
            state: p.state.label(),
            detail: p.detail.clone(),
            connections: p.connections,
            bytes_sent: p.bytes_sent,
            segments_sent: p.segments_sent,
            rate_bps: p.rate_bps,
        }
    }
}

pub fn jobs(infos: &[JobInfo]) -> Vec<Job> {
    infos.iter().map(Job::from).collect()
}

pub fn groups(infos: &[GroupInfo]) -> Vec<Group> {
    infos.iter().map(Group::from).collect()
}

/// Prints one document: `value`'s fields with `"schema"` added first.
pub fn print(value: serde_json::Value) {
    let document = match value {
        serde_json::Value::Object(fields) => {
            let mut with_schema = serde_json::Map::new();
            with_schema.insert("schema".into(), SCHEMA.into());
            with_schema.extend(fields);
            serde_json::Value::Object(with_schema)
        }
        other => other,
    };
    crate::out::line(&document.to_string());
}

/// Serializes a view into a JSON value (views hold only strings and numbers: this cannot
/// fail, and `Null` would be printed if it ever did).
pub fn value<T: Serialize>(view: &T) -> serde_json::Value {
    serde_json::to_value(view).unwrap_or(serde_json::Value::Null)
}
