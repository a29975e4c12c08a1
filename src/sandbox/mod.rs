//! Sandboxes: a VM booted with the husk agent as init, reached over vsock, running
//! containers from images of the image store. (The pieces below are what exists so
//! far; the `Sandbox` API is built on them.)
pub mod initramfs;
pub mod vsock;
