//! What the admin POST endpoints read from a request, parsed by pure functions: the handlers
//! call them (after the token check), and so does the `admin_bodies` fuzz target, so there is
//! one parser per input.
//!
//! | endpoint | reads |
//! |---|---|
//! | `POST /admin/source` | the body `{"source":"file"}` or `{"source":"control-plane"}` ([`source_body`]) |
//! | `POST /admin/rollback` | the query `generation=N`, optional ([`rollback_query`]) |
//! | `POST /admin/reload` | nothing: its body and query are not read |
//!
//! Errors name the field (or parameter) that is wrong, and quote at most [`QUOTED_BYTES`] of
//! what was sent, whatever its size. Unknown fields and repeated ones are refused rather than
//! ignored: a request that says more than the endpoint understands is not guessed at.

use std::fmt;

use routing_model::protocol::truncate;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::Value;

use crate::applier::PreferredSource;

/// Largest body an admin endpoint reads; the one it takes is a few bytes.
pub const MAX_BODY_BYTES: usize = 4096;

/// How much of a value or name an error quotes.
pub const QUOTED_BYTES: usize = 64;

const SOURCE_EXPECTED: &str = r#"{"source":"file"} or {"source":"control-plane"}"#;
const SOURCE_VALUES: &str = r#""file" or "control-plane""#;
const ROLLBACK_EXPECTED: &str = "`generation=N`, or nothing";

/// Where a name came from, for the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// A member of the JSON body.
    Field,
    /// A query parameter.
    Parameter,
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Place::Field => "field",
            Place::Parameter => "query parameter",
        })
    }
}

/// Why an admin request's body or query is refused (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The body is larger than any this endpoint takes.
    #[error("the body is {bytes} bytes, over the {limit} this endpoint reads; expected {expected}")]
    TooLarge {
        /// Its size.
        bytes: usize,
        /// [`MAX_BODY_BYTES`].
        limit: usize,
        /// What the endpoint takes.
        expected: &'static str,
    },
    /// The body does not parse as JSON.
    #[error("the body is not JSON ({why}); expected {expected}")]
    NotJson {
        /// The parser's complaint, cut to [`QUOTED_BYTES`] and a little.
        why: String,
        /// What the endpoint takes.
        expected: &'static str,
    },
    /// The body is JSON but not an object.
    #[error("the body must be a JSON object: {expected}")]
    NotAnObject {
        /// What the endpoint takes.
        expected: &'static str,
    },
    /// A field or parameter this endpoint does not take.
    #[error("unknown {place} `{name}`; expected {expected}")]
    Unknown {
        /// Field or parameter.
        place: Place,
        /// Its name, cut to [`QUOTED_BYTES`].
        name: String,
        /// What the endpoint takes.
        expected: &'static str,
    },
    /// A required field is absent.
    #[error("`{field}` is missing; expected {expected}")]
    Missing {
        /// Its name.
        field: &'static str,
        /// What the endpoint takes.
        expected: &'static str,
    },
    /// A field or parameter given more than once.
    #[error("`{field}` is given more than once")]
    Repeated {
        /// Its name.
        field: &'static str,
    },
    /// A field or parameter with a value it cannot take.
    #[error("`{field}` must be {expected}, not {got}")]
    Invalid {
        /// Its name.
        field: &'static str,
        /// The values it takes.
        expected: &'static str,
        /// What was sent, cut to [`QUOTED_BYTES`].
        got: String,
    },
}

impl RequestError {
    /// The field or parameter at fault, when one is: what a client must change.
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::Unknown { name, .. } => Some(name),
            Self::Missing { field, .. } | Self::Repeated { field } | Self::Invalid { field, .. } => {
                Some(field)
            }
            Self::TooLarge { .. } | Self::NotJson { .. } | Self::NotAnObject { .. } => None,
        }
    }
}

/// Parses the body of `POST /admin/source`.
pub fn source_body(body: &[u8]) -> Result<PreferredSource, RequestError> {
    let Members(members) = json_object(body, SOURCE_EXPECTED)?;
    let mut source = None;
    for (name, value) in members {
        if name != "source" {
            return Err(unknown(Place::Field, &name, SOURCE_EXPECTED));
        }
        if source.is_some() {
            return Err(RequestError::Repeated { field: "source" });
        }
        source = Some(match value.as_str() {
            Some("file") => PreferredSource::File,
            Some("control-plane") => PreferredSource::ControlPlane,
            _ => {
                return Err(RequestError::Invalid {
                    field: "source",
                    expected: SOURCE_VALUES,
                    got: quote(&value.to_string()),
                });
            }
        });
    }
    source.ok_or(RequestError::Missing {
        field: "source",
        expected: SOURCE_EXPECTED,
    })
}

/// Parses the query of `POST /admin/rollback` (the part after `?`, if any): the generation to
/// roll back to, or `None` for the one before the active one.
pub fn rollback_query(query: Option<&str>) -> Result<Option<u64>, RequestError> {
    let mut generation = None;
    for (name, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        if name != "generation" {
            return Err(unknown(Place::Parameter, &name, ROLLBACK_EXPECTED));
        }
        if generation.is_some() {
            return Err(RequestError::Repeated { field: "generation" });
        }
        let parsed = value
            .bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| value.parse::<u64>().ok())
            .flatten()
            .filter(|n| *n > 0);
        let Some(n) = parsed else {
            return Err(RequestError::Invalid {
                field: "generation",
                expected: "a generation number (1 or more) from GET /admin/history",
                got: quote(&format!("`{value}`")),
            });
        };
        generation = Some(n);
    }
    Ok(generation)
}

fn unknown(place: Place, name: &str, expected: &'static str) -> RequestError {
    RequestError::Unknown {
        place,
        name: truncate(name, QUOTED_BYTES),
        expected,
    }
}

fn quote(text: &str) -> String {
    truncate(text, QUOTED_BYTES)
}

/// `body` as the members of one JSON object.
fn json_object(body: &[u8], expected: &'static str) -> Result<Members, RequestError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(RequestError::TooLarge {
            bytes: body.len(),
            limit: MAX_BODY_BYTES,
            expected,
        });
    }
    serde_json::from_slice(body).map_err(|e| match e.classify() {
        // Valid JSON of another shape (members' values are any JSON).
        serde_json::error::Category::Data => RequestError::NotAnObject { expected },
        _ => RequestError::NotJson {
            why: quote(&e.to_string()),
            expected,
        },
    })
}

/// A JSON object's members in the order sent, repeats kept (a map would keep only one, and
/// `{"source":"file","source":"control-plane"}` must not mean whichever came last).
struct Members(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Members {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MembersVisitor;
        impl<'de> Visitor<'de> for MembersVisitor {
            type Value = Members;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry()? {
                    members.push(member);
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(MembersVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_bodies() {
        assert_eq!(source_body(br#"{"source":"file"}"#), Ok(PreferredSource::File));
        assert_eq!(
            source_body(b" {\n \"source\" : \"control-plane\" } "),
            Ok(PreferredSource::ControlPlane)
        );
        let refused: [(&[u8], Option<&str>, &str); 9] = [
            (b"", None, "not JSON"),
            (b"{", None, "not JSON"),
            (br#""file""#, None, "must be a JSON object"),
            (b"{}", Some("source"), "`source` is missing"),
            (br#"{"source":"File"}"#, Some("source"), r#"not "File""#),
            (br#"{"source":1}"#, Some("source"), "not 1"),
            (
                br#"{"source":"file","source":"file"}"#,
                Some("source"),
                "more than once",
            ),
            (
                br#"{"source":"file","force":true}"#,
                Some("force"),
                "unknown field `force`",
            ),
            (br#"{"sorce":"file"}"#, Some("sorce"), "unknown field `sorce`"),
        ];
        for (body, field, text) in refused {
            let err = source_body(body).unwrap_err();
            assert_eq!(err.field(), field, "{err}");
            assert!(
                err.to_string().contains(text),
                "{:?}: {err}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn rollback_queries() {
        assert_eq!(rollback_query(None), Ok(None));
        assert_eq!(rollback_query(Some("")), Ok(None));
        assert_eq!(rollback_query(Some("generation=3")), Ok(Some(3)));
        assert_eq!(rollback_query(Some("&generation=%33&")), Ok(Some(3)));
        for (query, field) in [
            ("generation=", "generation"),
            ("generation", "generation"),
            ("generation=0", "generation"),
            ("generation=-1", "generation"),
            ("generation=+1", "generation"),
            ("generation=1.0", "generation"),
            ("generation=99999999999999999999", "generation"),
            ("generation=1&generation=2", "generation"),
            ("gen=1", "gen"),
        ] {
            let err = rollback_query(Some(query)).unwrap_err();
            assert_eq!(err.field(), Some(field), "{query}: {err}");
            assert!(err.to_string().contains(field), "{query}: {err}");
        }
    }

    #[test]
    fn errors_stay_short_whatever_was_sent() {
        let long = "é".repeat(1_000);
        let body = format!(r#"{{"source":"{long}"}}"#);
        let errors = [
            source_body(body.as_bytes()).unwrap_err(),
            source_body(format!(r#"{{"{long}":1}}"#).as_bytes()).unwrap_err(),
            source_body(&vec![b' '; MAX_BODY_BYTES + 1]).unwrap_err(),
            rollback_query(Some(&format!("generation={long}"))).unwrap_err(),
            rollback_query(Some(&format!("{long}=1"))).unwrap_err(),
        ];
        for err in errors {
            assert!(err.to_string().len() < 256, "{err}");
        }
    }
}
