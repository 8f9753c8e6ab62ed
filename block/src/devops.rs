//! What a device tells its drive about itself (QEMU's BlockDevOps). The
//! backend calls these around media changes, resizes and drains; defaults
//! describe a fixed, tray-less disk.

pub trait BlockDevOps: Send + Sync {
    /// The medium was loaded (`true`: tray closed with a medium) or
    /// unloaded (`false`: tray opened). Only called when `removable()`.
    fn change_media(&self, _load: bool) {}
    /// The host asked to eject a locked medium: the device tells the guest
    /// (an ATAPI "eject request" event) and, with `force`, unlocks.
    fn eject_request(&self, _force: bool) {}
    fn is_tray_open(&self) -> bool {
        false
    }
    fn is_medium_locked(&self) -> bool {
        false
    }
    /// The medium's size changed.
    fn resize(&self) {}
    /// Stop submitting new requests until `drained_end`.
    fn drained_begin(&self) {}
    fn drained_end(&self) {}
    /// Has `change_media` (QEMU: a change_media_cb), i.e. removable media.
    fn removable(&self) -> bool {
        false
    }
    /// Has a tray (QEMU: an is_tray_open callback).
    fn has_tray(&self) -> bool {
        false
    }
}
