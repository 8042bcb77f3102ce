//! Feeds arbitrary bytes to the daemon's state-file decoder (`persist::parse_state`): it must
//! never panic, and whatever it accepts must survive a save/parse round trip unchanged.
#![no_main]

use arsnetd::persist::parse_state;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(state) = parse_state(data) {
        let again = serde_json::to_vec(&state).expect("a parsed state serializes");
        assert_eq!(parse_state(&again).as_ref(), Ok(&state));
    }
});
