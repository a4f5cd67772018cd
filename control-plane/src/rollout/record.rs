//! The recorded state of a rollout (`status.rollout`): how each decision changes it, how
//! `kubectl get` summarises it, and the leader's signature over what replicas act on.

use std::time::SystemTime;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use routing_model::crd::{RolloutPhase, RolloutStatus};
use routing_model::protocol::SnapshotRef;
use routing_model::rollout::RolloutSpec;

use super::judge::Next;
use crate::status_key::{SignatureError, StatusKey};

/// The rollout of `target` beginning at its first step.
pub fn begin(
    spec: &RolloutSpec,
    target: &SnapshotRef,
    generation: i64,
    previous: Option<i64>,
    now: SystemTime,
) -> RolloutStatus {
    let percent = spec.steps.first().map_or(100, |s| s.percent);
    let steps = spec.steps.len() as i64;
    RolloutStatus {
        phase: RolloutPhase::Progressing,
        step: 1,
        steps,
        percent: i64::from(percent),
        target_version: target.version,
        target_hash: target.hash.to_string(),
        generation,
        previous_version: previous,
        revert_version: None,
        step_started_at: Some(time(now)),
        summary: summary(RolloutPhase::Progressing, 1, steps, i64::from(percent)),
        message: None,
        data_planes: None,
        signature: None,
    }
}

/// `status` after `next`; `revert` is the version that reverts a halt or an abort.
pub fn apply(
    status: &RolloutStatus,
    spec: &RolloutSpec,
    next: &Next,
    revert: Option<i64>,
    now: SystemTime,
) -> RolloutStatus {
    let mut s = status.clone();
    match next {
        Next::Wait { message, .. } => s.message = (!message.is_empty()).then(|| message.clone()),
        Next::Step(index) => {
            s.step = *index as i64 + 1;
            s.percent = spec.steps.get(*index).map_or(100, |st| i64::from(st.percent));
            s.step_started_at = Some(time(now));
            s.message = None;
        }
        Next::Complete { message } => {
            s.phase = RolloutPhase::Complete;
            s.step = s.steps + 1;
            s.percent = 100;
            s.message = Some(message.clone());
        }
        Next::Halt { reason } | Next::Abort { reason } => {
            s.phase = if matches!(next, Next::Halt { .. }) {
                RolloutPhase::Halted
            } else {
                RolloutPhase::Aborted
            };
            s.percent = 0;
            s.revert_version = revert;
            s.message = Some(match revert {
                Some(v) => format!("{reason}; the previous table was restored as version {v}"),
                None => reason.clone(),
            });
        }
        Next::Pause => s.phase = RolloutPhase::Paused,
        Next::Resume => {
            s.phase = RolloutPhase::Progressing;
            s.step_started_at = Some(time(now));
            s.message = None;
        }
    }
    s.summary = summary(s.phase, s.step, s.steps, s.percent);
    s
}

/// What `kubectl get` shows in the ROLLOUT column.
pub fn summary(phase: RolloutPhase, step: i64, steps: i64, percent: i64) -> String {
    match phase {
        RolloutPhase::Progressing => format!("{percent}% {step}/{steps}"),
        RolloutPhase::Paused => format!("Paused {percent}% {step}/{steps}"),
        RolloutPhase::Halted => "Halted".to_owned(),
        RolloutPhase::Aborted => "Aborted".to_owned(),
        RolloutPhase::Complete => "Complete".to_owned(),
    }
}

/// Which object a rollout record is of.
#[derive(Debug, Clone, Copy)]
pub struct Owner<'a> {
    /// Namespace.
    pub namespace: &'a str,
    /// Name.
    pub name: &'a str,
    /// Uid: a record never moves to another or a re-created object.
    pub uid: &'a str,
}

/// The signed bytes: one field per line.
fn message(owner: Owner<'_>, s: &RolloutStatus) -> Vec<u8> {
    format!(
        "cellroute.dev/rollout/v1\n{}\n{}\n{}\n{:?}\n{}\n{}\n{}\n{}\n{}\n{}",
        owner.namespace,
        owner.name,
        owner.uid,
        s.phase,
        s.step,
        s.percent,
        s.target_version,
        s.target_hash,
        s.generation,
        s.revert_version.map_or_else(|| "-".to_owned(), |v| v.to_string()),
    )
    .into_bytes()
}

/// `status` with the leader's signature over what replicas act on.
pub fn signed(owner: Owner<'_>, mut status: RolloutStatus, key: &StatusKey) -> RolloutStatus {
    status.signature = Some(key.sign(&message(owner, &status)));
    status
}

/// Whether `status` is a record this control plane signed for `owner`.
pub fn verify(owner: Owner<'_>, status: &RolloutStatus, key: &StatusKey) -> Result<(), SignatureError> {
    let signature = status.signature.as_deref().ok_or(SignatureError::Malformed)?;
    key.verify(&message(owner, status), signature)
}

fn time(t: SystemTime) -> Time {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    Time(Timestamp::from_second(secs).unwrap_or(Timestamp::UNIX_EPOCH))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> RolloutSpec {
        serde_json::from_str(r#"{"steps": [{"percent": 10, "pause": "30s"}, {"percent": 50}]}"#).unwrap()
    }

    fn target() -> SnapshotRef {
        SnapshotRef {
            lineage: "uid-1".into(),
            version: 7,
            hash: "sha256:0000000000000000000000000000000000000000000000000000000000000007"
                .parse()
                .unwrap(),
        }
    }

    #[test]
    fn a_rollout_reads_in_kubectl_get_as_it_moves() {
        let now = SystemTime::now();
        let s = begin(&spec(), &target(), 3, Some(6), now);
        assert_eq!(s.summary, "10% 1/2");
        let s = apply(&s, &spec(), &Next::Step(1), None, now);
        assert_eq!((s.summary.as_str(), s.percent), ("50% 2/2", 50));
        let paused = apply(&s, &spec(), &Next::Pause, None, now);
        assert_eq!(paused.summary, "Paused 50% 2/2");
        let halted = apply(
            &s,
            &spec(),
            &Next::Halt {
                reason: "1 data plane rejected version 7".into(),
            },
            Some(8),
            now,
        );
        assert_eq!(halted.summary, "Halted");
        assert_eq!(halted.revert_version, Some(8));
        assert!(halted.message.unwrap().ends_with("restored as version 8"));
        let done = apply(
            &s,
            &spec(),
            &Next::Complete {
                message: "all 2 steps passed".into(),
            },
            None,
            now,
        );
        assert_eq!(
            (done.summary.as_str(), done.step, done.percent),
            ("Complete", 3, 100)
        );
    }

    #[test]
    fn a_record_is_trusted_only_as_signed_for_its_object() {
        let key = StatusKey::from_bytes(b"0123456789abcdef0123456789abcdef");
        let owner = Owner {
            namespace: "ns",
            name: "routes",
            uid: "uid-1",
        };
        let s = signed(
            owner,
            begin(&spec(), &target(), 3, Some(6), SystemTime::now()),
            &key,
        );
        assert!(verify(owner, &s, &key).is_ok());
        let mut forged = s.clone();
        forged.percent = 100;
        assert!(verify(owner, &forged, &key).is_err());
        let other = Owner {
            uid: "uid-2",
            ..owner
        };
        assert!(verify(other, &s, &key).is_err());
        let mut unsigned = s;
        unsigned.signature = None;
        assert!(verify(owner, &unsigned, &key).is_err());
    }
}
