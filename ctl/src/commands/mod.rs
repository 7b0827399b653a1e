pub mod down;
pub mod inspect;
pub mod install;
pub mod pod;
pub mod sched;
pub mod status;
pub mod up;
