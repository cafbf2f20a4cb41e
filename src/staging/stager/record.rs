//! What a staging is asked ([`StageRequest`]) and what it ends as: a success
//! (the droplet and what the builder found) or a failure named as Cloud
//! Controller names it, the record kept in the depot, and the events its
//! watchers see.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use celld_blobstore::BlobInfo;

/// What a client asks to stage.
#[derive(Debug, Clone, Default)]
pub struct StageRequest {
    pub app_guid: String,
    pub app_name: String,
    pub space_name: String,
    pub space_guid: String,
    pub package_key: String,
    pub stack: String,
    pub buildpacks: Vec<String>,
    pub env: Vec<(String, String)>,
    pub memory_mb: u32,
    pub disk_mb: u32,
    pub timeout: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildpackUsed {
    pub key: String,
    pub name: String,
    #[serde(default)]
    pub version: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagingSuccess {
    pub droplet: BlobInfo,
    pub detected_buildpack: String,
    pub buildpack_key: String,
    pub buildpacks: Vec<BuildpackUsed>,
    pub process_types: BTreeMap<String, String>,
    pub start_command: String,
    pub result_json: String,
    pub stack: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagingFailure {
    /// Cloud Controller's error name (NoAppDetectedError, BuildpackCompileFailed, ...).
    pub reason: String,
    pub exit_code: i32,
    pub message: String,
}

impl StagingFailure {
    pub(super) fn new(reason: &str, message: impl Into<String>) -> Self {
        Self { reason: reason.to_string(), exit_code: 0, message: message.into() }
    }
    pub(super) fn error(message: impl Into<String>) -> Self {
        Self::new("StagingError", message)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Running,
    Succeeded(StagingSuccess),
    Failed(StagingFailure),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagingRecord {
    pub staging_guid: String,
    pub app_guid: String,
    /// Unix seconds.
    pub created_at: u64,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub message: String,
    pub stderr: bool,
    /// Unix nanoseconds.
    pub timestamp: i64,
}

#[derive(Debug, Clone)]
pub enum Event {
    Log(LogLine),
    Done(Box<StagingRecord>),
}
