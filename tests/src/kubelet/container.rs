//! What the kubelet harness runs for one container of a stored pod: the workspace binary its
//! image names, with the container's `args` and `env` as stored.
//!
//! - **Images.** The harness's image store holds the workspace's binaries, by repository name
//!   whatever the registry and tag: `.../control-plane:TAG` runs `control-plane`,
//!   `.../data-plane:TAG` runs `data-plane`, and `.../pause:TAG` runs nothing (a container that
//!   only holds the pod, reported running). Any other image is an error naming it.
//! - **Arguments and environment.** `args` as stored (an image's entrypoint is its binary;
//!   `command` is not supported), `env` values with `$(VAR)` references expanded as the kubelet
//!   does (to earlier variables of the container; `$$` is a literal `$`), and `fieldRef`s to the
//!   pod's name, namespace, uid, node, ServiceAccount, IP and host IP.
//! - **Volume mounts.** A process of the harness shares the host's file system, so each mount is
//!   a directory of the pod's own, and every argument and variable naming a path under a
//!   `mountPath` names the same path under that directory instead (`--token-file=
//!   /var/run/secrets/cellroute/token` becomes `--token-file=<pod dir>/volumes/cellroute-token/
//!   token`). This path mapping is the only change made to what is stored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, Pod};

/// What to run for a container.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The binary, or none for a pause container.
    pub program: Option<PathBuf>,
    /// Its arguments, with paths mapped.
    pub args: Vec<String>,
    /// Its whole environment.
    pub env: Vec<(String, String)>,
}

/// The workspace binary an image stands for: `Ok(None)` for the pause image.
pub fn binary_for(image: &str, bin_dir: &Path) -> Result<Option<PathBuf>, String> {
    let without_digest = image.split('@').next().unwrap_or(image);
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    let repository = last.split(':').next().unwrap_or(last);
    match repository {
        "control-plane" | "data-plane" => Ok(Some(bin_dir.join(repository))),
        "pause" => Ok(None),
        _ => Err(format!(
            "the kubelet harness has no binary for image {image:?} (it runs control-plane, data-plane and pause images)"
        )),
    }
}

/// Expands `$(NAME)` references to `vars` in `text` as the kubelet does: unknown references
/// stay as written, `$$` is a literal `$`.
pub fn expand(text: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match vars.get(name) {
                Some(value) => out.push_str(value),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// `text` with every path under a mount's `mountPath` moved under that mount's directory. A
/// mount path counts where it starts the text or follows `=`, `:` or `,`, and ends the text or
/// is followed by `/`.
pub fn map_paths(text: &str, mounts: &[(String, PathBuf)]) -> String {
    let mut mounts: Vec<&(String, PathBuf)> = mounts.iter().collect();
    // The longest first, so a mount inside another mount wins.
    mounts.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
    let mut out = String::new();
    let mut i = 0;
    'scan: while i < text.len() {
        let starts_path = i == 0 || matches!(text.as_bytes()[i - 1], b'=' | b':' | b',');
        if starts_path {
            for (mount, dir) in &mounts {
                let mount = mount.trim_end_matches('/');
                if text[i..].starts_with(mount) {
                    let end = i + mount.len();
                    if end == text.len() || text.as_bytes()[end] == b'/' {
                        out.push_str(&dir.display().to_string());
                        i = end;
                        continue 'scan;
                    }
                }
            }
        }
        let c = text[i..].chars().next().expect("a character");
        out.push(c);
        i += c.len_utf8();
    }
    out
}

/// The value of a `fieldRef` of `pod`.
fn field(pod: &Pod, path: &str, pod_ip: &str, host_ip: &str) -> Result<String, String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let value = match path {
        "metadata.name" => meta.name.clone(),
        "metadata.namespace" => meta.namespace.clone(),
        "metadata.uid" => meta.uid.clone(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()),
        "spec.serviceAccountName" => spec.and_then(|s| s.service_account_name.clone()),
        "status.podIP" => Some(pod_ip.to_owned()),
        "status.hostIP" => Some(host_ip.to_owned()),
        other => {
            return Err(format!("the kubelet harness does not support fieldRef {other:?}"));
        }
    };
    Ok(value.unwrap_or_default())
}

/// What to run for `container` of `pod`, whose volumes are the directories `volumes` (by
/// name), with `extra` variables added to its environment.
pub fn launch(
    pod: &Pod,
    container: &Container,
    volumes: &BTreeMap<String, PathBuf>,
    (pod_ip, host_ip): (&str, &str),
    extra: &[(String, String)],
    bin_dir: &Path,
) -> Result<Launch, String> {
    let name = &container.name;
    if container.command.is_some() {
        return Err(format!(
            "container {name}: the kubelet harness runs an image's own entrypoint and does not support `command`"
        ));
    }
    let program = binary_for(container.image.as_deref().unwrap_or_default(), bin_dir)?;
    let mut mounts = Vec::new();
    for mount in container.volume_mounts.iter().flatten() {
        if mount.sub_path.is_some() || mount.sub_path_expr.is_some() {
            return Err(format!(
                "container {name}: the kubelet harness does not support subPath mounts"
            ));
        }
        let dir = volumes.get(&mount.name).ok_or_else(|| {
            format!(
                "container {name} mounts volume {:?}, which the pod does not have",
                mount.name
            )
        })?;
        mounts.push((mount.mount_path.clone(), dir.clone()));
    }
    let mut vars = BTreeMap::new();
    let mut env = Vec::new();
    for var in container.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (_, Some(from)) => match &from.field_ref {
                Some(f) => field(pod, &f.field_path, pod_ip, host_ip)?,
                None => {
                    return Err(format!(
                        "container {name}, variable {}: the kubelet harness supports only fieldRef in valueFrom",
                        var.name
                    ));
                }
            },
            (Some(value), None) => expand(value, &vars),
            (None, None) => String::new(),
        };
        let value = map_paths(&value, &mounts);
        vars.insert(var.name.clone(), value.clone());
        env.push((var.name.clone(), value));
    }
    if container.env_from.is_some() {
        return Err(format!(
            "container {name}: the kubelet harness does not support envFrom"
        ));
    }
    env.extend(extra.iter().cloned());
    env.push((
        "PATH".to_owned(),
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
    ));
    let args = container
        .args
        .iter()
        .flatten()
        .map(|a| map_paths(&expand(a, &vars), &mounts))
        .collect();
    Ok(Launch { program, args, env })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_stand_for_the_workspace_binaries() {
        let bin = Path::new("/bin-dir");
        assert_eq!(
            binary_for("registry.example.com/cellroute/data-plane:0.1.0", bin).unwrap(),
            Some(bin.join("data-plane"))
        );
        assert_eq!(
            binary_for("ghcr.io/cellroute/control-plane@sha256:00", bin).unwrap(),
            Some(bin.join("control-plane"))
        );
        assert_eq!(binary_for("registry.k8s.io/pause:3.9", bin).unwrap(), None);
        assert!(binary_for("nginx:1", bin).unwrap_err().contains("nginx:1"));
    }

    #[test]
    fn expands_references_as_the_kubelet_does() {
        let vars = BTreeMap::from([("POD_NAMESPACE".to_owned(), "default".to_owned())]);
        assert_eq!(expand("$(POD_NAMESPACE)/routes", &vars), "default/routes");
        assert_eq!(expand("$(UNSET)/x", &vars), "$(UNSET)/x");
        assert_eq!(expand("$$(POD_NAMESPACE) $ $x", &vars), "$(POD_NAMESPACE) $ $x");
    }

    #[test]
    fn maps_paths_under_mounts_only() {
        let mounts = vec![
            (
                "/var/run/secrets/cellroute".to_owned(),
                PathBuf::from("/pod/token"),
            ),
            ("/etc/cellroute/inject".to_owned(), PathBuf::from("/pod/inject")),
            ("/etc/cellroute".to_owned(), PathBuf::from("/pod/etc")),
        ];
        assert_eq!(
            map_paths("--token-file=/var/run/secrets/cellroute/token", &mounts),
            "--token-file=/pod/token/token"
        );
        assert_eq!(
            map_paths("--inject-config=/etc/cellroute/inject/sidecar.yaml", &mounts),
            "--inject-config=/pod/inject/sidecar.yaml"
        );
        assert_eq!(map_paths("/etc/cellroute", &mounts), "/pod/etc");
        assert_eq!(
            map_paths("/etc/cellroute-other/x", &mounts),
            "/etc/cellroute-other/x"
        );
        assert_eq!(
            map_paths("--listen=0.0.0.0:8090", &mounts),
            "--listen=0.0.0.0:8090"
        );
        assert_eq!(map_paths("x/etc/cellroute/y", &mounts), "x/etc/cellroute/y");
    }
}
