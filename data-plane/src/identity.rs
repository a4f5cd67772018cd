//! This data plane's id, as the control plane records and shows it.
//!
//! The control plane accepts only ids that are Kubernetes object names
//! ([`routing_model::protocol::check_data_plane_id`]). An id given with `--id` (or `POD_NAME`)
//! is checked at startup, so a bad one fails at once with a message naming the flag instead of
//! being refused on every connect. The default, the host name, is not the operator's choice, so
//! it is turned into a valid name instead of refused: lowercased, every other character replaced
//! by `-`, trimmed to start and end with a letter or digit, and bounded.

use routing_model::protocol::{MAX_DATA_PLANE_ID_BYTES, check_data_plane_id};

/// Parses `--id` for clap: the error names what is wrong, and clap adds the flag's name.
pub fn parse_id(value: &str) -> Result<String, String> {
    check_data_plane_id(value).map(|()| value.to_owned())
}

/// The id used without `--id`: the host name, made a valid Kubernetes object name.
pub fn default_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    sanitize(host.trim()).unwrap_or_else(|| format!("data-plane-{}", std::process::id()))
}

/// `name` as a Kubernetes object name, or `None` when nothing usable is left.
pub fn sanitize(name: &str) -> Option<String> {
    let mapped: String = name
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '-' | '.') => c,
            _ => '-',
        })
        .collect();
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    // ASCII only from here on, so byte offsets are character offsets.
    let mut id = mapped.trim_matches(|c: char| !alnum(c)).to_owned();
    if id.len() > MAX_DATA_PLANE_ID_BYTES {
        id.truncate(MAX_DATA_PLANE_ID_BYTES);
        id = id.trim_end_matches(|c: char| !alnum(c)).to_owned();
    }
    check_data_plane_id(&id).ok().map(|()| id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_become_valid_ids() {
        assert_eq!(sanitize("web-7f9c").as_deref(), Some("web-7f9c"));
        assert_eq!(
            sanitize("My_Host.Example.COM").as_deref(),
            Some("my-host.example.com")
        );
        assert_eq!(sanitize("-_node 1_-").as_deref(), Some("node-1"));
        assert_eq!(sanitize("bücher").as_deref(), Some("b-cher"));
        assert_eq!(sanitize("").as_deref(), None);
        assert_eq!(sanitize("___").as_deref(), None);
        let long = format!("{}_{}", "a".repeat(252), "b".repeat(10));
        let id = sanitize(&long).unwrap();
        assert_eq!(id, "a".repeat(252));
        assert!(check_data_plane_id(&default_id()).is_ok());
    }

    #[test]
    fn a_bad_id_is_refused_with_the_reason() {
        assert!(parse_id("dp-1").is_ok());
        let err = parse_id("DP_1").unwrap_err();
        assert!(err.contains("Kubernetes object name"), "{err}");
    }
}
