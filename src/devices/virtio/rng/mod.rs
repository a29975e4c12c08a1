//! virtio-rng (in progress).
