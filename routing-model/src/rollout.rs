//! How a new routing table reaches the fleet: the `spec.rollout` contract, its rules, and the
//! cohort each data plane belongs to.
//!
//! A rollout is about delivery, not routing: it is validated with the rest of the spec (the same
//! rules in every binary), but it is no part of the table. The content hash, the snapshot sent to
//! data planes and the data plane's own checks never see it, so editing only the rollout never
//! makes a new version.
//!
//! Cohorts come from a stable hash of the data plane's id, so every control-plane replica puts
//! a data plane in the same cohort, a reconnecting data plane lands where it was, and a data
//! plane in the 10 % cohort is also in the 50 % one: a step only ever adds data planes.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::validate::ValidationError;

/// Most steps a rollout may have.
pub const MAX_STEPS: usize = 20;
/// Longest pause of one step.
pub const MAX_PAUSE: Duration = Duration::from_secs(24 * 3600);
/// A pause: one or more number-and-unit pairs, as Kubernetes and Argo Rollouts write durations
/// (`30s`, `5m`, `1h30m`, `500ms`).
pub const PAUSE_PATTERN: &str = r"^([0-9]+(ms|s|m|h))+$";
/// Cohorts are in units of 1/100 %, so a step's percent always maps to whole buckets.
pub const COHORT_BUCKETS: u32 = 10_000;

/// Whether a new table goes to every data plane at once or in steps, and when a step halts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RolloutSpec {
    /// `Staged` (the default): each new table reaches the share of data planes of each step in
    /// turn, and halts and reverts itself when the analysis finds it bad. `Immediate`: every
    /// data plane at once, as without `rollout`; the break-glass for an emergency change (the
    /// steps stay, for the next change).
    #[serde(default)]
    pub strategy: RolloutStrategy,
    /// The steps, in order: the share of data planes on the new table, then how long it bakes
    /// there. After the last step every data plane gets it. Percents must rise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub steps: Vec<RolloutStep>,
    /// When a step halts the rollout instead of advancing.
    #[serde(default)]
    pub analysis: RolloutAnalysis,
}

impl RolloutSpec {
    /// Whether a new table goes out in steps (`Staged` with at least one step).
    pub fn is_staged(&self) -> bool {
        self.strategy == RolloutStrategy::Staged && !self.steps.is_empty()
    }
}

/// How a new table is rolled out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub enum RolloutStrategy {
    /// In steps, with automatic halt.
    #[default]
    Staged,
    /// Everywhere at once.
    Immediate,
}

/// One step of a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RolloutStep {
    /// Share of data planes on the new table during this step, 1 to 100.
    #[schemars(range(min = 1, max = 100))]
    pub percent: i32,
    /// How long the step bakes before it is judged and the next begins, such as `30s`, `5m`
    /// or `1h30m` (at most 24h). Absent or `0s`: judged as soon as it has `minRequests`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32), regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub pause: Option<String>,
}

impl RolloutStep {
    /// The pause, which validation has checked (zero when absent).
    pub fn pause(&self) -> Duration {
        self.pause
            .as_deref()
            .and_then(|p| parse_pause(p).ok())
            .unwrap_or_default()
    }
}

/// When a step halts. The defaults halt on any NACK and on 2 % errors.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RolloutAnalysis {
    /// Data planes that may refuse (NACK) the new table before the rollout halts.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub max_nacks: i64,
    /// Highest share of 5xx answers (the proxy's own and the cells') among the requests of one
    /// placement on the new table, 0 to 1. A step halts when a placement is above it and above
    /// what the data planes still on the previous table see for that placement.
    #[serde(default = "default_max_error_ratio")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub max_error_ratio: f64,
    /// Requests the data planes on the new table must have served before a step is judged;
    /// below this a step waits rather than judges. `0` judges a step on its pause alone.
    #[serde(default = "default_min_requests")]
    #[schemars(range(min = 0))]
    pub min_requests: i64,
}

// Validation refuses a ratio that is not a number, so equality is reflexive for every analysis
// a table can hold.
impl Eq for RolloutAnalysis {}

impl Default for RolloutAnalysis {
    fn default() -> Self {
        Self {
            max_nacks: 0,
            max_error_ratio: default_max_error_ratio(),
            min_requests: default_min_requests(),
        }
    }
}

fn default_max_error_ratio() -> f64 {
    0.02
}

fn default_min_requests() -> i64 {
    100
}

/// A pause in [`PAUSE_PATTERN`]'s form.
pub fn parse_pause(text: &str) -> Result<Duration, String> {
    let bad = || format!("`{text}` is not a duration such as `30s`, `5m` or `1h30m`");
    if text.is_empty() {
        return Err(bad());
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (number, after) = rest.split_at(digits);
        let unit_len = after.bytes().take_while(u8::is_ascii_lowercase).count();
        let (unit, after) = after.split_at(unit_len);
        let unit_ms: u64 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            _ => return Err(bad()),
        };
        let n: u64 = number.parse().map_err(|_| bad())?;
        let ms = n.checked_mul(unit_ms).ok_or_else(bad)?;
        total = total.checked_add(Duration::from_millis(ms)).ok_or_else(bad)?;
        rest = after;
    }
    if total > MAX_PAUSE {
        return Err(format!("`{text}` is longer than the longest pause, 24h"));
    }
    Ok(total)
}

/// Every rule `spec.rollout` breaks.
pub(crate) fn check(rollout: &RolloutSpec, errors: &mut Vec<ValidationError>) {
    let err = |field: String, message: String| ValidationError { field, message };
    if rollout.strategy == RolloutStrategy::Staged && rollout.steps.is_empty() {
        errors.push(err(
            "spec.rollout.steps".to_owned(),
            "a Staged rollout needs at least one step (or set spec.rollout.strategy: Immediate)".to_owned(),
        ));
    }
    if rollout.steps.len() > MAX_STEPS {
        errors.push(err(
            "spec.rollout.steps".to_owned(),
            format!("has {} steps, over the limit of {MAX_STEPS}", rollout.steps.len()),
        ));
    }
    let mut before = 0;
    for (i, step) in rollout.steps.iter().enumerate() {
        let field = format!("spec.rollout.steps[{i}]");
        if !(1..=100).contains(&step.percent) {
            errors.push(err(
                format!("{field}.percent"),
                format!("must be 1 to 100, found {}", step.percent),
            ));
        } else if step.percent <= before {
            errors.push(err(
                format!("{field}.percent"),
                format!(
                    "must be above the step before it ({before} %), found {}: each step adds data planes",
                    step.percent
                ),
            ));
        }
        before = before.max(step.percent);
        if let Some(pause) = &step.pause
            && let Err(why) = parse_pause(pause)
        {
            errors.push(err(format!("{field}.pause"), why));
        }
    }
    let analysis = &rollout.analysis;
    if analysis.max_nacks < 0 {
        errors.push(err(
            "spec.rollout.analysis.maxNacks".to_owned(),
            format!("must be 0 or more, found {}", analysis.max_nacks),
        ));
    }
    if !(0.0..=1.0).contains(&analysis.max_error_ratio) {
        errors.push(err(
            "spec.rollout.analysis.maxErrorRatio".to_owned(),
            format!("must be 0 to 1, found {}", analysis.max_error_ratio),
        ));
    }
    if analysis.min_requests < 0 {
        errors.push(err(
            "spec.rollout.analysis.minRequests".to_owned(),
            format!("must be 0 or more, found {}", analysis.min_requests),
        ));
    }
}

/// The cohort bucket of the data plane `id` (its pod name), in `0..COHORT_BUCKETS`.
pub fn cohort(id: &str) -> u32 {
    let digest = Sha256::new()
        .chain_update(b"cellroute.dev/cohort/v1\n")
        .chain_update(id.as_bytes())
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(first) % u64::from(COHORT_BUCKETS)) as u32
}

/// Whether a data plane in `bucket` is among the first `percent` % of the fleet.
pub fn in_share(bucket: u32, percent: i32) -> bool {
    let percent = u32::try_from(percent.clamp(0, 100)).unwrap_or(0);
    bucket < percent * (COHORT_BUCKETS / 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn staged(steps: &[(i32, Option<&str>)]) -> RolloutSpec {
        RolloutSpec {
            steps: steps
                .iter()
                .map(|(percent, pause)| RolloutStep {
                    percent: *percent,
                    pause: pause.map(str::to_owned),
                })
                .collect(),
            ..RolloutSpec::default()
        }
    }

    fn errors(rollout: &RolloutSpec) -> Vec<String> {
        let mut errors = Vec::new();
        check(rollout, &mut errors);
        errors.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn pauses_read_as_kubernetes_writes_durations() {
        assert_eq!(parse_pause("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_pause("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_pause("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_pause("0s"), Ok(Duration::ZERO));
        for bad in [
            "",
            "30",
            "s",
            "1d",
            "1.5s",
            "-1s",
            "30 s",
            "99999999999999999999h",
        ] {
            assert!(parse_pause(bad).is_err(), "{bad}");
        }
        assert!(parse_pause("25h").unwrap_err().contains("24h"));
    }

    /// The CRD's pattern and [`parse_pause`] agree on the form (the range is validation's).
    #[test]
    fn pause_pattern_agrees_with_the_parser() {
        let pattern = regex::Regex::new(PAUSE_PATTERN).unwrap();
        for text in [
            "30s", "1h30m", "500ms", "0s", "", "30", "1d", "1.5s", "30 s", "5M",
        ] {
            assert_eq!(pattern.is_match(text), parse_pause(text).is_ok(), "{text}");
        }
    }

    #[test]
    fn a_good_rollout_passes_and_each_broken_rule_names_its_field() {
        assert!(errors(&staged(&[(10, Some("30s")), (50, Some("30s"))])).is_empty());
        assert!(errors(&staged(&[(100, None)])).is_empty());
        let found = errors(&staged(&[(10, Some("30s")), (10, Some("soon")), (0, None)]));
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(
            found[0].starts_with("spec.rollout.steps[1].percent: must be above"),
            "{found:?}"
        );
        assert!(
            found[1].starts_with("spec.rollout.steps[1].pause: `soon`"),
            "{found:?}"
        );
        assert!(
            found[2].starts_with("spec.rollout.steps[2].percent: must be 1 to 100"),
            "{found:?}"
        );
        let empty = errors(&RolloutSpec::default());
        assert!(empty[0].contains("at least one step"), "{empty:?}");
        let immediate = RolloutSpec {
            strategy: RolloutStrategy::Immediate,
            ..RolloutSpec::default()
        };
        assert!(errors(&immediate).is_empty());
        assert!(!immediate.is_staged());
        let mut bad = staged(&[(10, None)]);
        bad.analysis = RolloutAnalysis {
            max_nacks: -1,
            max_error_ratio: f64::NAN,
            min_requests: -5,
        };
        let found = errors(&bad);
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(
            found[1].starts_with("spec.rollout.analysis.maxErrorRatio"),
            "{found:?}"
        );
    }

    #[test]
    fn cohorts_are_stable_spread_and_nested() {
        assert_eq!(cohort("dp-0"), cohort("dp-0"));
        let buckets: Vec<u32> = (0..10_000).map(|i| cohort(&format!("data-plane-{i}"))).collect();
        assert!(buckets.iter().all(|b| *b < COHORT_BUCKETS));
        let share = |percent| buckets.iter().filter(|b| in_share(**b, percent)).count();
        // A 10 % step holds about 10 % of the fleet, and everyone of it is in the 50 % step.
        assert!((800..1200).contains(&share(10)), "{}", share(10));
        assert!((4600..5400).contains(&share(50)), "{}", share(50));
        assert!(buckets.iter().all(|b| !in_share(*b, 10) || in_share(*b, 50)));
        assert_eq!(share(100), buckets.len());
        assert_eq!(share(0), 0);
    }
}
