//! Arbitrary bytes as a control frame payload, both directions: never a panic, never an
//! allocation beyond the bincode limit.
#![no_main]

use arsnet_proto::control::{check_frame_len, decode_client_message, decode_payload, Response};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() >= 4 {
        let _ = check_frame_len(data[..4].try_into().unwrap());
    }
    let _ = decode_client_message(data);
    let _ = decode_payload::<Response>(data);
});
