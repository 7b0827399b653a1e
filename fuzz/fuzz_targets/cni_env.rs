#![no_main]

#[path = "../harness/cni_env.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::run(data));
