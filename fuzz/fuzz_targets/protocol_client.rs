//! Any text frame a data plane can send, decoded as the control plane decodes it: decoding and
//! the checks on what a hello claims never panic, their errors stay bounded whatever the input
//! size, and every decoded message survives a round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use routing_model::protocol::{ClientMessage, check_data_plane_id, check_object_ref, truncate};

fuzz_target!(|text: &str| {
    let message = match serde_json::from_str::<ClientMessage>(text) {
        Ok(m) => m,
        Err(e) => {
            let shown = truncate(&e.to_string(), 512);
            assert!(shown.len() <= 512 + '…'.len_utf8());
            return;
        }
    };
    match &message {
        ClientMessage::Hello(hello) => {
            if let Err(e) = check_data_plane_id(&hello.data_plane) {
                assert!(e.len() < 512, "the id error grows with the id: {} bytes", e.len());
            }
            let _ = check_object_ref(&hello.routing_config);
        }
        ClientMessage::Nack { error, .. } => {
            let _ = truncate(error, routing_model::protocol::MAX_NACK_ERROR_BYTES);
        }
        ClientMessage::Ack { .. } => {}
        ClientMessage::Health { placements, .. } => {
            // Bounded by the message size the server reads (64 KiB) before any of this.
            assert!(placements.len() <= text.len());
        }
    }
    let again = serde_json::to_string(&message).expect("a decoded message encodes");
    let back: ClientMessage = serde_json::from_str(&again).expect("an encoded message decodes");
    assert_eq!(back, message);
});
