//! Who may subscribe, and to what.
//!
//! In a cluster, data planes present projected ServiceAccount tokens with the audience
//! `cellroute`; the control plane asks the apiserver (TokenReview) who they are, and lets a data
//! plane subscribe only to RoutingConfigs in its own namespace unless configured otherwise. Out of
//! a cluster, `--static-token-file` lists accepted tokens, one per line. Tokens are compared as
//! SHA-256 digests in constant time.

use std::collections::HashSet;
use std::path::Path;

use axum::http::HeaderMap;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::PostParams;
use kube::{Api, Client};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The audience data-plane tokens must carry.
pub const AUDIENCE: &str = "cellroute";

/// Who a data plane is.
#[derive(Debug, Clone)]
pub struct Identity {
    /// User name (for logs): `system:serviceaccount:NS:NAME`, or `static-token`.
    pub user: String,
    /// The namespace it may subscribe in; `None` means any.
    pub namespace: Option<String>,
}

/// Why a data plane was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No bearer token.
    #[error("send a bearer token: `Authorization: Bearer <token>`")]
    Missing,
    /// The token is not accepted.
    #[error("the bearer token is not valid")]
    Invalid,
    /// The apiserver could not be asked.
    #[error("cannot review the token: {0}")]
    Review(String),
}

/// How tokens are checked.
pub enum Authenticator {
    /// SHA-256 digests of the accepted tokens.
    Static(HashSet<[u8; 32]>),
    /// Kubernetes TokenReview with audience `cellroute`.
    TokenReview {
        /// API client.
        client: Client,
        /// Let a data plane subscribe to RoutingConfigs of any namespace.
        cross_namespace: bool,
    },
    /// Everyone may connect (explicitly requested, for local demos).
    Anonymous,
}

impl Authenticator {
    /// Reads a static token file: one token per line, blank lines and `#` comments ignored.
    pub fn from_file(path: &Path) -> std::io::Result<Self> {
        let text = std::fs::read_to_string(path)?;
        let tokens: HashSet<[u8; 32]> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|t| Sha256::digest(t.as_bytes()).into())
            .collect();
        if tokens.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} holds no token", path.display()),
            ));
        }
        Ok(Self::Static(tokens))
    }

    /// Authenticates a request from its headers.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Identity, AuthError> {
        let token = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(routing_model::protocol::bearer_token);
        match self {
            Self::Anonymous => Ok(Identity {
                user: token.map_or("anonymous", |_| "anonymous-with-token").to_owned(),
                namespace: None,
            }),
            Self::Static(tokens) => {
                let token = token.ok_or(AuthError::Missing)?;
                let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
                // Compare against every entry so timing does not reveal which one matched.
                let found = tokens
                    .iter()
                    .fold(0u8, |acc, t| acc | t.ct_eq(&digest).unwrap_u8());
                if found == 1 {
                    Ok(Identity {
                        user: "static-token".to_owned(),
                        namespace: None,
                    })
                } else {
                    Err(AuthError::Invalid)
                }
            }
            Self::TokenReview {
                client,
                cross_namespace,
            } => {
                let token = token.ok_or(AuthError::Missing)?;
                let review = TokenReview {
                    spec: TokenReviewSpec {
                        token: Some(token.to_owned()),
                        audiences: Some(vec![AUDIENCE.to_owned()]),
                    },
                    ..Default::default()
                };
                let api: Api<TokenReview> = Api::all(client.clone());
                let reviewed = api
                    .create(&PostParams::default(), &review)
                    .await
                    .map_err(|e| AuthError::Review(e.to_string()))?;
                let status = reviewed.status.unwrap_or_default();
                if status.authenticated != Some(true) {
                    return Err(AuthError::Invalid);
                }
                let user = status.user.and_then(|u| u.username).unwrap_or_default();
                let namespace = user
                    .strip_prefix("system:serviceaccount:")
                    .and_then(|rest| rest.split_once(':'))
                    .map(|(ns, _)| ns.to_owned());
                if namespace.is_none() && !cross_namespace {
                    // Only ServiceAccounts have a namespace to scope the subscription to.
                    return Err(AuthError::Invalid);
                }
                Ok(Identity {
                    user,
                    namespace: if *cross_namespace { None } else { namespace },
                })
            }
        }
    }
}

impl Identity {
    /// Whether this identity may subscribe to `namespace/name`.
    pub fn may_subscribe(&self, object: &str) -> Result<(), String> {
        let (namespace, _) = routing_model::protocol::split_object(object);
        match &self.namespace {
            Some(own) if own != namespace => Err(format!(
                "{} may only subscribe to RoutingConfigs in namespace `{own}`, not `{object}`",
                self.user
            )),
            _ => Ok(()),
        }
    }
}
