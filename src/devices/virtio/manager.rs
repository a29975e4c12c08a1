//! MMIO slot and IRQ allocation (in progress).
