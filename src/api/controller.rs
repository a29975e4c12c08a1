//! What each API request does: routing by path and method, the configuration before
//! start ([`Resources`]), then the running VM's actions (pause, resume, snapshot).

use std::path::PathBuf;
use std::sync::mpsc::Sender;

use super::http::{Request, Response};
use super::model::*;
use super::resources::Resources;
use super::{limits, parse, ApiError};
use crate::snapshot::fingerprint::Expect;
use crate::snapshot::{self, CreateOptions};
use crate::vmm::{self, ExitWatch, RestoreOptions, RunningVm};

/// The VMM process's one VM, before and after start.
pub struct Controller {
    id: String,
    resources: Resources,
    vm: Option<RunningVm>,
    /// Told once the VM runs, so the process can wait for its end.
    started: Sender<ExitWatch>,
}

fn json<T: serde::Serialize>(value: &T) -> Result<Response, ApiError> {
    serde_json::to_string(value)
        .map(Response::ok)
        .map_err(|e| ApiError::Internal(e.to_string()))
}

fn not_started(what: &str) -> ApiError {
    ApiError::State(format!("{what} needs a started VM (it is Not started)"))
}

fn internal(e: impl std::error::Error) -> ApiError {
    ApiError::Internal(crate::error_chain(&e))
}

impl Controller {
    /// A controller for instance `id` with `resources` configured (from a config file,
    /// or the defaults); `started` hears of the VM once it runs.
    pub fn new(id: String, resources: Resources, started: Sender<ExitWatch>) -> Self {
        Self {
            id,
            resources,
            vm: None,
            started,
        }
    }

    /// The VM, once started (the process takes it back to wait for its end).
    pub fn take_vm(&mut self) -> Option<RunningVm> {
        self.vm.take()
    }

    /// A handle that stops the VM, once it runs.
    pub fn stopper(&self) -> Option<vmm::Stopper> {
        self.vm.as_ref().map(RunningVm::stopper)
    }

    /// Answer one request.
    pub fn handle(&mut self, req: &Request) -> Response {
        self.route(req).unwrap_or_else(|e| e.response())
    }

    fn state(&self) -> &'static str {
        match &self.vm {
            None => "Not started",
            Some(vm) if vm.is_paused() => "Paused",
            Some(_) => "Running",
        }
    }

    fn before_start(&self, what: &str) -> Result<(), ApiError> {
        match self.vm {
            None => Ok(()),
            Some(_) => Err(ApiError::State(format!(
                "{what} is not allowed after the VM started (it is {})",
                self.state()
            ))),
        }
    }

    fn running(&self, what: &str) -> Result<&RunningVm, ApiError> {
        self.vm.as_ref().ok_or_else(|| not_started(what))
    }

    fn route(&mut self, req: &Request) -> Result<Response, ApiError> {
        let parts: Vec<&str> = req.path.split('/').filter(|s| !s.is_empty()).collect();
        let body = req.body.as_slice();
        let ok = || Ok(Response::no_content());
        match (parts.as_slice(), req.method.as_str()) {
            ([], "GET") => json(&InstanceInfo {
                app_name: "husk".into(),
                id: self.id.clone(),
                state: self.state().into(),
                vmm_version: env!("CARGO_PKG_VERSION").into(),
            }),
            (["version"], "GET") => json(&serde_json::json!({
                "firecracker_version": env!("CARGO_PKG_VERSION"),
                "vmm_version": env!("CARGO_PKG_VERSION"),
            })),
            (["machine-config"], "GET") => json(&self.resources.machine),
            (["machine-config"], "PUT") => {
                self.before_start("PUT /machine-config")?;
                self.resources.set_machine(parse(body)?)?;
                ok()
            }
            (["machine-config"], "PATCH") => {
                self.before_start("PATCH /machine-config")?;
                self.resources.update_machine(parse(body)?)?;
                ok()
            }
            (["boot-source"], "PUT") => {
                self.before_start("PUT /boot-source")?;
                self.resources.set_boot(parse(body)?)?;
                ok()
            }
            (["drives", id], "PUT") => {
                self.before_start("PUT /drives")?;
                self.resources.put_drive(id, parse(body)?)?;
                ok()
            }
            (["drives", id], "PATCH") => self.patch_drive(id, parse(body)?),
            (["network-interfaces", id], "PUT") => {
                self.before_start("PUT /network-interfaces")?;
                self.resources.put_net(id, parse(body)?)?;
                ok()
            }
            (["network-interfaces", id], "PATCH") => self.patch_net(id, parse(body)?),
            (["vsock"], "PUT") => {
                self.before_start("PUT /vsock")?;
                self.resources.set_vsock(parse(body)?)?;
                ok()
            }
            (["entropy"], "PUT") => {
                self.before_start("PUT /entropy")?;
                self.resources.set_entropy(parse(body)?)?;
                ok()
            }
            (["actions"], "PUT") => self.action(parse(body)?),
            (["vm"], "PATCH") => self.set_vm_state(parse(body)?),
            (["vm", "config"], "GET") => json(&self.resources.full()),
            (["snapshot", "create"], "PUT") => self.snapshot_create(parse(body)?),
            (["snapshot", "load"], "PUT") => self.snapshot_load(parse(body)?),
            (["logger"], "PUT") => {
                let _: Logger = parse(body)?;
                ok()
            }
            (["metrics"], "PUT") => {
                let _: Metrics = parse(body)?;
                ok()
            }
            (["husk", rest @ ..], method) => self
                .husk_route(rest, method, body)
                .unwrap_or_else(|| Err(ApiError::NotFound(req.path.clone()))),
            (path, method) if known(path) => Err(ApiError::MethodNotAllowed {
                method: method.to_string(),
                path: req.path.clone(),
            }),
            _ => Err(ApiError::NotFound(req.path.clone())),
        }
    }

    fn patch_drive(&mut self, id: &str, d: PartialDrive) -> Result<Response, ApiError> {
        let vm = self
            .vm
            .as_mut()
            .ok_or_else(|| not_started("PATCH /drives"))?;
        limits::patch_drive(vm, &mut self.resources, id, d)?;
        Ok(Response::no_content())
    }

    fn patch_net(&mut self, id: &str, n: PartialNetworkInterface) -> Result<Response, ApiError> {
        let vm = (self.vm.as_mut()).ok_or_else(|| not_started("PATCH /network-interfaces"))?;
        limits::patch_net(vm, &mut self.resources, id, n)?;
        Ok(Response::no_content())
    }

    fn action(&mut self, a: InstanceActionInfo) -> Result<Response, ApiError> {
        match a.action_type.as_str() {
            "InstanceStart" => {
                self.before_start("InstanceStart")?;
                let config = self.resources.vm_config()?;
                let vm = vmm::start(&config).map_err(internal)?;
                self.adopt(vm);
                Ok(Response::no_content())
            }
            "FlushMetrics" => Ok(Response::no_content()),
            "SendCtrlAltDel" => {
                let vm = self.running("SendCtrlAltDel")?;
                vm.send_ctrl_alt_del().map_err(|e| {
                    ApiError::BadRequest(format!("action_type SendCtrlAltDel: {e}"))
                })?;
                Ok(Response::no_content())
            }
            other => Err(ApiError::BadRequest(format!(
                "action_type {other}: must be InstanceStart, SendCtrlAltDel or FlushMetrics"
            ))),
        }
    }

    fn adopt(&mut self, vm: RunningVm) {
        // The process waits on this; if it is gone the process is ending anyway.
        drop(self.started.send(vm.exit_watch()));
        self.vm = Some(vm);
    }

    fn set_vm_state(&mut self, v: VmStateRequest) -> Result<Response, ApiError> {
        let vm = self.running("PATCH /vm")?;
        match v.state.as_str() {
            "Paused" => vm.pause().map_err(internal)?,
            "Resumed" => vm.resume(),
            other => {
                return Err(ApiError::BadRequest(format!(
                    "state {other}: must be Paused or Resumed"
                )))
            }
        }
        Ok(Response::no_content())
    }

    fn snapshot_create(&mut self, p: SnapshotCreateParams) -> Result<Response, ApiError> {
        let vm = self.running("PUT /snapshot/create")?;
        if !vm.is_paused() {
            return Err(ApiError::State(
                "PUT /snapshot/create needs a paused VM: PATCH /vm {\"state\": \"Paused\"} first"
                    .into(),
            ));
        }
        if let Some(t) = p.snapshot_type.as_deref().filter(|t| *t != "Full") {
            return Err(ApiError::BadRequest(format!(
                "snapshot_type {t}: only Full snapshots are made"
            )));
        }
        let options = CreateOptions {
            agent_digest: None,
            durable: true,
        };
        let (state, memory) = (
            PathBuf::from(&p.snapshot_path),
            PathBuf::from(&p.mem_file_path),
        );
        snapshot::create_files(vm, &state, &memory, &options).map_err(|e| match e {
            snapshot::SnapshotError::Io { .. } => ApiError::BadRequest(crate::error_chain(&e)),
            other => internal(other),
        })?;
        Ok(Response::no_content())
    }

    fn snapshot_load(&mut self, p: SnapshotLoadParams) -> Result<Response, ApiError> {
        self.before_start("PUT /snapshot/load")?;
        let memory = match (&p.mem_file_path, &p.mem_backend) {
            (Some(path), None) => path.clone(),
            (None, Some(b)) if b.backend_type == "File" => b.backend_path.clone(),
            (None, Some(b)) => {
                return Err(ApiError::BadRequest(format!(
                    "mem_backend.backend_type {}: only File is supported",
                    b.backend_type
                )))
            }
            _ => {
                return Err(ApiError::BadRequest(
                    "exactly one of mem_file_path and mem_backend must be given".into(),
                ))
            }
        };
        if p.clock_realtime == Some(true) {
            return Err(ApiError::BadRequest(
                "clock_realtime true: not supported; the guest's monotonic clock goes on \
                 from the snapshot and its agent sets the wall clock"
                    .into(),
            ));
        }
        let loaded = snapshot::load_files(
            std::path::Path::new(&p.snapshot_path),
            std::path::Path::new(&memory),
            &Expect::default(),
        )
        .map_err(|e| ApiError::BadRequest(crate::error_chain(&e)))?;
        let options = load_options(&loaded.file.state.config, &p, &self.resources)?;
        let vm = vmm::restore(&loaded.file.state, loaded.memory, &options).map_err(internal)?;
        self.adopt(vm);
        Ok(Response::no_content())
    }
}

/// The restore options a `PUT /snapshot/load` asks for: new TAPs by interface id, a new
/// vsock socket, and whether the guest runs at once.
fn load_options(
    saved: &crate::config::VmConfig,
    p: &SnapshotLoadParams,
    resources: &Resources,
) -> Result<RestoreOptions, ApiError> {
    let mut options = RestoreOptions {
        console: resources.console.clone(),
        paused: !p.resume_vm.unwrap_or(false),
        ..RestoreOptions::default()
    };
    for o in p.network_overrides.iter().flatten() {
        let slot = saved
            .nets
            .iter()
            .position(|n| n.id.as_deref() == Some(&o.iface_id))
            .ok_or_else(|| {
                ApiError::BadRequest(format!("network_overrides: no interface {}", o.iface_id))
            })?;
        let mut card = saved.nets[slot].clone();
        card.tap = Some(o.host_dev_name.clone());
        card.unplugged = false;
        options.nets.insert(slot, card);
    }
    if let Some(v) = &p.vsock_override {
        let cid = saved.vsock.as_ref().map_or(3, |v| v.cid);
        options.vsock = Some(crate::devices::virtio::vsock::VsockConfig::new(
            cid,
            PathBuf::from(&v.uds_path),
        ));
    }
    Ok(options)
}

/// Paths the API serves (for 405 against 404).
fn known(path: &[&str]) -> bool {
    matches!(
        path,
        [] | ["version"]
            | ["machine-config"]
            | ["boot-source"]
            | ["drives", _]
            | ["network-interfaces", _]
            | ["vsock"]
            | ["entropy"]
            | ["actions"]
            | ["vm"]
            | ["vm", "config"]
            | ["snapshot", "create" | "load"]
            | ["logger"]
            | ["metrics"]
    )
}

#[path = "husk_routes.rs"]
mod husk_routes;

#[cfg(test)]
mod tests {
    use super::*;

    fn controller() -> Controller {
        let (tx, _rx) = std::sync::mpsc::channel();
        Controller::new("test".into(), Resources::default(), tx)
    }

    fn request(method: &str, path: &str, body: &str) -> Request {
        Request {
            method: method.into(),
            path: path.into(),
            body: body.as_bytes().to_vec(),
            close: false,
        }
    }

    fn status_and_body(c: &mut Controller, method: &str, path: &str, body: &str) -> (u16, String) {
        let r = c.handle(&request(method, path, body));
        (r.status, r.body.unwrap_or_default())
    }

    #[test]
    fn a_fresh_instance_is_not_started() {
        let (status, body) = status_and_body(&mut controller(), "GET", "/", "");
        assert_eq!(status, 200);
        assert!(body.contains(r#""state":"Not started""#), "{body}");
    }

    #[test]
    fn machine_config_is_put_and_read_back() {
        let mut c = controller();
        let put = status_and_body(
            &mut c,
            "PUT",
            "/machine-config",
            r#"{"vcpu_count":2,"mem_size_mib":256}"#,
        );
        assert_eq!(put, (204, String::new()));
        let (status, body) = status_and_body(&mut c, "GET", "/machine-config", "");
        assert_eq!(status, 200);
        assert!(
            body.contains(r#""vcpu_count":2"#) && body.contains(r#""mem_size_mib":256"#),
            "{body}"
        );
    }

    #[test]
    fn an_unknown_field_is_a_400_naming_it() {
        let (status, body) = status_and_body(
            &mut controller(),
            "PUT",
            "/machine-config",
            r#"{"vcpu_count":1,"mem_size_mib":64,"turbo":true}"#,
        );
        assert_eq!(status, 400);
        assert!(body.contains("unknown field `turbo`"), "{body}");
    }

    #[test]
    fn a_wrong_method_is_405_and_an_unknown_path_404() {
        let mut c = controller();
        assert_eq!(
            status_and_body(&mut c, "DELETE", "/machine-config", "").0,
            405
        );
        assert_eq!(status_and_body(&mut c, "GET", "/balloon", "").0, 404);
        // Firecracker sets the entropy device before the start only.
        assert_eq!(status_and_body(&mut c, "PATCH", "/entropy", "{}").0, 405);
    }

    #[test]
    fn pausing_before_start_is_refused_saying_why() {
        let (status, body) =
            status_and_body(&mut controller(), "PATCH", "/vm", r#"{"state":"Paused"}"#);
        assert_eq!(status, 400);
        assert!(
            body.contains("needs a started VM (it is Not started)"),
            "{body}"
        );
    }

    #[test]
    fn starting_without_a_kernel_is_a_400() {
        let (status, body) = status_and_body(
            &mut controller(),
            "PUT",
            "/actions",
            r#"{"action_type":"InstanceStart"}"#,
        );
        assert_eq!(status, 400);
        assert!(body.contains("PUT /boot-source first"), "{body}");
    }

    #[test]
    fn a_missing_kernel_file_is_named() {
        let (status, body) = status_and_body(
            &mut controller(),
            "PUT",
            "/boot-source",
            r#"{"kernel_image_path":"/nonexistent/vmlinux"}"#,
        );
        assert_eq!(status, 400);
        assert!(
            body.contains("kernel_image_path /nonexistent/vmlinux: no such file"),
            "{body}"
        );
    }
}
