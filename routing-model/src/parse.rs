//! Bytes to a validated config, hardened for files that come from anywhere.
//!
//! JSON is a subset of YAML 1.2, so both go through one YAML parser: duplicate keys are
//! rejected the same way in both (never last-wins), and one set of limits guards against alias
//! bombs. The checks that need no parser (size, UTF-8, binary content) run first and cheaply.

use serde_saphyr::Budget;
use serde_saphyr::options::{AliasLimits, DuplicateKeyPolicy};

use crate::manifest::{CustomerMap, RoutingConfigManifest, RoutingShardManifest};
use crate::plain_map;
use crate::validate::{ValidatedConfig, ValidationErrors, validate};

/// Default upper bound on the size of a config document: 16 MiB.
pub const DEFAULT_MAX_CONFIG_BYTES: usize = 16 * 1024 * 1024;

/// Limits applied before and during parsing.
#[derive(Debug, Clone, Copy)]
pub struct ParseLimits {
    /// Documents larger than this are rejected before any parsing.
    pub max_bytes: usize,
}

impl Default for ParseLimits {
    fn default() -> Self {
        Self {
            max_bytes: DEFAULT_MAX_CONFIG_BYTES,
        }
    }
}

/// Why a document could not be read as a RoutingConfig at all.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    /// Zero bytes, or only whitespace and comments.
    #[error("the document is empty: expected a RoutingConfig with apiVersion, kind and spec")]
    Empty,
    /// Larger than the configured limit; rejected before parsing.
    #[error(
        "the document is {size} bytes, over the limit of {limit} bytes (raise it with --max-config-bytes)"
    )]
    TooLarge {
        /// Size of the document.
        size: usize,
        /// The limit in force.
        limit: usize,
    },
    /// Not valid UTF-8.
    #[error("the document is not valid UTF-8 (first bad byte at offset {offset})")]
    NotUtf8 {
        /// Byte offset of the first invalid sequence.
        offset: usize,
    },
    /// Contains control characters that never occur in a YAML or JSON text file.
    #[error("the document looks binary: control character 0x{byte:02x} at offset {offset}")]
    Binary {
        /// The offending byte.
        byte: u8,
        /// Its byte offset.
        offset: usize,
    },
    /// The YAML/JSON parser or the field mapping rejected it; the message names the key.
    #[error("{0}")]
    Syntax(String),
}

/// Anything that stops a document from becoming a [`ValidatedConfig`].
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConfigError {
    /// The document could not be parsed.
    #[error("{0}")]
    Parse(#[from] ParseError),
    /// The document parsed but breaks one or more rules.
    #[error("{0}")]
    Invalid(#[from] ValidationErrors),
}

/// Parses and validates a document in one step.
pub fn load(bytes: &[u8], limits: ParseLimits) -> Result<ValidatedConfig, ConfigError> {
    let manifest = parse_manifest(bytes, limits)?;
    Ok(validate(manifest)?)
}

/// Parses a document into a manifest without validating its content.
pub fn parse_manifest(bytes: &[u8], limits: ParseLimits) -> Result<RoutingConfigManifest, ParseError> {
    parse_document(bytes, limits)
}

/// [`parse_manifest`] with every byte through the YAML parser, never the plain-block scan: the
/// oracle the fuzz target `manifest_bytes` holds the scan to.
#[doc(hidden)]
pub fn parse_manifest_by_parser(
    bytes: &[u8],
    limits: ParseLimits,
) -> Result<RoutingConfigManifest, ParseError> {
    parse_yaml(checked_text(bytes, limits)?, limits)
}

/// Parses a RoutingShard document (what `control-plane split` writes) with the same hardening,
/// without validating its content.
pub fn parse_shard(bytes: &[u8], limits: ParseLimits) -> Result<RoutingShardManifest, ParseError> {
    parse_document(bytes, limits)
}

/// The document as text, after the checks that need no parser.
fn checked_text(bytes: &[u8], limits: ParseLimits) -> Result<&str, ParseError> {
    if bytes.len() > limits.max_bytes {
        return Err(ParseError::TooLarge {
            size: bytes.len(),
            limit: limits.max_bytes,
        });
    }
    let text = std::str::from_utf8(bytes).map_err(|e| ParseError::NotUtf8 {
        offset: e.valid_up_to(),
    })?;
    if let Some((offset, byte)) = text
        .bytes()
        .enumerate()
        .find(|(_, b)| b.is_ascii_control() && !matches!(b, b'\t' | b'\n' | b'\r'))
    {
        return Err(ParseError::Binary { byte, offset });
    }
    if is_blank(text) {
        return Err(ParseError::Empty);
    }
    Ok(text)
}

fn parse_document<T: serde::de::DeserializeOwned + Customers>(
    bytes: &[u8],
    limits: ParseLimits,
) -> Result<T, ParseError> {
    let text = checked_text(bytes, limits)?;
    if let Some(lifted) = plain_map::lift(text)
        && let Ok(mut document) = parse_yaml::<T>(&lifted.rest, limits)
        && lifted.restore(document.customers())
    {
        return Ok(document);
    }
    parse_yaml(text, limits)
}

/// A document with a customer map, which [`plain_map`] may read for the parser.
trait Customers {
    fn customers(&mut self) -> &mut CustomerMap;
}

impl Customers for RoutingConfigManifest {
    fn customers(&mut self) -> &mut CustomerMap {
        &mut self.spec.customer_to_placement
    }
}

impl Customers for RoutingShardManifest {
    fn customers(&mut self) -> &mut CustomerMap {
        &mut self.spec.customer_to_placement
    }
}

/// `text` through the YAML parser, with the limits.
fn parse_yaml<T: serde::de::DeserializeOwned>(text: &str, limits: ParseLimits) -> Result<T, ParseError> {
    let options = serde_saphyr::options! {
        duplicate_keys: DuplicateKeyPolicy::Error,
        alias_limits: alias_limits(),
        budget: Some(budget(limits.max_bytes)),
        with_snippet: false,
    };
    serde_saphyr::from_str_with_options(text, options)
        .map_err(|e| ParseError::Syntax(one_line(&e.to_string())))
}

/// The parser's budget, grown with the input the limits allow. Its defaults (250,000 nodes, a
/// million events) refuse a file of more than about 125,000 customers, far below what validation
/// accepts; a document's nodes and events are bounded by its bytes anyway (a customer is two
/// scalars in at least 5 bytes), and aliases, the one way to make more of them, stay bounded by
/// [`alias_limits`].
fn budget(max_bytes: usize) -> Budget {
    let mut budget = Budget::default();
    budget.max_nodes = budget.max_nodes.max(max_bytes / 2);
    budget.max_events = budget.max_events.max(max_bytes);
    budget.max_total_scalar_bytes = budget.max_total_scalar_bytes.max(max_bytes);
    budget.max_reader_input_bytes = budget.max_reader_input_bytes.map(|b| b.max(max_bytes));
    budget
}

/// Tight alias limits: a routing file has no reason to expand aliases much, and an alias bomb
/// must fail fast instead of allocating gigabytes.
fn alias_limits() -> AliasLimits {
    let mut limits = AliasLimits::default();
    limits.max_total_replayed_events = 10_000;
    limits.max_replay_stack_depth = 16;
    limits.max_alias_expansions_per_anchor = 1_000;
    limits
}

/// True when the text has no content besides whitespace, comments and document markers.
fn is_blank(text: &str) -> bool {
    text.lines().all(|line| {
        let line = line.trim();
        line.is_empty() || line.starts_with('#') || line == "---" || line == "..."
    })
}

/// Joins a multi-line parser message into one line, for logs and JSON bodies.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "apiVersion: cellroute.dev/v1alpha1\nkind: RoutingConfig\nmetadata: {name: r}\nspec:\n  defaultPlacement: a\n  customerToPlacement: {acme: a}\n  placementToEndpoint: {a: 'http://127.0.0.1:1'}\n";

    fn parse(text: &str) -> Result<RoutingConfigManifest, ParseError> {
        parse_manifest(text.as_bytes(), ParseLimits::default())
    }

    /// Found by the convergence benchmark: the parser's default budget stopped a table at about
    /// 125,000 customers (250,000 nodes), whatever the byte limit allowed.
    #[test]
    fn a_file_of_more_customers_than_the_parsers_default_budget_parses() {
        let mut text = String::from(
            "apiVersion: cellroute.dev/v1alpha1\nkind: RoutingConfig\nmetadata: {name: r}\nspec:\n  defaultPlacement: a\n  placementToEndpoint: {a: 'http://127.0.0.1:1'}\n  customerToPlacement:\n",
        );
        let customers = 200_000;
        for i in 0..customers {
            text.push_str(&format!("    c{i}: a\n"));
        }
        let manifest = parse(&text).expect("a 200,000-customer file parses");
        assert_eq!(manifest.spec.customer_to_placement.len(), customers);
    }

    /// Whatever the document, reading its customer block without the parser gives what the
    /// parser gives: the same manifest, or an error where the parser has one. The documents mix
    /// the plain layout with what it must not read: words YAML resolves to booleans or null,
    /// quotes, comments, other indents, blank lines, flow style around the block, a block scalar
    /// holding the key, a duplicate.
    #[test]
    fn the_plain_block_reads_as_the_parser_reads_it() {
        use proptest::prelude::*;
        use proptest::test_runner::{Config, TestRunner};
        let plain = prop::sample::select(vec!["a", "b", "acme", "B2", "x.y", "x-y", "x_y", "a", "b"]);
        let odd = prop::sample::select(vec![
            "yes", "No", "null", "True", "ON", "y", "n", "off", "1x", "x:y", "'q'", "\"d\"", "x #c", "~",
            "c\t", "\u{e9}",
        ]);
        let word = prop_oneof![12 => plain, 1 => odd];
        let line = (
            word.clone(),
            word,
            prop::sample::select(vec![4usize, 4, 4, 4, 4, 4, 4, 4, 3, 6]),
            0..40u8,
        );
        let layout = prop::sample::select(vec![
            "  customerToPlacement:\n",
            "  customerToPlacement:\n",
            "  customerToPlacement:  \n",
            "  customerToPlacement: # c\n",
            "  customerToPlacement: !!map\n",
        ]);
        let frame = prop::sample::select(vec![0u8, 0, 0, 1, 2, 3, 4]);
        let mut runner = TestRunner::new(Config::with_cases(4_000));
        let lifted = std::cell::Cell::new(0);
        runner
            .run(
                &(prop::collection::vec(line, 0..6), layout, frame),
                |(lines, layout, frame)| {
                    let mut block = String::from(layout);
                    for (key, value, indent, odd) in &lines {
                        match odd {
                            0 => block.push('\n'),
                            1 => block.push_str("    # note\n"),
                            _ => {}
                        }
                        block.push_str(&format!("{}{key}: {value}\n", " ".repeat(*indent)));
                    }
                    let head = "apiVersion: cellroute.dev/v1alpha1\nkind: RoutingConfig\n";
                    let rules = "  defaultPlacement: a\n  placementToEndpoint: {a: 'http://127.0.0.1:1', b: 'http://127.0.0.1:2'}\n";
                    let text = match frame {
                        0 => format!("{head}metadata: {{name: r}}\nspec:\n{rules}{block}"),
                        1 => format!("{head}spec:\n{block}{rules}"),
                        2 => format!("{head}metadata:\n  name: |\n    x\n{block}spec:\n{rules}  customerToPlacement: {{acme: a}}\n"),
                        3 => format!("{head}spec: {{defaultPlacement: a,\n  placementToEndpoint: {{a: 'http://127.0.0.1:1'}},\n{block}}}\n"),
                        _ => format!("{head}spec:\n{rules}{block}{block}"),
                    };
                    let limits = ParseLimits::default();
                    let plain = parse_document::<RoutingConfigManifest>(text.as_bytes(), limits);
                    let parser = parse_yaml::<RoutingConfigManifest>(&text, limits);
                    if plain.is_ok() && plain_map::lift(&text).is_some() {
                        lifted.set(lifted.get() + 1);
                    }
                    // Debug shows every field of either (the manifest has no `PartialEq`).
                    prop_assert_eq!(format!("{plain:?}"), format!("{parser:?}"), "{}", text);
                    Ok(())
                },
            )
            .unwrap();
        let lifted = lifted.get();
        assert!(
            lifted > 100,
            "only {lifted} documents were read without the parser"
        );
    }

    #[test]
    fn valid_yaml_and_json_parse_alike() {
        let yaml = parse(VALID).expect("yaml");
        let json = parse(r#"{"apiVersion":"cellroute.dev/v1alpha1","kind":"RoutingConfig","metadata":{"name":"r"},"spec":{"defaultPlacement":"a","customerToPlacement":{"acme":"a"},"placementToEndpoint":{"a":"http://127.0.0.1:1"}}}"#).expect("json");
        assert_eq!(yaml.spec, json.spec);
    }

    #[test]
    fn duplicate_keys_are_rejected_naming_the_key() {
        let text = VALID.replace("{acme: a}", "{acme: a, acme: b}");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("acme"), "{err}");
        let json = r#"{"apiVersion":"cellroute.dev/v1alpha1","kind":"RoutingConfig","spec":{"defaultPlacement":"a","placementToEndpoint":{"a":"http://h","a":"http://h2"}}}"#;
        let err = parse(json).unwrap_err().to_string();
        assert!(err.to_lowercase().contains("duplicate"), "{err}");
    }

    #[test]
    fn unknown_fields_are_rejected_naming_the_field() {
        let text = VALID.replace("defaultPlacement", "defaultPlacment");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("defaultPlacment"), "{err}");
    }

    #[test]
    fn size_limit_applies_before_parsing() {
        let err = parse_manifest(b"{}", ParseLimits { max_bytes: 1 }).unwrap_err();
        assert_eq!(err, ParseError::TooLarge { size: 2, limit: 1 });
    }

    #[test]
    fn empty_binary_and_non_utf8_are_named() {
        assert!(matches!(parse("  \n# nothing\n"), Err(ParseError::Empty)));
        assert!(matches!(
            parse("a: \u{0}"),
            Err(ParseError::Binary { byte: 0, offset: 3 })
        ));
        assert!(matches!(
            parse_manifest(b"spec: \xff\xfe", ParseLimits::default()),
            Err(ParseError::NotUtf8 { offset: 6 })
        ));
    }

    #[test]
    fn alias_bombs_are_stopped() {
        // Metadata ignores unknown keys, so the bomb is fully walked rather than rejected early.
        let mut text = String::from(
            "apiVersion: cellroute.dev/v1alpha1\nkind: RoutingConfig\nmetadata:\n  a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n",
        );
        for i in 1..12 {
            let p = i - 1;
            text.push_str(&format!(
                "  a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        text.push_str("spec: {defaultPlacement: a, placementToEndpoint: {a: 'http://h'}}\n");
        let err = parse(&text).unwrap_err();
        assert!(matches!(err, ParseError::Syntax(_)), "{err}");
    }
}
