#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| htc_worker::formats::fuzz::gguf(data));
