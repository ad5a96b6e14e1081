//! The SASL server mechanisms (PLAIN, SCRAM-SHA-1/256 and -PLUS) driven by arbitrary messages.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    canto_proto::sasl::fuzz_exchange(data);
});
