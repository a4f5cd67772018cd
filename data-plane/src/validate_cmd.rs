//! `data-plane validate FILE [--against FILE2]`: a dry run of a reload.
//!
//! It runs exactly the checks a reload runs, with the same limits: the file is read with the
//! same size check, parsed and validated by the shared code, and compiled into a routing table
//! by [`crate::compile`] (this data plane's `--max-customers`, every upstream built), so
//! "validate passes" means "a reload would apply".

use std::path::Path;
use std::process::ExitCode;

use routing_model::{ConfigDiff, ParseLimits, ValidatedConfig};

use crate::cli::ValidateArgs;
use crate::compile::{self, Limits};
use crate::metrics::Metrics;

/// Prints every error (exit 1), or a summary and the diff against `--against` (exit 0).
pub fn run(args: &ValidateArgs) -> ExitCode {
    let limits = Limits {
        parse: ParseLimits {
            max_bytes: args.max_config_bytes,
        },
        max_customers: args.max_customers,
    };
    let Some(new) = load(&args.file, &limits) else {
        return ExitCode::FAILURE;
    };
    println!(
        "{}: valid ({} customers, {} placements, {})",
        args.file.display(),
        new.spec().customer_to_placement.len(),
        new.spec().placement_to_endpoint.len(),
        new.hash()
    );
    for w in new.warnings() {
        println!("  warning: {w}");
    }
    if let Some(against) = &args.against {
        let Some(old) = load(against, &limits) else {
            return ExitCode::FAILURE;
        };
        print_diff(&ConfigDiff::between(old.spec(), new.spec()), against);
    }
    ExitCode::SUCCESS
}

fn load(path: &Path, limits: &Limits) -> Option<ValidatedConfig> {
    let bytes = match config_watch::read_limited(path, limits.parse.max_bytes) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("{e}");
            return None;
        }
    };
    let config = match routing_model::load(&bytes, limits.parse) {
        Ok(c) => c,
        Err(routing_model::ConfigError::Invalid(errors)) => {
            eprintln!("{}: {} error(s):", path.display(), errors.0.len());
            for e in &errors.0 {
                eprintln!("  {e}");
            }
            return None;
        }
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            return None;
        }
    };
    // The same compile step a reload runs; its metrics are thrown away.
    if let Err(e) = compile::compile(&config, limits, &Metrics::new()) {
        eprintln!("{}: {e}", path.display());
        return None;
    }
    Some(config)
}

fn print_diff(d: &ConfigDiff, against: &Path) {
    if d.is_empty() {
        println!("no routing change against {}", against.display());
        return;
    }
    println!("changes against {}:", against.display());
    for (c, p) in &d.customers_added {
        println!("  + customer {c} -> {p}");
    }
    for (c, p) in &d.customers_removed {
        println!("  - customer {c} (was {p})");
    }
    for m in &d.customers_moved {
        println!("  ~ customer {}: {} -> {}", m.customer, m.from, m.to);
    }
    for p in &d.placements_added {
        println!("  + placement {p}");
    }
    for p in &d.placements_removed {
        println!("  - placement {p}");
    }
    for e in &d.endpoints_changed {
        println!("  ~ placement {} endpoint: {} -> {}", e.placement, e.from, e.to);
    }
    if let Some(c) = &d.default_placement {
        println!("  ~ defaultPlacement: {} -> {}", c.from, c.to);
    }
    if let Some(c) = &d.customer_header {
        println!("  ~ customerHeader: {} -> {}", c.from, c.to);
    }
}
