//! What a RoutingShard's status should say, computed as a pure function (like [`super::status`]
//! for RoutingConfigs): equal inputs give an equal status, so nothing is written when nothing
//! changed.
//!
//! One condition, `Served`, about the shard's current generation: `True` when the routing table
//! being served holds that generation, `False` with the reason when it does not. A shard whose
//! current generation is served stays `Served` while another object of its table is refused (the
//! last valid table keeps serving it), and its status names the version since which the table
//! holds it, so a new version of the table rewrites only the shards that changed, never all of
//! them.

use std::time::SystemTime;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use routing_model::compose::{CompositionErrors, Member};
use routing_model::crd::{CONDITION_SERVED, RoutingShard, RoutingShardStatus};

use crate::report::status::truncate;
use crate::served_spec::bounded_copy;
use crate::snapshot::ServedMembers;

/// Longest condition message written.
const MAX_MESSAGE: usize = 4096;

/// `Served=False` reason: the shard's own customers break a rule.
pub const REASON_INVALID: &str = "InvalidShard";
/// `Served=False` reason: a customer of the shard is also assigned by another object.
pub const REASON_CONFLICT: &str = "Conflict";
/// `Served=False` reason: the shard is valid, but another object of its table is refused.
pub const REASON_BLOCKED: &str = "Blocked";
/// `Served=False` reason: no RoutingConfig of the label's name in the shard's namespace.
pub const REASON_NO_ROUTING_CONFIG: &str = "NoRoutingConfig";

/// The table a shard belongs to, as the status reports it.
#[derive(Debug, Clone, Copy)]
pub struct Table<'a> {
    /// `RoutingConfig ns/name`.
    pub object: &'a str,
    /// Why the current table is refused (every object's problems), if it is.
    pub refused: Option<Refusal<'a>>,
    /// The table being served, if any.
    pub served: Option<ServedTable<'a>>,
}

/// Why a table is refused.
#[derive(Debug, Clone, Copy)]
pub enum Refusal<'a> {
    /// Its objects break rules.
    Invalid(&'a CompositionErrors),
    /// It is valid but cannot be delivered (too large).
    Other(&'a str),
}

/// The table being served.
#[derive(Debug, Clone, Copy)]
pub struct ServedTable<'a> {
    /// Its version.
    pub version: i64,
    /// Its objects.
    pub members: &'a ServedMembers,
}

/// The inputs of one shard's status.
pub struct Input<'a> {
    /// The shard.
    pub shard: &'a RoutingShard,
    /// Its table, or `None` when there is no RoutingConfig of its label's name.
    pub table: Option<Table<'a>>,
    /// Now.
    pub now: SystemTime,
}

/// A decision worth an Event about a shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// `Normal` or `Warning`.
    pub warning: bool,
    /// The Event's reason: `Served`, `InvalidShard`, `Conflict`, `Blocked`, `NoRoutingConfig`.
    pub reason: String,
    /// Its note.
    pub message: String,
}

/// The status the shard should have.
pub fn desired(input: &Input<'_>) -> RoutingShardStatus {
    let shard = input.shard;
    let name = shard.metadata.name.as_deref().unwrap_or_default();
    let generation = shard.metadata.generation.unwrap_or(0);
    let customers = shard.spec.customer_to_placement.len();
    let held = input.table.and_then(|t| {
        t.served.and_then(|s| {
            s.members
                .shard(name, shard.metadata.uid.as_deref())
                .map(|h| (s.version, h))
        })
    });
    let held_generation = held.map(|(_, h)| h.object.metadata.generation.unwrap_or(0));
    // A copy of the generation served, while it is not the current one.
    let copy = held
        .filter(|_| held_generation != Some(generation))
        .map(|(_, h)| {
            let own = serde_json::to_vec(&shard.spec).map_or(0, |v| v.len());
            bounded_copy(&h.object.spec.customer_to_placement, own)
        });
    let serving = match held {
        Some((version, h)) if held_generation != Some(generation) => format!(
            "; the served table (version {version}) keeps generation {} of this shard{}",
            h.object.metadata.generation.unwrap_or(0),
            match &copy {
                Some(Err(bytes)) => format!(
                    " (not recorded in the status: {bytes} bytes compressed is too large beside this shard, so a control-plane replica started before this is fixed serves nothing for this table)"
                ),
                _ => String::new(),
            }
        ),
        _ => match input.table.and_then(|t| t.served) {
            Some(s) => format!(
                "; the served table (version {}) does not hold this shard",
                s.version
            ),
            None => "; nothing is served for this table yet".to_owned(),
        },
    };
    let (status, reason, message) = match input.table {
        None => (
            "False",
            REASON_NO_ROUTING_CONFIG,
            match shard.metadata.labels.as_ref().and_then(|l| l.get(routing_model::manifest::ROUTING_CONFIG_LABEL)) {
                Some(config) => format!(
                    "no RoutingConfig {config} in this namespace: the label cellroute.dev/routing-config names the table a shard belongs to"
                ),
                None => "no label cellroute.dev/routing-config: it names the RoutingConfig (in this namespace) whose table this shard belongs to".to_owned(),
            },
        ),
        Some(t) => match (held_generation == Some(generation), t.refused) {
            (true, refused) => {
                let (version, h) = held.expect("held");
                let served = format!(
                    "generation {generation} ({customers} customers) is part of the table of {} since version {}{}",
                    t.object,
                    h.since,
                    if h.since == version {
                        String::new()
                    } else {
                        format!(" (now version {version})")
                    }
                );
                // Served, and still at fault: a customer another object now also assigns, or
                // a placement the RoutingConfig no longer has. The table stays refused until
                // it is fixed, and this shard's status must say so too.
                let own = match refused {
                    Some(Refusal::Invalid(errors)) => own_errors(errors, name),
                    _ => None,
                };
                match own {
                    Some((reason, list)) => (
                        "True",
                        reason,
                        format!("{served}, but the current table is refused: {list}"),
                    ),
                    None => ("True", "Served", served),
                }
            }
            (false, Some(Refusal::Invalid(errors))) => {
                if let Some((reason, list)) = own_errors(errors, name) {
                    ("False", reason, format!("generation {generation} is not served: {list}{serving}"))
                } else {
                    let at_fault: Vec<String> = errors.members().into_iter().map(|m| object_name(t.object, m)).collect();
                    (
                        "False",
                        REASON_BLOCKED,
                        format!(
                            "generation {generation} is valid, but the table of {} is refused for errors in {}{serving}",
                            t.object,
                            at_fault.join(", ")
                        ),
                    )
                }
            }
            (false, Some(Refusal::Other(why))) => (
                "False",
                REASON_BLOCKED,
                format!("generation {generation} is valid, but the table of {} is refused: {why}{serving}", t.object),
            ),
            (false, None) => (
                "Unknown",
                "Pending",
                format!("generation {generation} is not served yet{serving}"),
            ),
        },
    };
    let now = whole_seconds(input.now);
    let kept = shard
        .status
        .as_ref()
        .and_then(|s| {
            s.conditions
                .iter()
                .find(|c| c.type_ == CONDITION_SERVED && c.status == status)
        })
        .map(|c| c.last_transition_time.clone());
    RoutingShardStatus {
        observed_generation: Some(generation),
        conditions: vec![Condition {
            type_: CONDITION_SERVED.to_owned(),
            status: status.to_owned(),
            reason: reason.to_owned(),
            message: truncate(&message, MAX_MESSAGE),
            observed_generation: Some(generation),
            last_transition_time: kept.unwrap_or(Time(now)),
        }],
        customers: Some(customers as i64),
        version: held.map(|(_, h)| h.since),
        served_generation: held_generation,
        served_spec: copy.and_then(Result::ok),
    }
}

/// The errors `errors` names about the shard `name`: the reason (`Conflict` when every one is a
/// customer another object also assigns) and the list; `None` when there are none.
fn own_errors(errors: &CompositionErrors, name: &str) -> Option<(&'static str, String)> {
    let member = Member::Shard(name.to_owned());
    let own: Vec<_> = errors.about(&member).collect();
    if own.is_empty() {
        return None;
    }
    let reason = if own.iter().all(|e| e.conflict) {
        REASON_CONFLICT
    } else {
        REASON_INVALID
    };
    let list: Vec<String> = own
        .iter()
        .map(|e| format!("{}: {}", e.field, e.message))
        .collect();
    Some((
        reason,
        format!(
            "{} error{}: {}",
            list.len(),
            if list.len() == 1 { "" } else { "s" },
            list.join("; ")
        ),
    ))
}

fn object_name(config: &str, member: &Member) -> String {
    match member {
        Member::Config => config.to_owned(),
        Member::Shard(name) => {
            let namespace = config
                .split_once(' ')
                .and_then(|(_, o)| o.split_once('/'))
                .map_or("", |(ns, _)| ns);
            format!("RoutingShard {namespace}/{name}")
        }
    }
}

/// The Event to publish: what the desired status says that the stored one did not (a new
/// generation, another verdict, or other errors).
pub fn decision(current: Option<&RoutingShardStatus>, desired: &RoutingShardStatus) -> Option<Decision> {
    let served = |s: &RoutingShardStatus| s.conditions.iter().find(|c| c.type_ == CONDITION_SERVED).cloned();
    let new = served(desired)?;
    let old = current.and_then(served);
    // A served shard's message names the table's latest version; that alone is no news.
    let unchanged = old.as_ref().is_some_and(|o| {
        o.status == new.status
            && o.reason == new.reason
            && o.observed_generation == new.observed_generation
            && (o.reason == "Served" || o.message == new.message)
    });
    if unchanged || new.status == "Unknown" {
        return None;
    }
    Some(Decision {
        warning: matches!(
            new.reason.as_str(),
            REASON_INVALID | REASON_CONFLICT | REASON_NO_ROUTING_CONFIG
        ),
        reason: new.reason,
        message: new.message,
    })
}

fn whole_seconds(t: SystemTime) -> Timestamp {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    Timestamp::from_second(secs).unwrap_or(Timestamp::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use routing_model::compose::{Members, Shard, compose};
    use routing_model::crd::RoutingConfig;
    use routing_model::manifest::{RoutingConfigSpec, RoutingShardSpec};

    use super::*;
    use crate::snapshot::ServedShard;

    fn shard(name: &str, generation: i64, customers: &[(&str, &str)]) -> RoutingShard {
        let mut s = RoutingShard::new(
            name,
            RoutingShardSpec {
                customer_to_placement: customers
                    .iter()
                    .map(|(c, p)| ((*c).to_owned(), (*p).to_owned()))
                    .collect(),
            },
        );
        s.metadata.namespace = Some("ns".into());
        s.metadata.uid = Some(format!("uid-{name}"));
        s.metadata.generation = Some(generation);
        s.metadata.labels = Some([("cellroute.dev/routing-config".to_owned(), "routes".to_owned())].into());
        s
    }

    fn members(shards: &[&RoutingShard], since: i64) -> ServedMembers {
        let config: RoutingConfigSpec = serde_json::from_value(serde_json::json!({
            "defaultPlacement": "a", "placementToEndpoint": {"a": "http://a"},
        }))
        .unwrap();
        ServedMembers {
            config: Arc::new(RoutingConfig::new("routes", config)),
            shards: shards
                .iter()
                .map(|s| {
                    (
                        s.metadata.name.clone().unwrap(),
                        ServedShard {
                            object: Arc::new((*s).clone()),
                            since,
                        },
                    )
                })
                .collect(),
        }
    }

    fn served_of(status: &RoutingShardStatus) -> (&str, &str) {
        let c = &status.conditions[0];
        (c.status.as_str(), c.reason.as_str())
    }

    #[test]
    fn a_served_shard_stays_served_when_others_change_and_names_the_version_since() {
        let a = shard("routes-0", 1, &[("acme", "a")]);
        let m = members(&[&a], 3);
        let table = |version| Table {
            object: "RoutingConfig ns/routes",
            refused: None,
            served: Some(ServedTable { version, members: &m }),
        };
        let at3 = desired(&Input {
            shard: &a,
            table: Some(table(3)),
            now: SystemTime::now(),
        });
        assert_eq!(served_of(&at3), ("True", "Served"));
        assert_eq!(
            (at3.version, at3.served_generation, at3.customers),
            (Some(3), Some(1), Some(1))
        );
        assert!(at3.served_spec.is_none());
        assert!(matches!(
            decision(None, &at3),
            Some(Decision { warning: false, .. })
        ));
        // Version 9 of the table (other shards changed) does not rewrite this shard's status
        // beyond its message, and publishes nothing.
        let mut stored = a.clone();
        stored.status = Some(at3.clone());
        let at9 = desired(&Input {
            shard: &stored,
            table: Some(table(9)),
            now: SystemTime::now(),
        });
        assert_eq!((at9.version, at9.served_generation), (Some(3), Some(1)));
        assert_eq!(decision(Some(&at3), &at9), None);
    }

    #[test]
    fn a_conflict_is_reported_on_both_and_an_invalid_edit_keeps_a_copy_of_what_is_served() {
        let config: RoutingConfigSpec = serde_json::from_value(serde_json::json!({
            "defaultPlacement": "a", "placementToEndpoint": {"a": "http://a"},
        }))
        .unwrap();
        let served_a = shard("routes-0", 1, &[("acme", "a")]);
        let m = members(&[&served_a], 2);
        // routes-0 edited (generation 2) to a placement without endpoint; routes-1 new, taking acme.
        let a = shard("routes-0", 2, &[("acme", "zz")]);
        let b = shard("routes-1", 1, &[("acme", "a")]);
        let errors = compose(&Members {
            namespace: "ns",
            name: "routes",
            config: &config,
            shards: [&a, &b]
                .iter()
                .map(|s| Shard {
                    name: s.metadata.name.as_deref().unwrap(),
                    customers: &s.spec.customer_to_placement,
                })
                .collect(),
        })
        .unwrap_err();
        let table = Table {
            object: "RoutingConfig ns/routes",
            refused: Some(Refusal::Invalid(&errors)),
            served: Some(ServedTable {
                version: 2,
                members: &m,
            }),
        };
        let on_a = desired(&Input {
            shard: &a,
            table: Some(table),
            now: SystemTime::now(),
        });
        let on_b = desired(&Input {
            shard: &b,
            table: Some(table),
            now: SystemTime::now(),
        });
        assert_eq!(served_of(&on_a), ("False", REASON_INVALID));
        assert!(
            on_a.conditions[0].message.contains("routes-1"),
            "{:?}",
            on_a.conditions[0]
        );
        assert!(
            on_a.conditions[0].message.contains("keeps generation 1"),
            "{:?}",
            on_a.conditions[0]
        );
        assert_eq!(served_of(&on_b), ("False", REASON_CONFLICT));
        assert!(
            on_b.conditions[0].message.contains("RoutingShard ns/routes-0"),
            "{:?}",
            on_b.conditions[0]
        );
        assert!(
            on_b.conditions[0].message.contains("does not hold this shard"),
            "{:?}",
            on_b.conditions[0]
        );
        // routes-0's served generation travels in its status.
        let copy: routing_model::CustomerMap =
            crate::served_spec::decode(on_a.served_spec.as_deref().unwrap(), 1 << 20).unwrap();
        assert_eq!(copy, served_a.spec.customer_to_placement);
        assert_eq!((on_a.served_generation, on_a.version), (Some(1), Some(2)));
        assert_eq!(
            (on_b.served_generation, on_b.version, on_b.served_spec.as_ref()),
            (None, None, None)
        );
        assert!(decision(None, &on_b).is_some_and(|d| d.warning && d.reason == REASON_CONFLICT));

        // The shard the served table holds, now in conflict with a newcomer: still served, and
        // its status says what refuses the table.
        let c0 = shard("routes-0", 1, &[("acme", "a")]);
        let c1 = shard("routes-1", 1, &[("acme", "a")]);
        let conflict = compose(&Members {
            namespace: "ns",
            name: "routes",
            config: &config,
            shards: [&c0, &c1]
                .iter()
                .map(|s| Shard {
                    name: s.metadata.name.as_deref().unwrap(),
                    customers: &s.spec.customer_to_placement,
                })
                .collect(),
        })
        .unwrap_err();
        let held = Table {
            refused: Some(Refusal::Invalid(&conflict)),
            ..table
        };
        let on_c0 = desired(&Input {
            shard: &c0,
            table: Some(held),
            now: SystemTime::now(),
        });
        assert_eq!(served_of(&on_c0), ("True", REASON_CONFLICT));
        assert!(
            on_c0.conditions[0].message.contains("RoutingShard ns/routes-1"),
            "{:?}",
            on_c0.conditions[0]
        );
        assert!(decision(None, &on_c0).is_some_and(|d| d.warning));

        // A valid shard edited while the table is refused for another: blocked.
        let c = shard("routes-2", 1, &[("globex", "a")]);
        let on_c = desired(&Input {
            shard: &c,
            table: Some(table),
            now: SystemTime::now(),
        });
        assert_eq!(served_of(&on_c), ("False", REASON_BLOCKED));
        assert!(
            on_c.conditions[0].message.contains("RoutingShard ns/routes-0"),
            "{:?}",
            on_c.conditions[0]
        );
    }

    #[test]
    fn a_shard_without_its_routing_config_says_so() {
        let mut a = shard("routes-0", 1, &[("acme", "a")]);
        let s = desired(&Input {
            shard: &a,
            table: None,
            now: SystemTime::now(),
        });
        assert_eq!(served_of(&s), ("False", REASON_NO_ROUTING_CONFIG));
        assert!(
            s.conditions[0].message.contains("no RoutingConfig routes"),
            "{:?}",
            s.conditions[0]
        );
        a.metadata.labels = None;
        let s = desired(&Input {
            shard: &a,
            table: None,
            now: SystemTime::now(),
        });
        assert!(
            s.conditions[0].message.contains("no label"),
            "{:?}",
            s.conditions[0]
        );
    }
}
