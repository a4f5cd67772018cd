//! Who may subscribe, and as whom.
//!
//! A data plane's identity comes from its credentials, never from its hello:
//! - in a cluster, data planes present projected ServiceAccount tokens with the audience
//!   `cellroute`. The control plane asks the apiserver (TokenReview) who they are: the
//!   ServiceAccount's namespace and name, and the pod when the token is bound to one
//!   (`status.user.extra["authentication.kubernetes.io/pod-name"]`). The review must say
//!   `authenticated` and list `cellroute` in `status.audiences`. A data plane may subscribe only
//!   to RoutingConfigs of its own namespace unless configured otherwise;
//! - out of a cluster, `--static-token-file` lists accepted tokens, one per line, and the line a
//!   token is on is who its holder is;
//! - `--allow-unauthenticated` makes everyone the one anonymous identity.
//!
//! Tokens are compared as SHA-256 digests in constant time. Reviews are cached briefly by token
//! digest (never by the token itself): successes for [`REVIEW_TTL`], refusals for
//! [`REFUSAL_TTL`], apiserver failures not at all, at most [`REVIEW_CACHE_ENTRIES`] entries.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use kube::api::PostParams;
use kube::{Api, Client};
use routing_model::protocol::{check_data_plane_id, truncate};
use serde::Serialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::metrics::Metrics;

/// The audience data-plane tokens must carry.
pub const AUDIENCE: &str = "cellroute";
/// The `extra` key of a TokenReview naming the pod a token is bound to.
pub const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";
/// How long a successful review is reused for the same token.
pub const REVIEW_TTL: Duration = Duration::from_secs(10);
/// How long a refused token stays refused without asking the apiserver again.
pub const REFUSAL_TTL: Duration = Duration::from_secs(2);
/// Most reviews remembered at once.
pub const REVIEW_CACHE_ENTRIES: usize = 4096;
/// Longest user name kept or logged (a TokenReview's user name comes from the apiserver, but an
/// authenticator behind it may be generous).
const MAX_USER_BYTES: usize = 256;

/// Who a data plane is, as its credentials say.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Principal {
    /// A Kubernetes ServiceAccount, and the pod when the token is bound to one.
    ServiceAccount {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The pod the token was issued to, if it is bound to one.
        #[serde(skip_serializing_if = "Option::is_none")]
        pod: Option<String>,
    },
    /// Another user a TokenReview authenticated (admitted only with `--allow-cross-namespace`).
    User {
        /// The user name.
        name: String,
    },
    /// The holder of the token on this line of `--static-token-file` (1-based).
    StaticToken {
        /// Line number.
        line: usize,
    },
    /// Anyone (`--allow-unauthenticated`).
    Anonymous,
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ServiceAccount {
                namespace,
                name,
                pod: Some(pod),
            } => write!(f, "system:serviceaccount:{namespace}:{name} (pod {pod})"),
            Self::ServiceAccount { namespace, name, .. } => {
                write!(f, "system:serviceaccount:{namespace}:{name}")
            }
            Self::User { name } => f.write_str(name),
            Self::StaticToken { line } => write!(f, "static token (line {line})"),
            Self::Anonymous => f.write_str("anonymous"),
        }
    }
}

/// Who a data plane is, and what that lets it do.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Who, as the credentials say: with the hello's id, the key of its registry record.
    pub principal: Principal,
    /// User name, for logs and `/debug/dataplanes`: `system:serviceaccount:NS:NAME`,
    /// `static-token`, `anonymous`.
    pub user: String,
    /// The namespace it may subscribe in; `None` means any.
    pub namespace: Option<String>,
}

/// Why a data plane was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    /// No bearer token.
    #[error("send a bearer token: `Authorization: Bearer <token>`")]
    Missing,
    /// The token is not accepted.
    #[error("the bearer token is not valid")]
    Invalid,
    /// The review did not list the audience data-plane tokens must carry.
    #[error(
        "the token is not for audience `{AUDIENCE}` (issue it with that audience, as the chart's projected token does)"
    )]
    Audience,
    /// TokenReview authenticated something that is not a ServiceAccount, and subscriptions are
    /// scoped to the ServiceAccount's namespace.
    #[error(
        "only ServiceAccount tokens may subscribe (or run the control plane with --allow-cross-namespace)"
    )]
    NotAServiceAccount,
    /// The apiserver could not be asked.
    #[error("cannot review the token: {0}")]
    Review(String),
}

impl AuthError {
    /// The `result` label of `cellroute_token_reviews_total` for a review that ended this way.
    fn review_result(&self) -> &'static str {
        match self {
            Self::Missing | Self::Invalid => "unauthenticated",
            Self::Audience => "wrong-audience",
            Self::NotAServiceAccount => "not-a-service-account",
            Self::Review(_) => "error",
        }
    }
}

/// How tokens are checked.
pub enum Authenticator {
    /// SHA-256 digests of the accepted tokens, with their line numbers.
    Static(Vec<([u8; 32], usize)>),
    /// Kubernetes TokenReview with audience `cellroute`.
    TokenReview(Reviewer),
    /// Everyone may connect (explicitly requested, for local demos).
    Anonymous,
}

/// TokenReview with a short-lived cache.
pub struct Reviewer {
    client: Client,
    cross_namespace: bool,
    cache: quick_cache::sync::Cache<[u8; 32], Cached>,
    metrics: Arc<Metrics>,
}

#[derive(Clone)]
struct Cached {
    until: Instant,
    outcome: Result<Identity, AuthError>,
}

impl Authenticator {
    /// Reads a static token file: one token per line, blank lines and `#` comments ignored.
    /// A token listed twice is one identity, the first line it is on.
    pub fn from_file(path: &Path) -> std::io::Result<Self> {
        let text = std::fs::read_to_string(path)?;
        let mut seen = HashMap::new();
        for (index, line) in text.lines().enumerate() {
            let token = line.trim();
            if token.is_empty() || token.starts_with('#') {
                continue;
            }
            let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
            seen.entry(digest).or_insert(index + 1);
        }
        if seen.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} holds no token", path.display()),
            ));
        }
        let mut tokens: Vec<_> = seen.into_iter().collect();
        tokens.sort_by_key(|(_, line)| *line);
        Ok(Self::Static(tokens))
    }

    /// TokenReview against `client`'s apiserver.
    pub fn token_review(client: Client, cross_namespace: bool, metrics: Arc<Metrics>) -> Self {
        Self::TokenReview(Reviewer {
            client,
            cross_namespace,
            cache: quick_cache::sync::Cache::new(REVIEW_CACHE_ENTRIES),
            metrics,
        })
    }

    /// Authenticates a request from its headers.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Identity, AuthError> {
        let token = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(routing_model::protocol::bearer_token);
        match self {
            Self::Anonymous => Ok(Identity {
                principal: Principal::Anonymous,
                user: "anonymous".to_owned(),
                namespace: None,
            }),
            Self::Static(tokens) => {
                let token = token.ok_or(AuthError::Missing)?;
                let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
                // Compare against every entry so timing does not reveal which one matched.
                let mut found = 0usize;
                for (candidate, line) in tokens {
                    let hit = usize::from(candidate.ct_eq(&digest).unwrap_u8());
                    found |= hit * *line;
                }
                if found == 0 {
                    return Err(AuthError::Invalid);
                }
                Ok(Identity {
                    principal: Principal::StaticToken { line: found },
                    user: "static-token".to_owned(),
                    namespace: None,
                })
            }
            Self::TokenReview(reviewer) => reviewer.review(token.ok_or(AuthError::Missing)?).await,
        }
    }
}

impl Reviewer {
    async fn review(&self, token: &str) -> Result<Identity, AuthError> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(hit) = self.cache.get(&digest)
            && hit.until > Instant::now()
        {
            self.metrics.token_review_cache_hits.inc();
            return hit.outcome;
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(vec![AUDIENCE.to_owned()]),
            },
            ..Default::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let outcome = match api.create(&PostParams::default(), &review).await {
            Ok(reviewed) => judge(&reviewed.status.unwrap_or_default(), self.cross_namespace),
            Err(e) => Err(AuthError::Review(truncate(&e.to_string(), 512))),
        };
        let result = match &outcome {
            Ok(_) => "authenticated",
            Err(e) => e.review_result(),
        };
        self.metrics.token_reviewed(result);
        let ttl = match &outcome {
            Ok(_) => Some(REVIEW_TTL),
            // The apiserver may be back in a moment: ask again next time.
            Err(AuthError::Review(_)) => None,
            Err(_) => Some(REFUSAL_TTL),
        };
        if let Some(ttl) = ttl {
            self.cache.insert(
                digest,
                Cached {
                    until: Instant::now() + ttl,
                    outcome: outcome.clone(),
                },
            );
        }
        outcome
    }
}

/// What a TokenReview's status makes of a data plane: who it is, or why it is refused.
pub fn judge(status: &TokenReviewStatus, cross_namespace: bool) -> Result<Identity, AuthError> {
    if status.authenticated != Some(true) {
        return Err(AuthError::Invalid);
    }
    if !status
        .audiences
        .as_ref()
        .is_some_and(|a| a.iter().any(|a| a == AUDIENCE))
    {
        return Err(AuthError::Audience);
    }
    let user = status.user.clone().unwrap_or_default();
    let username = user.username.unwrap_or_default();
    let service_account = username
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
        .filter(|(ns, name)| !ns.is_empty() && !name.is_empty());
    let principal = match service_account {
        Some((namespace, name)) => {
            let pod = user
                .extra
                .as_ref()
                .and_then(|extra| extra.get(POD_NAME_EXTRA))
                .and_then(|pods| match pods.as_slice() {
                    [pod] => Some(pod.clone()),
                    _ => None,
                });
            Principal::ServiceAccount {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                pod,
            }
        }
        None if cross_namespace && !username.is_empty() => Principal::User {
            name: truncate(&username, MAX_USER_BYTES),
        },
        None => return Err(AuthError::NotAServiceAccount),
    };
    let namespace = match (&principal, cross_namespace) {
        (Principal::ServiceAccount { namespace, .. }, false) => Some(namespace.clone()),
        _ => None,
    };
    Ok(Identity {
        principal,
        user: truncate(&username, MAX_USER_BYTES),
        namespace,
    })
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

    /// Whether this identity may call itself data plane `id`: a Kubernetes object name, and the
    /// pod's own name when the token is bound to a pod.
    pub fn may_use_id(&self, id: &str) -> Result<(), String> {
        check_data_plane_id(id)?;
        match &self.principal {
            Principal::ServiceAccount { pod: Some(pod), .. } if pod != id => Err(format!(
                "this token was issued to pod `{pod}`, so its data plane must call itself `{pod}`, not `{id}` (set the data plane's --id, or POD_NAME, to the pod's name)"
            )),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::authentication::v1::UserInfo;
    use std::collections::BTreeMap;

    fn status(username: &str, audiences: &[&str], pod: Option<&str>) -> TokenReviewStatus {
        TokenReviewStatus {
            authenticated: Some(true),
            audiences: Some(audiences.iter().map(|a| (*a).to_owned()).collect()),
            user: Some(UserInfo {
                username: Some(username.to_owned()),
                extra: pod.map(|p| BTreeMap::from([(POD_NAME_EXTRA.to_owned(), vec![p.to_owned()])])),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_review_must_list_the_cellroute_audience() {
        let sa = "system:serviceaccount:ns:dp";
        assert!(judge(&status(sa, &["cellroute"], None), false).is_ok());
        for audiences in [&[][..], &["https://kubernetes.default.svc"][..]] {
            let err = judge(&status(sa, audiences, None), false).unwrap_err();
            assert!(matches!(err, AuthError::Audience), "{audiences:?}: {err}");
        }
        let mut missing = status(sa, &["cellroute"], None);
        missing.audiences = None;
        assert!(matches!(judge(&missing, false), Err(AuthError::Audience)));
        let mut refused = status(sa, &["cellroute"], None);
        refused.authenticated = Some(false);
        assert!(matches!(judge(&refused, false), Err(AuthError::Invalid)));
    }

    #[test]
    fn service_accounts_are_scoped_and_carry_their_pod() {
        let id = judge(
            &status("system:serviceaccount:ns-a:dp", &["cellroute"], Some("web-1")),
            false,
        )
        .unwrap();
        assert_eq!(
            id.principal,
            Principal::ServiceAccount {
                namespace: "ns-a".into(),
                name: "dp".into(),
                pod: Some("web-1".into())
            }
        );
        assert_eq!(id.namespace.as_deref(), Some("ns-a"));
        assert!(id.may_use_id("web-1").is_ok());
        let err = id.may_use_id("web-2").unwrap_err();
        assert!(err.contains("issued to pod `web-1`"), "{err}");
        assert!(id.may_use_id("Web_1").is_err());
        assert!(id.may_subscribe("ns-a/routes").is_ok());
        assert!(id.may_subscribe("ns-b/routes").is_err());
        // The same name in two namespaces is two identities.
        let other = judge(
            &status("system:serviceaccount:ns-b:dp", &["cellroute"], None),
            false,
        )
        .unwrap();
        assert_ne!(id.principal, other.principal);
    }

    #[test]
    fn other_users_need_cross_namespace() {
        let user = status("alice", &["cellroute"], None);
        assert!(matches!(judge(&user, false), Err(AuthError::NotAServiceAccount)));
        let id = judge(&user, true).unwrap();
        assert_eq!(id.principal, Principal::User { name: "alice".into() });
        assert_eq!(id.namespace, None);
    }

    #[tokio::test]
    async fn static_tokens_are_identified_by_their_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, "# comment\none\n\n  two  \none\n").unwrap();
        let auth = Authenticator::from_file(&path).unwrap();
        let who = |token: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(
                axum::http::header::AUTHORIZATION,
                format!("Bearer {token}").parse().unwrap(),
            );
            let auth = &auth;
            async move { auth.authenticate(&headers).await.map(|i| i.principal) }
        };
        assert_eq!(who("one").await.unwrap(), Principal::StaticToken { line: 2 });
        assert_eq!(who("two").await.unwrap(), Principal::StaticToken { line: 4 });
        assert!(matches!(who("three").await, Err(AuthError::Invalid)));
        assert!(matches!(
            auth.authenticate(&HeaderMap::new()).await,
            Err(AuthError::Missing)
        ));
    }
}
