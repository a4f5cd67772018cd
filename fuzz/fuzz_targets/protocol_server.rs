//! Any frame a control plane can send, decoded as the data plane decodes it: a text frame, or a
//! binary one holding gzip (decompression bounded). A snapshot then goes through the shared
//! validation, and what it accepts keeps every promise of `check_accepted`; a delta's changes
//! survive a round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use routing_model::delta::SpecChanges;
use routing_model::protocol::ServerMessage;

const LIMIT: usize = 1 << 20;

fuzz_target!(|frame: (bool, &[u8])| {
    let (binary, bytes) = frame;
    let text = if binary {
        match routing_model::compression::gunzip(bytes, LIMIT) {
            Ok(text) => text,
            Err(_) => return,
        }
    } else {
        match std::str::from_utf8(bytes) {
            Ok(text) => text.to_owned(),
            Err(_) => return,
        }
    };
    assert!(text.len() <= LIMIT, "gunzip returned more than its limit");
    let Ok(message) = serde_json::from_str::<ServerMessage>(&text) else {
        return;
    };
    match message {
        ServerMessage::Snapshot(snapshot) => {
            if let Ok(config) = routing_model::validate::validate(snapshot.to_manifest()) {
                cellroute_fuzz::check_accepted(&config);
                let _ = config.hash() == snapshot.snapshot.hash;
            }
        }
        // What a delta changes reads back as itself (applying it is `delta_apply`'s part).
        ServerMessage::Delta(delta) => {
            let again = serde_json::to_string(&delta.changes).expect("changes encode");
            let back: SpecChanges = serde_json::from_str(&again).expect("encoded changes decode");
            assert_eq!(back, delta.changes);
        }
        _ => {}
    }
});
