//! husk's own requests, under `/husk/`: what `husk::Sandbox` needs of a VMM process
//! beyond the Firecracker-compatible subset. A whole [`crate::config::VmConfig`] to
//! start, a snapshot folder to restore with new backends ([`RestoreOptions`]), a
//! snapshot folder to write, and the reports of a running guest.
//!
//! | path | method | body | answer |
//! |---|---|---|---|
//! | `/husk/start` | PUT | `VmConfig` | 204 |
//! | `/husk/restore` | PUT | `{dir, expect, options}` | 204 |
//! | `/husk/snapshot` | PUT | `{dir, durable, agent_digest}` | 200 `{memory_written, state_bytes, pause_ms, save_state_ms, write_memory_ms}` |
//! | `/husk/info` | GET | | 200 `{taps, config, paused, reserved_fds}` |
//! | `/husk/console` | GET | | 200 `{console}`: the console's last KiB |
//! | `/husk/report` | GET | | 200 `{report}`: console, kernel log, vCPUs, devices |

use std::path::PathBuf;

use serde::Deserialize;

use super::{internal, json, Controller};
use crate::api::http::Response;
use crate::api::{parse, ApiError};
use crate::config::VmConfig;
use crate::snapshot::fingerprint::Expect;
use crate::snapshot::{self, CreateOptions};
use crate::vmm::{self, RestoreOptions};

/// `PUT /husk/restore`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RestoreRequest {
    dir: PathBuf,
    #[serde(default)]
    expect: Expect,
    options: RestoreOptions,
}

/// `PUT /husk/snapshot`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotRequest {
    dir: PathBuf,
    durable: bool,
    #[serde(default)]
    agent_digest: Option<String>,
}

impl Controller {
    /// A `/husk/...` request (`rest` is the path after `/husk/`), if it is one.
    pub(super) fn husk_route(
        &mut self,
        rest: &[&str],
        method: &str,
        body: &[u8],
    ) -> Option<Result<Response, ApiError>> {
        Some(match (rest, method) {
            (["start"], "PUT") => self.husk_start(body),
            (["restore"], "PUT") => self.husk_restore(body),
            (["snapshot"], "PUT") => self.husk_snapshot(body),
            (["info"], "GET") => self.running("GET /husk/info").and_then(|vm| {
                json(&serde_json::json!({
                    "taps": vm.tap_names(),
                    "config": vm.config(),
                    "paused": vm.is_paused(),
                    "reserved_fds": vm.reserved_fds(),
                }))
            }),
            (["console"], "GET") => self
                .running("GET /husk/console")
                .and_then(|vm| json(&serde_json::json!({ "console": vm.console_tail() }))),
            (["report"], "GET") => self
                .running("GET /husk/report")
                .and_then(|vm| json(&serde_json::json!({ "report": vm.failure_output() }))),
            _ => return None,
        })
    }

    fn husk_start(&mut self, body: &[u8]) -> Result<Response, ApiError> {
        self.before_start("PUT /husk/start")?;
        let config: VmConfig = parse(body)?;
        let vm = vmm::start(&config).map_err(|e| match e {
            vmm::VmError::Config(_) | vmm::VmError::Open { .. } => {
                ApiError::BadRequest(crate::error_chain(&e))
            }
            other => internal(other),
        })?;
        self.adopt(vm);
        Ok(Response::no_content())
    }

    fn husk_restore(&mut self, body: &[u8]) -> Result<Response, ApiError> {
        self.before_start("PUT /husk/restore")?;
        let request: RestoreRequest = parse(body)?;
        log::debug!("restore: request read");
        let loaded = snapshot::load(&request.dir, &request.expect)
            .map_err(|e| ApiError::BadRequest(crate::error_chain(&e)))?;
        log::debug!("restore: snapshot loaded and checked");
        let set = loaded.working_set.as_ref();
        let vm = vmm::restore_with(&loaded.file.state, loaded.memory, set, &request.options)
            .map_err(internal)?;
        log::debug!("restore: VM restored");
        self.adopt(vm);
        log::debug!("restore: VM adopted");
        Ok(Response::no_content())
    }

    fn husk_snapshot(&mut self, body: &[u8]) -> Result<Response, ApiError> {
        let request: SnapshotRequest = parse(body)?;
        let vm = self.running("PUT /husk/snapshot")?;
        let options = CreateOptions {
            agent_digest: request.agent_digest,
            durable: request.durable,
        };
        let created = snapshot::create(vm, &request.dir, &options).map_err(internal)?;
        json(&serde_json::json!({
            "memory_written": created.memory.written,
            "memory_total": created.memory.total,
            "state_bytes": created.state_bytes,
            "pause_ms": crate::metrics::ms(created.pause),
            "save_state_ms": crate::metrics::ms(created.save_state),
            "write_memory_ms": crate::metrics::ms(created.write_memory),
        }))
    }
}
