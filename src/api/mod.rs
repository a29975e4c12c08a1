//! `husk vmm`'s REST API on a Unix socket: a Firecracker-compatible subset (the same
//! paths, JSON field names and status codes, so a client written against Firecracker's
//! documentation drives husk unchanged), plus husk's own requests under `/husk/`.
//!
//! | path | methods |
//! |---|---|
//! | `/` | GET: instance info with `state` |
//! | `/version` | GET |
//! | `/machine-config` | GET, PUT, PATCH (before start) |
//! | `/boot-source` | PUT (before start) |
//! | `/drives/{id}` | PUT (before start), PATCH (after: `rate_limiter`) |
//! | `/network-interfaces/{id}` | PUT (before start), PATCH (after: `rx_rate_limiter`, `tx_rate_limiter`) |
//! | `/vsock`, `/entropy` | PUT (before start; `/entropy` takes a `rate_limiter`) |
//! | `/actions` | PUT: `InstanceStart`, `SendCtrlAltDel`, `FlushMetrics` |
//! | `/vm` | PATCH: `Paused` / `Resumed` |
//! | `/snapshot/create` | PUT (paused) |
//! | `/snapshot/load` | PUT (fresh process) |
//! | `/vm/config` | GET |
//! | `/logger`, `/metrics` | PUT |
//! | `/husk/report` | GET: console, kernel log, vCPUs, devices of the running guest |
//!
//! Success is 204, or 200 with a body; bad input is 400 with `{"fault_message": ...}`
//! naming the field and value; an unknown path 404, a known path with another method
//! 405; a request the VM's state does not allow (a drive put after start) 400 saying so.

pub mod client;
pub mod controller;
pub mod http;
pub mod limits;
pub mod model;
pub mod resources;
pub mod server;

use http::Response;

/// What a request can fail with, and the status it maps to.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Bad input (400).
    #[error("{0}")]
    BadRequest(String),
    /// The VM's state does not allow it (400).
    #[error("{0}")]
    State(String),
    /// No such path (404).
    #[error("no such resource: {0}")]
    NotFound(String),
    /// The path does not take this method (405).
    #[error("{method} is not allowed on {path}")]
    MethodNotAllowed {
        /// The method.
        method: String,
        /// The path.
        path: String,
    },
    /// The VMM failed doing it (500).
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// The HTTP response for this error.
    pub fn response(&self) -> Response {
        let status = match self {
            Self::BadRequest(_) | Self::State(_) => 400,
            Self::NotFound(_) => 404,
            Self::MethodNotAllowed { .. } => 405,
            Self::Internal(_) => 500,
        };
        Response::fault(status, &self.to_string())
    }
}

/// A JSON body of type `T`, or a 400 naming what is wrong with it.
pub fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
}
