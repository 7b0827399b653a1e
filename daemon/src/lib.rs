//! What every Berth daemon (agent, CSI driver, scheduler, local cloud) does the same way, in one
//! place: logging set-up (text or JSON, level from `BERTH_LOG`), rate-limited log lines for hot
//! paths, and dropping the capabilities a daemon does not need.

pub mod logging;
pub mod privileges;
pub mod socket;
