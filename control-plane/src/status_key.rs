//! The key that authenticates what the control plane records in a RoutingConfig's status.
//!
//! A RoutingConfig's status records the served table (its version and content hash), and while a
//! generation is refused, copies of what is served, so that every replica serves the same version
//! and a replica started meanwhile keeps serving it (see [`crate::served_spec`]). Anyone granted
//! `patch` on the status can write those fields, so a replica must not take them on trust: the
//! status writer signs the record with HMAC-SHA256, and a replica takes a version (and rebuilds a
//! table) only from a record whose signature verifies with this key.
//!
//! The key lives in a Secret in the control plane's own namespace (`<lease-name>-status-key`),
//! which those who may patch RoutingConfig status need not be able to read. The first replica to
//! start creates it; replicas racing to create it all read the one whose create won. This module
//! never rotates or replaces the key: deleting the Secret makes the next replica start create a
//! new one, and records signed with the old key are then refused (and reported) until rewritten.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};

/// The Secret's data key holding the raw key bytes.
pub const SECRET_DATA_KEY: &str = "hmac-sha256";
/// Bytes of a new key (the HMAC-SHA256 block-size recommendation is at least the output size).
const KEY_BYTES: usize = 32;
/// The scheme prefix of every signature.
const SCHEME: &str = "hmac-sha256";

/// The name of the Secret holding the status key of the replicas sharing the Lease `lease_name`.
pub fn secret_name(lease_name: &str) -> String {
    format!("{lease_name}-status-key")
}

/// Why the status key cannot be had; the control plane does not start without it.
#[derive(Debug, thiserror::Error)]
pub enum StatusKeyError {
    /// Reading or creating the Secret failed.
    #[error(
        "cannot {action} the status key Secret {namespace}/{name} (the control plane needs `get` on that Secret and \
         `create` on Secrets in its namespace)"
    )]
    Api {
        /// `read` or `create`.
        action: &'static str,
        /// The Secret's namespace.
        namespace: String,
        /// The Secret's name.
        name: String,
        /// The API error.
        #[source]
        source: Box<kube::Error>,
    },
    /// The Secret exists but holds no usable key.
    #[error(
        "the Secret {namespace}/{name} has no `{SECRET_DATA_KEY}` entry of at least {KEY_BYTES} bytes: delete it and the \
         control plane creates a new key (served specs recorded with the old key are then no longer recovered)"
    )]
    Malformed {
        /// The Secret's namespace.
        namespace: String,
        /// The Secret's name.
        name: String,
    },
    /// The system's random source failed.
    #[error("cannot generate a status key: the system random source failed")]
    Random,
}

/// Why a signature does not authenticate a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// Not `hmac-sha256:<key id>:<mac>`.
    #[error("it is not of the form {SCHEME}:<key id>:<mac>")]
    Malformed,
    /// Made with another key (or claiming to be).
    #[error(
        "it names key {found}, not this control plane's key {expected} (was the status key Secret replaced?)"
    )]
    OtherKey {
        /// The key id in the signature.
        found: String,
        /// This key's id.
        expected: String,
    },
    /// The MAC does not match the record.
    #[error("its MAC does not match the record")]
    Mismatch,
}

/// The HMAC key, with a short public id that names it in signatures and messages.
pub struct StatusKey {
    key: hmac::Key,
    id: String,
}

impl std::fmt::Debug for StatusKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl StatusKey {
    /// A key from its raw bytes.
    pub fn from_bytes(bytes: &[u8]) -> Self {
        let digest = Sha256::new()
            .chain_update(b"cellroute status key id\n")
            .chain_update(bytes)
            .finalize();
        let id = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, bytes),
            id,
        }
    }

    /// The key's id: not secret, it only tells keys apart.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Reads the key from the Secret `namespace/name`, creating the Secret with a fresh random
    /// key if it does not exist. When several replicas create it at once, one create wins and
    /// the others read what it stored.
    pub async fn load_or_create(
        client: &Client,
        namespace: &str,
        name: &str,
    ) -> Result<Self, StatusKeyError> {
        let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
        let api_error = |action, source| StatusKeyError::Api {
            action,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            source: Box::new(source),
        };
        if let Some(secret) = api.get_opt(name).await.map_err(|e| api_error("read", e))? {
            return Self::from_secret(&secret, namespace, name);
        }
        let mut bytes = [0u8; KEY_BYTES];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| StatusKeyError::Random)?;
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some(namespace.to_owned()),
                labels: Some(BTreeMap::from([(
                    "app.kubernetes.io/managed-by".to_owned(),
                    crate::report::FIELD_MANAGER.to_owned(),
                )])),
                annotations: Some(BTreeMap::from([(
                    "cellroute.dev/purpose".to_owned(),
                    "signs the served spec the control plane records in RoutingConfig status".to_owned(),
                )])),
                ..ObjectMeta::default()
            },
            type_: Some("Opaque".to_owned()),
            data: Some(BTreeMap::from([(
                SECRET_DATA_KEY.to_owned(),
                ByteString(bytes.to_vec()),
            )])),
            ..Secret::default()
        };
        match api.create(&PostParams::default(), &secret).await {
            Ok(created) => {
                tracing::info!(secret = %format!("{namespace}/{name}"), "created the status key Secret");
                Self::from_secret(&created, namespace, name)
            }
            Err(kube::Error::Api(status)) if status.code == 409 => {
                // Another replica created it first: use its key.
                let secret = api.get(name).await.map_err(|e| api_error("read", e))?;
                Self::from_secret(&secret, namespace, name)
            }
            Err(e) => Err(api_error("create", e)),
        }
    }

    fn from_secret(secret: &Secret, namespace: &str, name: &str) -> Result<Self, StatusKeyError> {
        let bytes = secret
            .data
            .as_ref()
            .and_then(|d| d.get(SECRET_DATA_KEY))
            .filter(|b| b.0.len() >= KEY_BYTES)
            .ok_or_else(|| StatusKeyError::Malformed {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            })?;
        Ok(Self::from_bytes(&bytes.0))
    }

    /// `hmac-sha256:<key id>:<mac>` of `message`.
    pub fn sign(&self, message: &[u8]) -> String {
        let tag = hmac::sign(&self.key, message);
        format!("{SCHEME}:{}:{}", self.id, URL_SAFE_NO_PAD.encode(tag.as_ref()))
    }

    /// Checks that `signature` is this key's signature of `message` (in constant time).
    pub fn verify(&self, message: &[u8], signature: &str) -> Result<(), SignatureError> {
        let mut parts = signature.splitn(3, ':');
        let (Some(SCHEME), Some(id), Some(mac)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(SignatureError::Malformed);
        };
        if id != self.id {
            return Err(SignatureError::OtherKey {
                found: crate::report::status::truncate(id, 32),
                expected: self.id.clone(),
            });
        }
        let mac = URL_SAFE_NO_PAD
            .decode(mac)
            .map_err(|_| SignatureError::Malformed)?;
        hmac::verify(&self.key, message, &mac).map_err(|_| SignatureError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_only_for_its_message_and_key() {
        let key = StatusKey::from_bytes(&[7; 32]);
        let signature = key.sign(b"record");
        assert!(signature.starts_with(&format!("hmac-sha256:{}:", key.id())));
        assert_eq!(key.verify(b"record", &signature), Ok(()));
        assert_eq!(key.verify(b"record!", &signature), Err(SignatureError::Mismatch));
        let other = StatusKey::from_bytes(&[8; 32]);
        assert!(matches!(
            other.verify(b"record", &signature),
            Err(SignatureError::OtherKey { .. })
        ));
        // Claiming the right key id does not help without the key.
        let forged = format!("hmac-sha256:{}:{}", key.id(), URL_SAFE_NO_PAD.encode([0u8; 32]));
        assert_eq!(key.verify(b"record", &forged), Err(SignatureError::Mismatch));
        for malformed in [
            "",
            "hmac-sha256",
            "sha1:x:y",
            &format!("hmac-sha256:{}:not base64!", key.id()),
        ] {
            assert_eq!(
                key.verify(b"record", malformed),
                Err(SignatureError::Malformed),
                "{malformed}"
            );
        }
    }
}
