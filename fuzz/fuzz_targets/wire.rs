//! Feeds arbitrary bytes to the wire decoders as a stream of server frames (the client's
//! view), including the manifest assembler, and as client frames (the server's view).
//! Nothing may panic; nothing may allocate beyond the frame bounds.
#![no_main]

use arsnet_proto::wire::{
    decode_client, decode_server, parse_frame_head, ManifestAssembler, ServerFrame,
    FRAME_HEADER_LEN,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    let mut assembler: Option<ManifestAssembler> = None;
    while rest.len() >= FRAME_HEADER_LEN {
        let head: [u8; FRAME_HEADER_LEN] = rest[..FRAME_HEADER_LEN].try_into().unwrap();
        let Ok(head) = parse_frame_head(head) else {
            return;
        };
        rest = &rest[FRAME_HEADER_LEN..];
        let len = (head.len as usize).min(rest.len());
        let (payload, tail) = rest.split_at(len);
        rest = tail;
        let _ = decode_client(head, payload);
        match decode_server(head, payload) {
            Ok(ServerFrame::Header(h)) => assembler = Some(ManifestAssembler::new(h)),
            Ok(ServerFrame::Digests { first, digests }) => {
                if let Some(a) = assembler.as_mut() {
                    if a.push(first, digests).is_err() {
                        return;
                    }
                    if a.is_complete() {
                        if let Some(a) = assembler.take() {
                            let _ = a.finish();
                        }
                    }
                }
            }
            _ => {}
        }
    }
});
