pub mod down;
pub mod inspect;
pub mod status;
pub mod up;
