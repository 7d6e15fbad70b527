#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    protocol_core_fuzz::media_link(data);
});
