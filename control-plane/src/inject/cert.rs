//! The webhook's serving certificate, without manual steps.
//!
//! Self-managed (the chart's default): the control plane keeps a CA and a serving certificate
//! in one Secret of its own namespace (created empty by the chart; it may only get and update
//! that Secret), renews the serving certificate when a third of its validity is left, and keeps
//! the `caBundle` of its MutatingWebhookConfiguration equal to the CA bundle. Every replica runs
//! the same loop: the first to find the Secret empty or due fills it in (an update that carries
//! the resourceVersion it read, so a replica that loses the race reads the winner's instead),
//! and every replica serves what the Secret holds. The CA lives ten years; when it nears its
//! end a new CA is made and the old one stays in the bundle while certificates it signed may
//! still be served.
//!
//! From files (`--inject-tls-cert`/`--inject-tls-key`, for cert-manager): the files are
//! re-read on every check and a changed pair is served from the next handshake on; cert-manager's
//! CA injector keeps the `caBundle`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use base64::Engine as _;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::metrics::Metrics;

/// Secret keys.
const CA_CRT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";
const TLS_CRT: &str = "tls.crt";
const TLS_KEY: &str = "tls.key";

/// Lifetime of a CA the control plane makes.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Certificates start this long before they are made, for clocks that are a little behind.
const BACKDATE: Duration = Duration::from_secs(300);

/// Why the serving certificate could not be set up (retried on the next check).
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// The chart's Secret is missing.
    #[error(
        "the Secret {namespace}/{name} for the injector's certificate does not exist: the chart creates it (helm upgrade restores it), or create an empty one"
    )]
    SecretMissing {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// The MutatingWebhookConfiguration is missing.
    #[error(
        "the MutatingWebhookConfiguration {0} does not exist, so its caBundle cannot be set: install the chart, or fix --inject-webhook-config"
    )]
    WebhookMissing(String),
    /// The API server refused or failed.
    #[error("{what}: {source}")]
    Api {
        /// What was being done.
        what: String,
        /// The error.
        source: kube::Error,
    },
    /// Someone else kept changing the Secret.
    #[error("the Secret {0} kept changing under the control plane; will retry")]
    Contended(String),
    /// A certificate or key could not be made or read.
    #[error("{0}")]
    Crypto(String),
    /// `--inject-tls-cert`/`--inject-tls-key` cannot be read.
    #[error("cannot read {path}: {why}")]
    File {
        /// The file.
        path: String,
        /// What is wrong.
        why: String,
    },
}

fn crypto(what: &str) -> impl Fn(rcgen::Error) -> CertError + '_ {
    move |e| CertError::Crypto(format!("{what}: {e}"))
}

/// The certificate the TLS listener presents; swapped whole when it changes.
#[derive(Debug, Default)]
pub struct Resolver(ArcSwapOption<CertifiedKey>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.load_full()
    }
}

impl Resolver {
    /// Serves `chain_pem` with `key_pem` from the next handshake on.
    pub fn set(&self, chain_pem: &str, key_pem: &str) -> Result<(), CertError> {
        let certs = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| CertError::Crypto(format!("serving certificate: {e}")))?;
        if certs.is_empty() {
            return Err(CertError::Crypto(
                "serving certificate: no certificate in the PEM".to_owned(),
            ));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| CertError::Crypto(format!("serving key: {e}")))?;
        let signing = rustls::crypto::ring::sign::any_supported_type(&key)
            .map_err(|e| CertError::Crypto(format!("serving key: {e}")))?;
        self.0.store(Some(Arc::new(CertifiedKey::new(certs, signing))));
        Ok(())
    }

    /// Whether a certificate is being served.
    pub fn is_set(&self) -> bool {
        self.0.load().is_some()
    }
}

/// Where the serving certificate comes from.
#[derive(Clone)]
pub enum Source {
    /// The control plane makes it, in `secret`, and keeps `webhook`'s caBundle.
    Managed {
        /// The client.
        client: kube::Client,
        /// Namespace of the Secret (the control plane's own).
        namespace: String,
        /// The Secret.
        secret: String,
        /// The MutatingWebhookConfiguration.
        webhook: String,
        /// DNS names and IP addresses the certificate names.
        names: Vec<String>,
        /// Validity of each serving certificate.
        validity: Duration,
    },
    /// PEM files written by someone else (cert-manager).
    Files {
        /// The certificate chain.
        cert: PathBuf,
        /// Its key.
        key: PathBuf,
    },
}

/// What a stored or new certificate set is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Material {
    /// CA certificates, newest first (the `caBundle`).
    pub ca_bundle: String,
    /// The newest CA's key.
    pub ca_key: String,
    /// The serving certificate.
    pub cert: String,
    /// Its key.
    pub key: String,
}

/// What one stored certificate says about itself.
#[derive(Debug, Clone)]
struct Info {
    not_before: i64,
    not_after: i64,
    /// The subject's and issuer's distinguished names as text (rcgen may re-encode the issuer's
    /// name when it signs, so the raw bytes need not match).
    subject: String,
    issuer: String,
    names: Vec<String>,
}

fn info(pem: &str) -> Option<Info> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    let cert = pem.parse_x509().ok()?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::DNSName(d) => names.push((*d).to_owned()),
                x509_parser::extensions::GeneralName::IPAddress(ip) => match ip.len() {
                    4 => names.push(std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*ip).ok()?).to_string()),
                    16 => names.push(std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*ip).ok()?).to_string()),
                    _ => {}
                },
                _ => {}
            }
        }
    }
    names.sort();
    Some(Info {
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        names,
    })
}

/// The PEM blocks of a bundle.
fn pem_blocks(bundle: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current = String::new();
    for line in bundle.lines() {
        current.push_str(line);
        current.push('\n');
        if line.starts_with("-----END ") {
            blocks.push(std::mem::take(&mut current));
        }
    }
    blocks
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// Makes a CA whose name carries its creation time, so certificates it signs can be told from
/// those of a CA made before it.
fn new_ca(now: SystemTime, validity: Duration) -> Result<(String, String), CertError> {
    let key = KeyPair::generate().map_err(crypto("CA key"))?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(crypto("CA"))?;
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "cellroute");
    name.push(DnType::CommonName, format!("cellroute injector CA {}", unix(now)));
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = (now - BACKDATE).into();
    params.not_after = (now + validity).into();
    let cert = params.self_signed(&key).map_err(crypto("CA"))?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn new_leaf(
    ca_pem: &str,
    ca_key: &str,
    names: &[String],
    now: SystemTime,
    validity: Duration,
) -> Result<(String, String), CertError> {
    let ca_key = KeyPair::from_pem(ca_key).map_err(crypto("stored CA key"))?;
    let issuer = Issuer::from_ca_cert_pem(ca_pem, ca_key).map_err(crypto("stored CA"))?;
    let key = KeyPair::generate().map_err(crypto("serving key"))?;
    let mut params = CertificateParams::new(names.to_vec()).map_err(crypto("serving certificate names"))?;
    let mut name = DistinguishedName::new();
    name.push(
        DnType::CommonName,
        names
            .first()
            .cloned()
            .unwrap_or_else(|| "cellroute-injector".to_owned()),
    );
    params.distinguished_name = name;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = (now - BACKDATE).into();
    params.not_after = (now + validity).into();
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(crypto("serving certificate"))?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// The certificate set to store given what is stored (`current`) at `now`: `None` when the
/// stored one is fine, otherwise a renewed one. Renews the serving certificate when a third of
/// its validity is left, when its names differ from `names`, or when it was not signed by the
/// newest CA; makes a new CA when the current one would expire within two serving validities.
pub fn plan(
    current: Option<&Material>,
    names: &[String],
    validity: Duration,
    now: SystemTime,
) -> Result<Option<Material>, CertError> {
    let t = unix(now);
    let mut wanted: Vec<String> = names.to_vec();
    wanted.sort();
    let ca_blocks = current.map(|m| pem_blocks(&m.ca_bundle)).unwrap_or_default();
    let ca = ca_blocks
        .first()
        .and_then(|pem| info(pem).map(|i| (pem.clone(), i)));
    let ca_key_ok = current.is_some_and(|m| KeyPair::from_pem(&m.ca_key).is_ok());
    let ca_fine = match &ca {
        Some((_, i)) => ca_key_ok && i.not_after - t > 2 * secs(validity) && i.not_before <= t,
        None => false,
    };
    let (bundle, ca_pem, ca_key, ca_subject, renewed_ca) = if ca_fine {
        let (pem, i) = ca.expect("checked");
        let m = current.expect("checked");
        (m.ca_bundle.clone(), pem, m.ca_key.clone(), i.subject, false)
    } else {
        let (pem, key) = new_ca(now, CA_VALIDITY.max(validity * 3))?;
        let subject = info(&pem).map(|i| i.subject).unwrap_or_default();
        // Keep older CAs that are still valid: replicas may serve certificates they signed
        // until they read the new Secret.
        let mut bundle = pem.clone();
        for old in &ca_blocks {
            if info(old).is_some_and(|i| i.not_after > t) {
                bundle.push_str(old);
            }
        }
        (bundle, pem, key, subject, true)
    };
    let leaf_fine = !renewed_ca
        && current.is_some_and(|m| {
            PrivateKeyDer::from_pem_slice(m.key.as_bytes()).is_ok()
                && info(&m.cert).is_some_and(|i| {
                    // Certificates are backdated for clock skew: a third of the validity asked for.
                    let lifetime = (i.not_after - i.not_before - secs(BACKDATE)).max(1);
                    i.issuer == ca_subject
                        && i.names == wanted
                        && t >= i.not_before
                        && t < i.not_after - lifetime / 3
                })
        });
    if leaf_fine {
        return Ok(None);
    }
    let (cert, key) = new_leaf(&ca_pem, &ca_key, names, now, validity)?;
    Ok(Some(Material {
        ca_bundle: bundle,
        ca_key,
        cert,
        key,
    }))
}

/// When the served certificate expires (Unix seconds), for the metric.
pub fn not_after(cert_pem: &str) -> Option<i64> {
    info(cert_pem).map(|i| i.not_after)
}

fn material_of(secret: &Secret) -> Option<Material> {
    let data = secret.data.as_ref()?;
    let get = |k: &str| data.get(k).and_then(|b| String::from_utf8(b.0.clone()).ok());
    Some(Material {
        ca_bundle: get(CA_CRT)?,
        ca_key: get(CA_KEY)?,
        cert: get(TLS_CRT)?,
        key: get(TLS_KEY)?,
    })
}

/// Brings the Secret up to date and returns what to serve.
async fn sync_managed(source: &Source, metrics: &Metrics) -> Result<Material, CertError> {
    let Source::Managed {
        client,
        namespace,
        secret,
        names,
        validity,
        ..
    } = source
    else {
        unreachable!("sync_managed is only called for a managed source");
    };
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let api = |what: &str| {
        let what = format!("{what} the Secret {namespace}/{secret}");
        move |source| CertError::Api { what, source }
    };
    let mut material = None;
    for _ in 0..3 {
        let mut stored = secrets
            .get_opt(secret)
            .await
            .map_err(api("cannot read"))?
            .ok_or_else(|| CertError::SecretMissing {
                namespace: namespace.clone(),
                name: secret.clone(),
            })?;
        let current = material_of(&stored);
        match plan(current.as_ref(), names, *validity, SystemTime::now())? {
            None => {
                material = current;
                break;
            }
            Some(renewed) => {
                let data: BTreeMap<String, ByteString> = [
                    (CA_CRT, &renewed.ca_bundle),
                    (CA_KEY, &renewed.ca_key),
                    (TLS_CRT, &renewed.cert),
                    (TLS_KEY, &renewed.key),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), ByteString(v.as_bytes().to_vec())))
                .collect();
                stored.data = Some(data);
                stored.string_data = None;
                // `replace` sends the resourceVersion just read: a concurrent writer makes this
                // fail with 409, and the next round serves what it wrote.
                match secrets.replace(secret, &PostParams::default(), &stored).await {
                    Ok(_) => {
                        tracing::info!(secret = %format!("{namespace}/{secret}"), names = ?names, "renewed the injector's serving certificate");
                        metrics.inject_certificate_renewals.inc();
                        material = Some(renewed);
                        break;
                    }
                    Err(kube::Error::Api(status)) if status.code == 409 => continue,
                    Err(e) => return Err(api("cannot update")(e)),
                }
            }
        }
    }
    material.ok_or_else(|| CertError::Contended(format!("{namespace}/{secret}")))
}

/// Sets every webhook's `caBundle` of the MutatingWebhookConfiguration `name` to `bundle`,
/// with a JSON patch that tests each entry's name first, so a concurrent change of the list
/// (a `helm upgrade`) fails the patch instead of writing into the wrong entry.
async fn sync_ca_bundle(client: &kube::Client, name: &str, bundle: &str) -> Result<(), CertError> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let config = api
        .get_opt(name)
        .await
        .map_err(|source| CertError::Api {
            what: format!("cannot read the MutatingWebhookConfiguration {name}"),
            source,
        })?
        .ok_or_else(|| CertError::WebhookMissing(name.to_owned()))?;
    let encoded = base64::engine::general_purpose::STANDARD.encode(bundle.as_bytes());
    let mut ops = Vec::new();
    for (i, webhook) in config.webhooks.iter().flatten().enumerate() {
        if webhook.client_config.ca_bundle.as_ref().map(|b| b.0.as_slice()) != Some(bundle.as_bytes()) {
            ops.push(serde_json::json!({"op": "test", "path": format!("/webhooks/{i}/name"), "value": webhook.name}));
            ops.push(serde_json::json!({"op": "add", "path": format!("/webhooks/{i}/clientConfig/caBundle"), "value": encoded}));
        }
    }
    if ops.is_empty() {
        return Ok(());
    }
    let patch: json_patch::Patch =
        serde_json::from_value(serde_json::Value::from(ops)).expect("well-formed JSON patch");
    api.patch(name, &PatchParams::default(), &Patch::<()>::Json(patch))
        .await
        .map_err(|source| CertError::Api {
            what: format!("cannot set the caBundle of the MutatingWebhookConfiguration {name}"),
            source,
        })?;
    tracing::info!(webhook = name, "set the injector's caBundle");
    Ok(())
}

fn read(path: &PathBuf) -> Result<String, CertError> {
    std::fs::read_to_string(path).map_err(|e| CertError::File {
        path: path.display().to_string(),
        why: e.to_string(),
    })
}

/// One check: what to serve now, and the CA bundle to publish (when the control plane makes
/// the certificate).
async fn sync(source: &Source, metrics: &Metrics) -> Result<(String, String, Option<String>), CertError> {
    match source {
        Source::Managed { .. } => {
            let m = sync_managed(source, metrics).await?;
            Ok((m.cert, m.key, Some(m.ca_bundle)))
        }
        Source::Files { cert, key } => Ok((read(cert)?, read(key)?, None)),
    }
}

/// Serves `cert` and `key` unless they are already served, then publishes `ca_bundle`: in this
/// order, so the API server never trusts a CA before this replica presents what it signed.
async fn apply(
    source: &Source,
    resolver: &Resolver,
    served: &mut Option<(String, String)>,
    (cert, key, ca_bundle): (String, String, Option<String>),
    metrics: &Metrics,
) -> Result<(), CertError> {
    let pair = (cert, key);
    if served.as_ref() != Some(&pair) {
        resolver.set(&pair.0, &pair.1)?;
        if let Some(t) = not_after(&pair.0) {
            metrics.inject_certificate_expiry.set(t);
        }
        *served = Some(pair);
    }
    if let (Some(bundle), Source::Managed { client, webhook, .. }) = (ca_bundle, source) {
        sync_ca_bundle(client, webhook, &bundle).await?;
    }
    Ok(())
}

/// Keeps `resolver` serving a valid certificate from `source`, checking every `every` (and
/// every few seconds while a check fails), until `stop`. `ready` opens after the first check
/// that served a certificate and published its CA, and stays open (a later failure leaves the
/// served certificate in place).
pub async fn keep(
    source: Source,
    resolver: Arc<Resolver>,
    every: Duration,
    metrics: Arc<Metrics>,
    ready: crate::source::Readiness,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut served: Option<(String, String)> = None;
    let mut failures = 0u32;
    loop {
        let result = match sync(&source, &metrics).await {
            Ok(found) => apply(&source, &resolver, &mut served, found, &metrics).await,
            Err(e) => Err(e),
        };
        let wait = match result {
            Ok(()) => {
                failures = 0;
                ready.set();
                every
            }
            Err(e) => {
                failures += 1;
                tracing::error!(error = %e, serving = resolver.is_set(), "cannot set up the injector's certificate; retrying");
                // 1 s, 2 s, 4 s, ... up to the check interval.
                Duration::from_secs(1u64 << failures.min(6)).min(every)
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn names() -> Vec<String> {
        vec!["cp.ns.svc".to_owned(), "127.0.0.1".to_owned()]
    }

    #[test]
    fn makes_keeps_and_renews() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let first = plan(None, &names(), 30 * DAY, t0)
            .unwrap()
            .expect("a first certificate");
        let leaf = info(&first.cert).expect("leaf");
        let mut sorted = names();
        sorted.sort();
        assert_eq!(leaf.names, sorted);
        assert_eq!(leaf.issuer, info(&first.ca_bundle).unwrap().subject);
        // Fine until a third of its 30 days is left.
        assert_eq!(
            plan(Some(&first), &names(), 30 * DAY, t0 + 19 * DAY).unwrap(),
            None
        );
        let renewed = plan(Some(&first), &names(), 30 * DAY, t0 + 21 * DAY)
            .unwrap()
            .expect("renewed");
        assert_eq!(
            renewed.ca_bundle, first.ca_bundle,
            "same CA, so the caBundle stays"
        );
        assert_ne!(renewed.cert, first.cert);
        // Other names: a new certificate at once.
        let other = plan(Some(&first), &["other.ns.svc".to_owned()], 30 * DAY, t0)
            .unwrap()
            .expect("new names");
        assert_eq!(info(&other.cert).unwrap().names, ["other.ns.svc"]);
    }

    #[test]
    fn a_new_ca_keeps_the_old_one_in_the_bundle() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let first = plan(None, &names(), 365 * DAY, t0).unwrap().unwrap();
        // Within two validities of the CA's end: a new CA; the old one, still valid, stays.
        let late = t0 + CA_VALIDITY - 700 * DAY;
        let next = plan(Some(&first), &names(), 365 * DAY, late)
            .unwrap()
            .expect("new CA");
        let blocks = pem_blocks(&next.ca_bundle);
        assert_eq!(blocks.len(), 2);
        assert_eq!(blocks[1], first.ca_bundle);
        assert_eq!(
            info(&next.cert).unwrap().issuer,
            info(&blocks[0]).unwrap().subject
        );
    }

    #[test]
    fn garbage_in_the_secret_is_replaced() {
        let t0 = SystemTime::now();
        let junk = Material {
            ca_bundle: "not a certificate".to_owned(),
            ca_key: "nope".to_owned(),
            cert: String::new(),
            key: String::new(),
        };
        let fixed = plan(Some(&junk), &names(), 30 * DAY, t0)
            .unwrap()
            .expect("replaced");
        assert!(info(&fixed.cert).is_some());
        let resolver = Resolver::default();
        resolver.set(&fixed.cert, &fixed.key).expect("rustls takes it");
        assert!(resolver.is_set());
    }
}
