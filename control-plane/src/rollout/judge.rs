//! One look at a running rollout: what to do next.
//!
//! The order of the checks is the order of what matters: the user's abort; then anything that
//! says the new table is bad (NACKs over `maxNacks`), which halts whatever the step's pause
//! says; then the user's promote and pause; and only then the step's own progress: every data
//! plane of the share has applied the new table, the pause has passed, and the step has seen
//! enough traffic to be judged.

use std::time::{Duration, SystemTime};

use routing_model::crd::{RolloutPhase, RolloutStatus};
use routing_model::rollout::RolloutSpec;

use super::observe::Observed;

/// How long a rollout waits before looking again when nothing it waits for has a time.
pub const RECHECK: Duration = Duration::from_millis(500);

/// What the user asked for, from the RoutingConfig's annotations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Controls {
    /// Hold at the current step.
    pub paused: bool,
    /// Skip the remaining steps of this rollout.
    pub promote: bool,
    /// Stop this rollout and revert.
    pub abort: bool,
}

/// The decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Nothing changes; look again after `recheck`. `message` says what the step waits for.
    Wait {
        /// For `status.rollout.message`.
        message: String,
        /// When to look again.
        recheck: Duration,
    },
    /// Begin the step of this index (0-based) of the spec's steps.
    Step(usize),
    /// Give the new table to every data plane.
    Complete {
        /// Why: the last step passed, or the user promoted.
        message: String,
    },
    /// The analysis found the new table bad: revert.
    Halt {
        /// Names the data plane or placement and the figures.
        reason: String,
    },
    /// The user aborted: revert.
    Abort {
        /// For the status.
        reason: String,
    },
    /// The user paused.
    Pause,
    /// The user resumed: the step begins again.
    Resume,
}

/// The decision for `status`, a rollout of `spec`, given what the data planes report and what
/// the user asked for, at `now`.
pub fn judge(
    spec: &RolloutSpec,
    status: &RolloutStatus,
    observed: &Observed,
    controls: Controls,
    now: SystemTime,
) -> Next {
    let version = status.target_version;
    if !matches!(status.phase, RolloutPhase::Progressing | RolloutPhase::Paused) {
        return Next::Wait {
            message: status.message.clone().unwrap_or_default(),
            recheck: Duration::MAX,
        };
    }
    if controls.abort {
        return Next::Abort {
            reason: format!("aborted by the annotation {}={version}", super::ABORT_ANNOTATION),
        };
    }
    let analysis = &spec.analysis;
    if observed.target.rejected > analysis.max_nacks {
        let first = observed
            .first_rejection
            .as_ref()
            .map(|(data_plane, error)| format!("; {data_plane}: {error}"))
            .unwrap_or_default();
        return Next::Halt {
            reason: format!(
                "{} data plane{} rejected version {version} (maxNacks {}){first}",
                observed.target.rejected,
                if observed.target.rejected == 1 { "" } else { "s" },
                analysis.max_nacks
            ),
        };
    }
    let requests: u64 = observed.target_health.values().map(|h| h.requests).sum();
    let judged = requests >= u64::try_from(analysis.min_requests).unwrap_or(0);
    if judged && let Some(reason) = failing(observed, analysis.max_error_ratio, version) {
        return Next::Halt { reason };
    }
    if controls.promote {
        return Next::Complete {
            message: format!(
                "promoted by the annotation {}={version}",
                super::PROMOTE_ANNOTATION
            ),
        };
    }
    match (status.phase, controls.paused) {
        (RolloutPhase::Progressing, true) => return Next::Pause,
        (RolloutPhase::Paused, false) => return Next::Resume,
        (RolloutPhase::Paused, true) => {
            return Next::Wait {
                message: format!("paused by the annotation {}=paused", super::PAUSE_ANNOTATION),
                recheck: Duration::MAX,
            };
        }
        _ => {}
    }
    let steps = spec.steps.len();
    let index = usize::try_from(status.step - 1).unwrap_or(0);
    let Some(step) = spec.steps.get(index) else {
        // The steps were shortened meanwhile: the ones left are done.
        return Next::Complete {
            message: format!("every step of spec.rollout passed ({steps} now)"),
        };
    };
    let pending = observed.pending;
    if pending > 0 {
        return Next::Wait {
            message: format!(
                "step {}/{steps} ({} %): {pending} of {} data planes have not applied version {version} yet",
                index + 1,
                status.percent,
                observed.target.connected
            ),
            recheck: RECHECK,
        };
    }
    let started = status
        .step_started_at
        .as_ref()
        .map_or(now, |t| SystemTime::from(t.0));
    let baked = now.duration_since(started).unwrap_or_default();
    let pause = step.pause();
    if baked < pause {
        // When the pause ends rather than how much of it is left: the message stays the same
        // for the whole step, so it is written once.
        let ends = k8s_openapi::jiff::Timestamp::try_from(started + pause)
            .map(|t| t.round(k8s_openapi::jiff::Unit::Second).unwrap_or(t).to_string())
            .unwrap_or_default();
        return Next::Wait {
            message: format!(
                "step {}/{steps} ({} %): {} of {} data planes on version {version}; its pause ends at {ends}",
                index + 1,
                status.percent,
                observed.target.applied,
                observed.target.connected,
            ),
            recheck: pause - baked,
        };
    }
    if !judged {
        return Next::Wait {
            message: format!(
                "step {}/{steps} ({} %): waiting for {} requests on version {version} (minRequests) before judging the step",
                index + 1,
                status.percent,
                analysis.min_requests
            ),
            recheck: RECHECK,
        };
    }
    if index + 1 < steps {
        Next::Step(index + 1)
    } else {
        Next::Complete {
            message: format!("all {steps} steps passed"),
        }
    }
}

/// The first placement whose share of failed requests on the new table is over `max_ratio` and
/// over what the data planes on the previous table see for it, described with the figures.
fn failing(observed: &Observed, max_ratio: f64, version: i64) -> Option<String> {
    let ratio = |h: &routing_model::protocol::PlacementHealth| {
        if h.requests == 0 {
            0.0
        } else {
            h.errors as f64 / h.requests as f64
        }
    };
    observed.target_health.iter().find_map(|(placement, h)| {
        let now = ratio(h);
        let before = observed.previous_health.get(placement).copied().unwrap_or_default();
        let baseline = ratio(&before);
        (h.requests > 0 && now > max_ratio && now > baseline).then(|| {
            format!(
                "placement {placement}: {} of {} requests failed on version {version} ({:.1} %), over maxErrorRatio {:.1} % and the previous version's {:.1} % ({} of {})",
                h.errors,
                h.requests,
                now * 100.0,
                max_ratio * 100.0,
                baseline * 100.0,
                before.errors,
                before.requests
            )
        })
    })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use routing_model::crd::VersionCounts;

    use super::*;

    fn spec() -> RolloutSpec {
        serde_json::from_str(
            r#"{"steps": [{"percent": 10, "pause": "30s"}, {"percent": 50, "pause": "30s"}], "analysis": {"minRequests": 0}}"#,
        )
        .unwrap()
    }

    fn at(step: i64, phase: RolloutPhase, started: SystemTime) -> RolloutStatus {
        RolloutStatus {
            phase,
            step,
            steps: 2,
            percent: [0, 10, 50][step as usize],
            target_version: 7,
            target_hash: "sha256:x".into(),
            generation: 3,
            previous_version: Some(6),
            revert_version: None,
            step_started_at: Some(Time(started.try_into().unwrap())),
            summary: String::new(),
            message: None,
            data_planes: None,
            signature: None,
        }
    }

    fn observed(connected: i64, applied: i64, rejected: i64) -> Observed {
        Observed {
            target: VersionCounts {
                connected,
                applied,
                rejected,
            },
            pending: connected - applied - rejected,
            first_rejection: (rejected > 0).then(|| ("dp-3".to_owned(), "bad endpoint".to_owned())),
            ..Observed::default()
        }
    }

    const GO: Controls = Controls {
        paused: false,
        promote: false,
        abort: false,
    };

    #[test]
    fn a_step_waits_for_its_data_planes_then_its_pause_then_moves_on() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let status = at(1, RolloutPhase::Progressing, t0);
        let wait = judge(
            &spec(),
            &status,
            &observed(2, 1, 0),
            GO,
            t0 + Duration::from_secs(60),
        );
        assert!(
            matches!(&wait, Next::Wait { message, .. } if message.contains("1 of 2 data planes have not applied version 7")),
            "{wait:?}"
        );
        let baking = judge(
            &spec(),
            &status,
            &observed(2, 2, 0),
            GO,
            t0 + Duration::from_secs(10),
        );
        assert_eq!(
            baking,
            Next::Wait {
                message:
                    "step 1/2 (10 %): 2 of 2 data planes on version 7; its pause ends at 1970-01-12T13:47:10Z"
                        .into(),
                recheck: Duration::from_secs(20)
            }
        );
        assert_eq!(
            judge(
                &spec(),
                &status,
                &observed(2, 2, 0),
                GO,
                t0 + Duration::from_secs(30)
            ),
            Next::Step(1)
        );
        let last = at(2, RolloutPhase::Progressing, t0);
        assert!(matches!(
            judge(
                &spec(),
                &last,
                &observed(5, 5, 0),
                GO,
                t0 + Duration::from_secs(31)
            ),
            Next::Complete { .. }
        ));
    }

    #[test]
    fn a_nack_halts_whatever_the_pause_says_and_names_the_data_plane() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let status = at(1, RolloutPhase::Progressing, t0);
        let next = judge(&spec(), &status, &observed(2, 1, 1), GO, t0);
        assert_eq!(
            next,
            Next::Halt {
                reason: "1 data plane rejected version 7 (maxNacks 0); dp-3: bad endpoint".into()
            }
        );
        let mut lenient = spec();
        lenient.analysis.max_nacks = 1;
        assert!(matches!(
            judge(&lenient, &status, &observed(2, 1, 1), GO, t0),
            Next::Wait { .. }
        ));
        // Promote does not override a halt; abort comes first.
        let promote = Controls { promote: true, ..GO };
        assert!(matches!(
            judge(&spec(), &status, &observed(2, 1, 1), promote, t0),
            Next::Halt { .. }
        ));
        let abort = Controls { abort: true, ..GO };
        assert!(matches!(
            judge(&spec(), &status, &observed(2, 1, 1), abort, t0),
            Next::Abort { .. }
        ));
    }

    #[test]
    fn the_user_pauses_resumes_and_promotes() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let running = at(1, RolloutPhase::Progressing, t0);
        let paused = Controls { paused: true, ..GO };
        assert_eq!(
            judge(&spec(), &running, &observed(1, 1, 0), paused, t0),
            Next::Pause
        );
        let held = at(1, RolloutPhase::Paused, t0);
        let later = t0 + Duration::from_secs(3600);
        assert!(matches!(
            judge(&spec(), &held, &observed(1, 1, 0), paused, later),
            Next::Wait {
                recheck: Duration::MAX,
                ..
            }
        ));
        assert_eq!(judge(&spec(), &held, &observed(1, 1, 0), GO, later), Next::Resume);
        let promote = Controls { promote: true, ..GO };
        assert!(
            matches!(judge(&spec(), &running, &observed(1, 0, 0), promote, t0), Next::Complete { message } if message.contains("promoted"))
        );
        // An ended rollout decides nothing.
        for phase in [
            RolloutPhase::Halted,
            RolloutPhase::Aborted,
            RolloutPhase::Complete,
        ] {
            assert!(matches!(
                judge(&spec(), &at(1, phase, t0), &observed(1, 0, 1), GO, later),
                Next::Wait { .. }
            ));
        }
    }

    fn health(
        pairs: &[(&str, u64, u64)],
    ) -> std::collections::BTreeMap<String, routing_model::protocol::PlacementHealth> {
        pairs
            .iter()
            .map(|(p, requests, errors)| {
                (
                    (*p).to_owned(),
                    routing_model::protocol::PlacementHealth {
                        requests: *requests,
                        errors: *errors,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn errors_over_the_threshold_and_the_baseline_halt_once_there_is_enough_traffic() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let status = at(1, RolloutPhase::Progressing, t0);
        let mut spec = spec();
        spec.analysis.min_requests = 100;
        let mut seen = observed(1, 1, 0);
        seen.target_health = health(&[("tier1", 50, 50)]);
        // Too little traffic to judge, even after the pause: it waits.
        let next = judge(&spec, &status, &seen, GO, t0 + Duration::from_secs(60));
        assert!(
            matches!(&next, Next::Wait { message, .. } if message.contains("waiting for 100 requests")),
            "{next:?}"
        );
        seen.target_health = health(&[("tier1", 200, 1), ("broken", 100, 30)]);
        seen.previous_health = health(&[("tier1", 1000, 5)]);
        assert_eq!(
            judge(&spec, &status, &seen, GO, t0),
            Next::Halt {
                reason: "placement broken: 30 of 100 requests failed on version 7 (30.0 %), over maxErrorRatio 2.0 % and the previous version's 0.0 % (0 of 0)".into()
            }
        );
        // A placement that fails as much on the previous table is not the new table's fault.
        seen.target_health = health(&[("flaky", 300, 30)]);
        seen.previous_health = health(&[("flaky", 3000, 400)]);
        assert!(matches!(judge(&spec, &status, &seen, GO, t0), Next::Wait { .. }));
        assert_eq!(
            judge(&spec, &status, &seen, GO, t0 + Duration::from_secs(30)),
            Next::Step(1)
        );
    }
}
