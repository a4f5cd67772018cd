//! What the data plane's admin API reads from a request, parsed by the functions its handlers
//! call: the body of `POST /admin/source`, the query of `POST /admin/rollback`, and the bearer
//! token of an `Authorization` header. Raw bytes and text, and structure-aware JSON objects and
//! queries made of near-miss names and values (case, escapes, repeats, extra fields). Parsing
//! never panics; what is accepted is exactly what the request says (one `source` member with one
//! of its two values; at most one `generation` of 1 or more); every error names a field or
//! parameter that is in the request (or is the one it lacks), and stays short however long the
//! input.
#![no_main]

use arbitrary::Arbitrary;
use data_plane::admin::request::{self, MAX_BODY_BYTES, RequestError};
use data_plane::applier::PreferredSource;
use libfuzzer_sys::fuzz_target;
use routing_model::protocol::bearer_token;
use serde_json::Value;

const NAMES: &[&str] = &[
    "source",
    "Source",
    "SOURCE",
    "sourc",
    "sources",
    "\\u0073ource",
    "source\\u0000",
    "",
    " source",
    "generation",
    "gen",
    "force",
    "é",
];
const VALUES: &[&str] = &[
    "\"file\"",
    "\"control-plane\"",
    "\"File\"",
    "\"control_plane\"",
    "\"controlplane\"",
    "\"\\u0066ile\"",
    "\"file \"",
    "\"\"",
    "null",
    "true",
    "1",
    "-0",
    "1e400",
    "[]",
    "{}",
    "[\"file\"]",
    "{\"source\":\"file\"}",
    "\"é\"",
];
const PARAMS: &[&str] = &[
    "generation",
    "Generation",
    "gen",
    "generation ",
    "genera%74ion",
    "",
    "g=1",
];
const NUMBERS: &[&str] = &[
    "1",
    "2",
    "0",
    "00",
    "01",
    "-1",
    "+1",
    " 1",
    "1 ",
    "%31",
    "1.0",
    "1e3",
    "0x1",
    "18446744073709551615",
    "18446744073709551616",
    "",
    "=",
    "&",
    "%",
    "%zz",
    "é",
    "١",
];

#[derive(Debug)]
struct Tricky(String);

impl<'a> Arbitrary<'a> for Tricky {
    fn arbitrary(u: &mut arbitrary::Unstructured<'a>) -> arbitrary::Result<Self> {
        cellroute_fuzz::tricky(u).map(Tricky)
    }
}

#[derive(Debug, Arbitrary)]
enum Piece {
    Known(u8),
    Raw(Tricky),
}

impl Piece {
    fn pick(&self, known: &[&str]) -> String {
        match self {
            Piece::Known(i) => known[usize::from(*i) % known.len()].to_owned(),
            Piece::Raw(Tricky(s)) => s.clone(),
        }
    }
}

#[derive(Debug, Arbitrary)]
enum Input<'a> {
    Body(&'a [u8]),
    /// A JSON object: each member's name (quoted as is, escapes and all) and value text.
    Members(Vec<(Piece, Piece)>, bool),
    Query(&'a str),
    /// A query: `name=value` pairs joined with `&`.
    Pairs(Vec<(Piece, Piece)>),
    Authorization(&'a str),
}

fn check_error(e: &RequestError, names: &[String], required: &str) {
    let shown = e.to_string();
    assert!(
        shown.len() < 512,
        "the error grows with the input: {} bytes",
        shown.len()
    );
    if let Some(field) = e.field() {
        assert!(
            shown.contains(field),
            "the error does not show the field {field:?}: {shown}"
        );
        let named = field == required
            || names
                .iter()
                .any(|n| routing_model::protocol::truncate(n, request::QUOTED_BYTES) == field);
        assert!(
            named,
            "the error names {field:?}, which is not in the request: {shown}"
        );
    }
}

fn source(body: &[u8]) {
    let parsed = request::source_body(body);
    // An independent reading: serde_json's own map (which keeps one of repeated names).
    let object = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Some(map),
        _ => None,
    };
    match parsed {
        Ok(source) => {
            assert!(body.len() <= MAX_BODY_BYTES);
            let map = object.expect("an accepted body is a JSON object");
            assert_eq!(map.len(), 1, "accepted with other members: {map:?}");
            let want = match source {
                PreferredSource::File => "file",
                PreferredSource::ControlPlane => "control-plane",
            };
            assert_eq!(map.get("source").and_then(Value::as_str), Some(want));
        }
        Err(e) => {
            if body.len() > MAX_BODY_BYTES {
                assert!(matches!(e, RequestError::TooLarge { .. }), "{e}");
            }
            let names: Vec<String> = object.map(|m| m.keys().cloned().collect()).unwrap_or_default();
            check_error(&e, &names, "source");
        }
    }
}

fn rollback(query: &str) {
    let pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes()).into_owned().collect();
    match request::rollback_query(Some(query)) {
        Ok(None) => assert!(pairs.is_empty(), "{query:?} read as nothing"),
        Ok(Some(n)) => {
            assert!(n >= 1);
            assert_eq!(pairs.len(), 1, "{query:?}");
            assert_eq!(pairs[0].0, "generation");
            let digits = &pairs[0].1;
            assert!(
                digits.bytes().all(|b| b.is_ascii_digit()),
                "{query:?} read as {n}"
            );
            assert_eq!(
                digits.trim_start_matches('0'),
                n.to_string(),
                "{query:?} read as {n}"
            );
        }
        Err(e) => {
            let names: Vec<String> = pairs.into_iter().map(|(k, _)| k).collect();
            check_error(&e, &names, "generation");
        }
    }
}

fuzz_target!(|input: Input<'_>| {
    match input {
        Input::Body(body) => source(body),
        Input::Members(members, spaced) => {
            let sep = if spaced { " ,\n " } else { "," };
            let text: Vec<String> = members
                .iter()
                .map(|(name, value)| format!("\"{}\":{}", name.pick(NAMES), value.pick(VALUES)))
                .collect();
            source(format!("{{{}}}", text.join(sep)).as_bytes());
        }
        Input::Query(query) => rollback(query),
        Input::Pairs(pairs) => {
            let text: Vec<String> = pairs
                .iter()
                .map(|(name, value)| format!("{}={}", name.pick(PARAMS), value.pick(NUMBERS)))
                .collect();
            rollback(&text.join("&"));
        }
        Input::Authorization(value) => {
            if let Some(token) = bearer_token(value) {
                assert!(!token.is_empty());
                assert!(!token.starts_with(' ') && !token.ends_with(' '), "{value:?}");
                assert!(
                    value.get(..7).is_some_and(|s| s.eq_ignore_ascii_case("bearer ")),
                    "{value:?}"
                );
                assert!(value.trim_end_matches(' ').ends_with(token), "{value:?}");
            }
        }
    }
});
