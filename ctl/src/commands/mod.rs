pub mod down;
pub mod inspect;
pub mod pod;
pub mod status;
pub mod up;
