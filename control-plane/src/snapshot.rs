//! The snapshots the control plane serves, one per RoutingConfig object.
//!
//! Sources (the Kubernetes controller or a watched file) offer each new version of an object
//! here. A valid version becomes the served snapshot; an invalid one is recorded as the object's
//! rejection while the previous valid snapshot keeps being served. Versions never go backwards
//! within a lineage (one object `uid`, or one file); a re-created object starts a new lineage.
//!
//! Only what can be delivered is accepted: a version whose snapshot message would exceed
//! `--max-message-bytes` (the bound on every message the control plane sends) is rejected like an
//! invalid one, naming the limit and the size, instead of being served to data planes that could
//! never receive it.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use kube::ResourceExt;
use routing_model::crd::{RoutingConfig, RoutingShard};
use routing_model::delta::{SpecChanges, changed_customers};
use routing_model::manifest::RoutingConfigSpec;
use routing_model::protocol::{DEFAULT_MAX_MESSAGE_BYTES, SnapshotMessageRef, SnapshotRef};
use routing_model::{ContentHash, ValidatedConfig};
use serde::Serialize;
use tokio::sync::watch;

/// Which object a snapshot belongs to: `namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ObjectKey {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl ObjectKey {
    /// The key of a stored RoutingConfig (`None` only for an object without namespace or name,
    /// which the apiserver never returns for a namespaced kind).
    pub fn of(obj: &RoutingConfig) -> Option<Self> {
        Some(Self {
            namespace: obj.namespace()?,
            name: obj.metadata.name.clone()?,
        })
    }

    /// The key named by `namespace/name`; a bare name means namespace `default`.
    pub fn parse(object: &str) -> Self {
        let (namespace, name) = routing_model::protocol::split_object(object);
        Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// An accepted, servable version of one object.
#[derive(Debug, Serialize)]
pub struct Snapshot {
    /// The object.
    pub key: ObjectKey,
    /// The object's identity across delete and re-create: its `uid`, or `file:<path>`.
    pub lineage: String,
    /// Rises with every accepted change within a lineage (the object's `metadata.generation`).
    pub version: i64,
    /// Content hash of the spec.
    pub hash: ContentHash,
    /// When it was accepted.
    #[serde(serialize_with = "unix_seconds")]
    pub accepted_at: SystemTime,
    /// The size of its snapshot message, measured when it was accepted.
    pub message_bytes: usize,
    /// The validated config.
    #[serde(skip)]
    pub config: Arc<ValidatedConfig>,
    /// In a cluster: the objects the table was composed of, at the generations served.
    #[serde(skip)]
    pub members: Option<Arc<ServedMembers>>,
    /// The changes from the snapshot served before it, when that was of the same lineage: what
    /// its delta carries, found before it was accepted so that pushing it costs the change.
    #[serde(skip)]
    pub changes: Option<Arc<Changes>>,
}

/// What changed from one served snapshot to the next.
#[derive(Debug)]
pub struct Changes {
    /// The snapshot they apply to.
    pub base: SnapshotRef,
    /// The changes.
    pub changes: SpecChanges,
}

/// The objects a served table was composed of: the RoutingConfig and its RoutingShards, each at
/// the generation the table holds. The status writer records from them what a replica needs to
/// rebuild the table while a newer generation of one of them is refused.
#[derive(Debug, Clone)]
pub struct ServedMembers {
    /// The RoutingConfig (its own spec, with its own customers).
    pub config: Arc<RoutingConfig>,
    /// The shards, by name, each with the version since which the table holds that generation.
    pub shards: BTreeMap<String, ServedShard>,
}

/// One shard of a served table.
#[derive(Debug, Clone)]
pub struct ServedShard {
    /// The shard at the generation served.
    pub object: Arc<RoutingShard>,
    /// The first table version that held this generation of it.
    pub since: i64,
}

impl ServedMembers {
    /// The generation of the RoutingConfig the table holds.
    pub fn config_generation(&self) -> i64 {
        self.config.metadata.generation.unwrap_or(0)
    }

    /// The shard `name`, if the table holds the object of `uid`.
    pub fn shard(&self, name: &str, uid: Option<&str>) -> Option<&ServedShard> {
        self.shards
            .get(name)
            .filter(|s| s.object.metadata.uid.as_deref() == uid)
    }
}

impl Snapshot {
    /// Its identity on the wire.
    pub fn reference(&self) -> SnapshotRef {
        SnapshotRef {
            lineage: self.lineage.clone(),
            version: self.version,
            hash: self.hash,
        }
    }
}

/// A version of an object that failed validation.
#[derive(Debug, Clone, Serialize)]
pub struct Rejection {
    /// Lineage of the rejected version.
    pub lineage: String,
    /// Its version.
    pub version: i64,
    /// Every problem, naming the keys.
    pub error: String,
}

/// Everything the control plane knows about one object.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ObjectState {
    /// The snapshot being served, if any version was ever valid. While a staged rollout judges
    /// a newer one, this is what the data planes outside its share keep.
    pub served: Option<Arc<Snapshot>>,
    /// The newest version, when it was rejected (cleared when a newer version is accepted).
    pub rejection: Option<Rejection>,
    /// A newer version on a share of the data planes, while a staged rollout judges it.
    pub canary: Option<Canary>,
}

impl ObjectState {
    /// The newest accepted version: the canary's while there is one, else the served one.
    pub fn newest(&self) -> Option<&Arc<Snapshot>> {
        self.canary.as_ref().map(|c| &c.target).or(self.served.as_ref())
    }
}

/// A version on a share of the data planes (those whose cohort is within `percent`, see
/// `routing_model::rollout`), the others keeping the served one.
#[derive(Debug, Clone, Serialize)]
pub struct Canary {
    /// The version being rolled out.
    pub target: Arc<Snapshot>,
    /// The share of data planes that get it, 0 to 100.
    pub percent: i32,
}

/// How an offered version reaches the data planes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// To every data plane at once (ending any rollout in progress).
    Immediate,
    /// To this share of them first, as a [`Canary`], when a version of the same lineage is
    /// served (the first version of a lineage has nothing to stage against and is served).
    Staged {
        /// The first step's share.
        percent: i32,
    },
}

/// What [`SnapshotStore::offer`] did with a version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Offered {
    /// It is now the served snapshot.
    Accepted,
    /// It was already served (same lineage and version), or older than what is served.
    Unchanged,
    /// It failed validation; the previous snapshot (if any) is still served.
    Rejected,
}

/// The size in bytes of the snapshot message that would carry `spec` as `reference` of `key`:
/// exactly what the publisher sends (as text, or before gzip).
pub fn message_bytes(key: &ObjectKey, reference: &SnapshotRef, spec: &RoutingConfigSpec) -> usize {
    SnapshotMessageRef {
        routing_config: &key.to_string(),
        snapshot: reference,
        spec,
    }
    .json_len()
}

/// Whether a snapshot message of `bytes` fits the limit `max`; the error names both.
pub fn check_deliverable(bytes: usize, max: usize) -> Result<(), String> {
    if bytes <= max {
        return Ok(());
    }
    Err(format!(
        "the snapshot message is {bytes} bytes, over the {max}-byte limit (--max-message-bytes): no data plane could receive it. \
         Remove customers or shorten their ids (every `\\` and `\"` in an id doubles in the message), or raise --max-message-bytes on the control plane and every data plane"
    ))
}

/// All served snapshots, shared between sources (writers) and readers.
pub struct SnapshotStore {
    objects: RwLock<BTreeMap<ObjectKey, ObjectState>>,
    changed: watch::Sender<u64>,
    max_message_bytes: usize,
}

impl Default for SnapshotStore {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_MESSAGE_BYTES)
    }
}

impl SnapshotStore {
    /// A store that accepts only versions whose snapshot message fits `max_message_bytes`.
    pub fn new(max_message_bytes: usize) -> Self {
        Self {
            objects: RwLock::default(),
            changed: watch::channel(0).0,
            max_message_bytes,
        }
    }

    /// The largest snapshot message it accepts.
    pub fn max_message_bytes(&self) -> usize {
        self.max_message_bytes
    }

    /// Whether `config` as `reference` of `key` could be delivered; its message size if so.
    pub fn deliverable(
        &self,
        key: &ObjectKey,
        reference: &SnapshotRef,
        config: &ValidatedConfig,
    ) -> Result<usize, String> {
        let bytes = self.sized(key, reference, config);
        check_deliverable(bytes, self.max_message_bytes).map(|()| bytes)
    }

    /// The size of the snapshot message of `config` as `reference`. A version made from the one
    /// served (as composition and [`Self::rebase`] make them) shares all but its changes with it,
    /// so it is sized from that one's size and the customers that changed, in the time of the
    /// change; anything else is counted over the whole message.
    fn sized(&self, key: &ObjectKey, reference: &SnapshotRef, config: &ValidatedConfig) -> usize {
        if let Some(served) = self.get(key).and_then(|s| s.served) {
            let old = &served.config.spec().customer_to_placement;
            let new = &config.spec().customer_to_placement;
            // Past this many changes, counting the whole message costs about as much.
            let most = old.len().max(new.len()) / 8 + 1;
            let changed: Vec<_> = changed_customers(old, new).take(most + 1).collect();
            if changed.len() <= most {
                let name = key.to_string();
                let base_ref = served.reference();
                let base = SnapshotMessageRef {
                    routing_config: &name,
                    snapshot: &base_ref,
                    spec: served.config.spec(),
                };
                let next = SnapshotMessageRef {
                    routing_config: &name,
                    snapshot: reference,
                    spec: config.spec(),
                };
                return next.json_len_after(&base, served.message_bytes, changed);
            }
        }
        message_bytes(key, reference, config.spec())
    }

    fn is_stale(&self, key: &ObjectKey, lineage: &str, version: i64) -> bool {
        self.objects
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(key)
            .is_some_and(|s| is_stale(s, lineage, version))
    }

    /// `config` made from the snapshot served for `key` in `lineage`, if there is one, by the
    /// changes between them: equal to `config`, but sharing the customer map and hash tree of
    /// the served table (so the one-customer change of a large table holds, and later frees,
    /// only what changed), with the changes kept for its delta. Costs one pass over both tables,
    /// before the version is accepted rather than while it is pushed.
    fn rebase(
        &self,
        key: &ObjectKey,
        lineage: &str,
        config: ValidatedConfig,
    ) -> (ValidatedConfig, Option<Arc<Changes>>) {
        let Some(served) = self
            .get(key)
            .and_then(|s| s.served)
            .filter(|s| s.lineage == lineage)
        else {
            return (config, None);
        };
        if served.config.metadata() != config.metadata() {
            return (config, None);
        }
        let changes = SpecChanges::between(served.config.spec(), config.spec());
        match served.config.with_changes(&changes) {
            // Equal hashes are equal tables (SHA-256); comparing them is not a third pass.
            Ok(shared) if shared.hash() == config.hash() && shared.warnings() == config.warnings() => (
                shared,
                Some(Arc::new(Changes {
                    base: served.reference(),
                    changes,
                })),
            ),
            // Cannot happen (the changes between two valid tables apply to the first and make the
            // second, fuzzed in `delta_apply`); the validated candidate is served as it is.
            _ => (config, None),
        }
    }

    /// Offers one version of an object: `Ok` with its validated config, or `Err` with why it
    /// is invalid.
    pub fn offer(
        &self,
        key: &ObjectKey,
        lineage: &str,
        version: i64,
        candidate: Result<ValidatedConfig, String>,
    ) -> Offered {
        self.offer_table(key, lineage, version, candidate, None)
    }

    /// [`SnapshotStore::offer`] of a table composed of `members`.
    pub fn offer_table(
        &self,
        key: &ObjectKey,
        lineage: &str,
        version: i64,
        candidate: Result<ValidatedConfig, String>,
        members: Option<Arc<ServedMembers>>,
    ) -> Offered {
        self.offer_delivered(key, lineage, version, candidate, members, Delivery::Immediate)
    }

    /// [`SnapshotStore::offer_table`], delivered as `delivery` says.
    pub fn offer_delivered(
        &self,
        key: &ObjectKey,
        lineage: &str,
        version: i64,
        candidate: Result<ValidatedConfig, String>,
        members: Option<Arc<ServedMembers>>,
        delivery: Delivery,
    ) -> Offered {
        // Sizing a large table costs a serialization pass: skip it for what is already served
        // (resyncs re-offer every object), and do it outside the lock.
        if candidate.is_ok() && self.is_stale(key, lineage, version) {
            return Offered::Unchanged;
        }
        let candidate = candidate.and_then(|config| {
            let reference = SnapshotRef {
                lineage: lineage.to_owned(),
                version,
                hash: config.hash(),
            };
            let bytes = self.deliverable(key, &reference, &config)?;
            let (config, changes) = self.rebase(key, lineage, config);
            Ok((config, bytes, changes))
        });
        let mut objects = self
            .objects
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let state = objects.entry(key.clone()).or_default();
        let outcome = match candidate {
            Ok((config, message_bytes, changes)) => {
                if is_stale(state, lineage, version) {
                    Offered::Unchanged
                } else {
                    let snapshot = Arc::new(Snapshot {
                        key: key.clone(),
                        lineage: lineage.to_owned(),
                        version,
                        hash: config.hash(),
                        accepted_at: SystemTime::now(),
                        message_bytes,
                        config: Arc::new(config),
                        members,
                        changes,
                    });
                    let stageable = state.served.as_ref().is_some_and(|s| s.lineage == lineage);
                    match delivery {
                        Delivery::Staged { percent } if stageable => {
                            state.canary = Some(Canary {
                                target: snapshot,
                                percent: percent.clamp(0, 100),
                            });
                        }
                        _ => {
                            state.served = Some(snapshot);
                            state.canary = None;
                        }
                    }
                    state.rejection = None;
                    Offered::Accepted
                }
            }
            Err(error) => {
                let repeated = state
                    .rejection
                    .as_ref()
                    .is_some_and(|r| r.lineage == lineage && r.version == version && r.error == error);
                state.rejection = Some(Rejection {
                    lineage: lineage.to_owned(),
                    version,
                    error,
                });
                if repeated {
                    Offered::Unchanged
                } else {
                    Offered::Rejected
                }
            }
        };
        drop(objects);
        if outcome != Offered::Unchanged {
            self.changed.send_modify(|n| *n += 1);
        }
        outcome
    }

    /// Moves the canary of `key`, when it is `target`, to `percent` of the data planes; false
    /// when there is no such canary (it was promoted, replaced or the object is gone).
    pub fn set_share(&self, key: &ObjectKey, target: &SnapshotRef, percent: i32) -> bool {
        self.with_canary(key, target, |state| {
            let canary = state.canary.as_mut().expect("checked");
            let percent = percent.clamp(0, 100);
            let moved = canary.percent != percent;
            canary.percent = percent;
            moved
        })
    }

    /// Serves the canary of `key`, when it is `target`, to every data plane.
    pub fn promote(&self, key: &ObjectKey, target: &SnapshotRef) -> bool {
        self.with_canary(key, target, |state| {
            state.served = state.canary.take().map(|c| c.target);
            true
        })
    }

    /// Runs `change` on the state of `key` if its canary is `target`; notifies when it says it
    /// changed something.
    fn with_canary(
        &self,
        key: &ObjectKey,
        target: &SnapshotRef,
        change: impl FnOnce(&mut ObjectState) -> bool,
    ) -> bool {
        let mut objects = self
            .objects
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(state) = objects
            .get_mut(key)
            .filter(|s| s.canary.as_ref().is_some_and(|c| c.target.reference() == *target))
        else {
            return false;
        };
        let changed = change(state);
        drop(objects);
        if changed {
            self.changed.send_modify(|n| *n += 1);
        }
        changed
    }

    /// Forgets the rejection of `key`: its current version is the served one again (a refused
    /// edit undone).
    pub fn clear_rejection(&self, key: &ObjectKey) {
        let cleared = self
            .objects
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get_mut(key)
            .and_then(|s| s.rejection.take())
            .is_some();
        if cleared {
            self.changed.send_modify(|n| *n += 1);
        }
    }

    /// Forgets an object (it was deleted). Data planes keep their last-known-good table.
    pub fn remove(&self, key: &ObjectKey) -> bool {
        let removed = self
            .objects
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(key)
            .is_some();
        if removed {
            self.changed.send_modify(|n| *n += 1);
        }
        removed
    }

    /// The state of one object.
    pub fn get(&self, key: &ObjectKey) -> Option<ObjectState> {
        self.objects
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(key)
            .cloned()
    }

    /// The identity of the snapshot served for `key`, if any.
    pub fn served_ref(&self, key: &ObjectKey) -> Option<SnapshotRef> {
        self.get(key).and_then(|s| s.served).map(|s| s.reference())
    }

    /// The identity of the newest version accepted for `key` (the canary's during a rollout).
    pub fn newest_ref(&self, key: &ObjectKey) -> Option<SnapshotRef> {
        self.get(key).and_then(|s| s.newest().map(|s| s.reference()))
    }

    /// Every object, in key order.
    pub fn list(&self) -> Vec<(ObjectKey, ObjectState)> {
        self.objects
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// A receiver that wakes on every change, for the snapshot push.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

/// Whether `version` of `lineage` is not above what `state` already has (served or staged).
fn is_stale(state: &ObjectState, lineage: &str, version: i64) -> bool {
    state
        .newest()
        .is_some_and(|s| s.lineage == lineage && s.version >= version)
}

fn unix_seconds<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    s.serialize_f64(secs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use routing_model::ParseLimits;

    fn config(default: &str) -> ValidatedConfig {
        let doc = format!(
            "apiVersion: cellroute.dev/v1alpha1\nkind: RoutingConfig\nspec: {{defaultPlacement: {default}, placementToEndpoint: {{a: 'http://a', b: 'http://b'}}}}\n"
        );
        routing_model::load(doc.as_bytes(), ParseLimits::default()).unwrap()
    }

    fn key() -> ObjectKey {
        ObjectKey {
            namespace: "ns".into(),
            name: "r".into(),
        }
    }

    #[test]
    fn rejection_keeps_the_served_snapshot() {
        let store = SnapshotStore::default();
        assert_eq!(store.offer(&key(), "u1", 1, Ok(config("a"))), Offered::Accepted);
        assert_eq!(store.offer(&key(), "u1", 2, Err("bad".into())), Offered::Rejected);
        assert_eq!(
            store.offer(&key(), "u1", 2, Err("bad".into())),
            Offered::Unchanged
        );
        let state = store.get(&key()).unwrap();
        assert_eq!(state.served.unwrap().version, 1);
        assert_eq!(state.rejection.unwrap().version, 2);
    }

    #[test]
    fn a_version_keeps_its_changes_from_the_one_served_before_in_its_lineage() {
        let store = SnapshotStore::default();
        store.offer(&key(), "u1", 1, Ok(config("a")));
        assert!(store.get(&key()).unwrap().served.unwrap().changes.is_none());
        let before = store.get(&key()).unwrap().served.unwrap();
        store.offer(&key(), "u1", 2, Ok(config("b")));
        let served = store.get(&key()).unwrap().served.unwrap();
        let changes = served.changes.as_ref().expect("changes from version 1");
        assert_eq!(changes.base, before.reference());
        assert_eq!(
            changes.changes,
            SpecChanges::between(before.config.spec(), served.config.spec())
        );
        assert_eq!(changes.changes.default_placement.as_deref(), Some("b"));
        assert_eq!(served.hash, config("b").hash());
        // A new lineage starts without.
        store.offer(&key(), "u2", 1, Ok(config("a")));
        assert!(store.get(&key()).unwrap().served.unwrap().changes.is_none());
    }

    #[test]
    fn versions_never_go_backwards_within_a_lineage() {
        let store = SnapshotStore::default();
        store.offer(&key(), "u1", 5, Ok(config("a")));
        assert_eq!(store.offer(&key(), "u1", 4, Ok(config("b"))), Offered::Unchanged);
        assert_eq!(store.offer(&key(), "u1", 5, Ok(config("a"))), Offered::Unchanged);
        // A re-created object is a new lineage and starts again at generation 1.
        assert_eq!(store.offer(&key(), "u2", 1, Ok(config("b"))), Offered::Accepted);
        let served = store.get(&key()).unwrap().served.unwrap();
        assert_eq!((served.lineage.as_str(), served.version), ("u2", 1));
    }

    #[test]
    fn a_version_that_cannot_be_delivered_is_rejected_naming_limit_and_size() {
        let candidate = config("a");
        let reference = SnapshotRef {
            lineage: "u1".into(),
            version: 1,
            hash: candidate.hash(),
        };
        let bytes = message_bytes(&key(), &reference, candidate.spec());
        // One byte over: rejected; the previous version keeps being served.
        let store = SnapshotStore::new(bytes - 1);
        assert_eq!(store.offer(&key(), "u1", 1, Ok(config("a"))), Offered::Rejected);
        let state = store.get(&key()).unwrap();
        assert!(state.served.is_none());
        let error = state.rejection.unwrap().error;
        assert!(
            error.contains(&format!("{bytes} bytes")) && error.contains(&format!("{}-byte limit", bytes - 1)),
            "{error}"
        );
        // Exactly at the limit: accepted, and the size is what the publisher sends.
        let store = SnapshotStore::new(bytes);
        assert_eq!(store.offer(&key(), "u1", 1, Ok(config("a"))), Offered::Accepted);
        let served = store.get(&key()).unwrap().served.unwrap();
        let sent = SnapshotMessageRef {
            routing_config: &key().to_string(),
            snapshot: &served.reference(),
            spec: served.config.spec(),
        }
        .to_json();
        assert_eq!(sent.len(), bytes);
    }

    /// A version sized from the one served and its change has the size of its message, counted
    /// whole, whether it shares that one's map (composed from it) or not (read anew).
    #[test]
    fn a_version_sized_from_the_served_one_has_the_size_of_its_message() {
        let store = SnapshotStore::default();
        let mut doc = String::from(
            "apiVersion: cellroute.dev/v1alpha1\nkind: RoutingConfig\nspec:\n  defaultPlacement: a\n  placementToEndpoint: {a: 'http://a', b: 'http://b'}\n  customerToPlacement:\n",
        );
        for i in 0..1_000 {
            doc.push_str(&format!("    c{i}: a\n"));
        }
        let first = routing_model::load(doc.as_bytes(), ParseLimits::default()).unwrap();
        assert_eq!(store.offer(&key(), "u1", 1, Ok(first.clone())), Offered::Accepted);
        let moved = |changes: &[(&str, Option<&str>)]| SpecChanges {
            customer_to_placement: changes
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.map(str::to_owned)))
                .collect(),
            ..SpecChanges::default()
        };
        let shared = first
            .with_changes(&moved(&[
                ("c7", Some("b")),
                ("c8", None),
                ("new\\\"one", Some("b")),
            ]))
            .unwrap();
        let read_anew = routing_model::load(
            doc.replace("    c7: a\n", "    c7: b\n")
                .replace("    c9: a\n", "")
                .as_bytes(),
            ParseLimits::default(),
        )
        .unwrap();
        for (version, candidate) in [(2, shared), (3, read_anew)] {
            let reference = SnapshotRef {
                lineage: "u1".into(),
                version,
                hash: candidate.hash(),
            };
            assert_eq!(
                store.deliverable(&key(), &reference, &candidate),
                Ok(message_bytes(&key(), &reference, candidate.spec()))
            );
            assert_eq!(
                store.offer(&key(), "u1", version, Ok(candidate)),
                Offered::Accepted
            );
            let served = store.get(&key()).unwrap().served.unwrap();
            assert_eq!(
                served.message_bytes,
                message_bytes(&key(), &reference, served.config.spec())
            );
        }
    }

    #[test]
    fn acceptance_clears_an_older_rejection_and_notifies() {
        let store = SnapshotStore::default();
        let rx = store.subscribe();
        store.offer(&key(), "u1", 1, Err("bad".into()));
        store.offer(&key(), "u1", 2, Ok(config("a")));
        assert!(store.get(&key()).unwrap().rejection.is_none());
        assert!(rx.has_changed().unwrap());
        assert!(store.remove(&key()));
        assert!(store.get(&key()).is_none());
    }

    #[test]
    fn a_staged_version_is_the_canary_until_promoted_and_an_immediate_one_ends_it() {
        let store = SnapshotStore::default();
        let staged = Delivery::Staged { percent: 10 };
        // The first version of a lineage has nothing to stage against: served.
        store.offer_delivered(&key(), "u1", 1, Ok(config("a")), None, staged);
        let state = store.get(&key()).unwrap();
        assert!(state.canary.is_none());
        assert_eq!(state.served.unwrap().version, 1);

        store.offer_delivered(&key(), "u1", 2, Ok(config("b")), None, staged);
        let state = store.get(&key()).unwrap();
        assert_eq!(state.served.as_ref().unwrap().version, 1);
        let canary = state.canary.clone().unwrap();
        assert_eq!((canary.target.version, canary.percent), (2, 10));
        assert_eq!(state.newest().unwrap().version, 2);
        // Its changes are from the served version, which its canaries have.
        assert_eq!(canary.target.changes.as_ref().unwrap().base.version, 1);
        // Versions never go backwards, counting the canary.
        assert_eq!(store.offer(&key(), "u1", 2, Ok(config("a"))), Offered::Unchanged);

        let target = canary.target.reference();
        assert!(store.set_share(&key(), &target, 50));
        assert_eq!(store.get(&key()).unwrap().canary.unwrap().percent, 50);
        let other = SnapshotRef {
            version: 9,
            ..target.clone()
        };
        assert!(!store.set_share(&key(), &other, 60), "only the canary it names");
        assert!(store.promote(&key(), &target));
        let state = store.get(&key()).unwrap();
        assert!(state.canary.is_none());
        assert_eq!(state.served.unwrap().version, 2);

        // A revert (or any immediate version) ends a rollout in progress.
        store.offer_delivered(&key(), "u1", 3, Ok(config("a")), None, staged);
        assert!(store.get(&key()).unwrap().canary.is_some());
        assert_eq!(store.offer(&key(), "u1", 4, Ok(config("b"))), Offered::Accepted);
        let state = store.get(&key()).unwrap();
        assert!(state.canary.is_none());
        assert_eq!(state.served.unwrap().version, 4);
    }
}
