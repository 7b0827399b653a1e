pub mod down;
pub mod inspect;
pub mod install;
pub mod nodes;
pub mod pod;
pub mod policy;
pub mod status;
pub mod up;
