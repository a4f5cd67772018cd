//! RoutingConfig files for tests: rendering them, and replacing them the way the real world does.
//!
//! A data plane must notice a new config however it lands, and there are three common ways:
//!
//! - [`write_in_place`]: truncate and rewrite the same inode (`echo > file`, some editors). A
//!   reader can see the file empty or half written in between.
//! - [`write_replace`]: write a temporary file next to it and rename it over the old one (most
//!   editors, `kubectl cp`, config management). The watched inode disappears.
//! - [`ConfigMapDir`]: what kubelet does for a mounted ConfigMap. `routing.yaml` is a symlink to
//!   `..data/routing.yaml`, `..data` is a symlink to a timestamped directory, and an update
//!   writes a new timestamped directory and renames a `..data_tmp` symlink over `..data`. The
//!   file the data plane was told about never changes at all; only a symlink in its directory
//!   does.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The `apiVersion` every valid RoutingConfig declares.
pub const API_VERSION: &str = "cellroute.dev/v1alpha1";

/// A RoutingConfig under construction; [`Routes::render`] turns it into YAML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routes {
    customer_header: Option<String>,
    default_placement: String,
    customers: Vec<(String, String)>,
    placements: Vec<(String, String)>,
}

impl Routes {
    /// A config whose default placement is `default_placement`, with no customers or endpoints.
    pub fn new(default_placement: &str) -> Self {
        Self {
            customer_header: None,
            default_placement: default_placement.to_owned(),
            customers: Vec::new(),
            placements: Vec::new(),
        }
    }

    /// Sets `spec.customerHeader`.
    pub fn header(mut self, name: &str) -> Self {
        self.customer_header = Some(name.to_owned());
        self
    }

    /// Maps `customer` to `placement` (replacing an earlier mapping of the same customer).
    pub fn customer(mut self, customer: &str, placement: &str) -> Self {
        self.customers.retain(|(c, _)| c != customer);
        self.customers.push((customer.to_owned(), placement.to_owned()));
        self
    }

    /// Maps `placement` to `endpoint` (replacing an earlier endpoint of the same placement).
    pub fn placement(mut self, placement: &str, endpoint: &str) -> Self {
        self.placements.retain(|(p, _)| p != placement);
        self.placements.push((placement.to_owned(), endpoint.to_owned()));
        self
    }

    /// Removes `customer`'s mapping.
    pub fn without_customer(mut self, customer: &str) -> Self {
        self.customers.retain(|(c, _)| c != customer);
        self
    }

    /// The placement `customer` is routed to by this config (the default when unlisted).
    pub fn placement_of(&self, customer: &str) -> &str {
        self.customers
            .iter()
            .find(|(c, _)| c == customer)
            .map_or(self.default_placement.as_str(), |(_, p)| p.as_str())
    }

    /// The endpoint of `placement`, if it has one.
    pub fn endpoint_of(&self, placement: &str) -> Option<&str> {
        self.placements
            .iter()
            .find(|(p, _)| p == placement)
            .map(|(_, e)| e.as_str())
    }

    /// The YAML document. Every scalar is double-quoted with JSON escapes, which YAML reads
    /// back unchanged, so odd customer ids survive the round trip.
    pub fn render(&self) -> String {
        let mut out = format!(
            "apiVersion: {API_VERSION}\nkind: RoutingConfig\nmetadata:\n  name: routes\n  namespace: default\nspec:\n"
        );
        if let Some(header) = &self.customer_header {
            out.push_str(&format!("  customerHeader: {}\n", quote(header)));
        }
        out.push_str(&format!(
            "  defaultPlacement: {}\n",
            quote(&self.default_placement)
        ));
        push_map(&mut out, "customerToPlacement", &self.customers);
        push_map(&mut out, "placementToEndpoint", &self.placements);
        out
    }

    /// The same config as a JSON document (JSON is valid YAML, and the data plane reads both).
    pub fn render_json(&self) -> String {
        let map = |pairs: &[(String, String)]| -> serde_json::Map<String, serde_json::Value> {
            pairs
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::from(v.as_str())))
                .collect()
        };
        let mut spec = serde_json::json!({
            "defaultPlacement": self.default_placement,
            "customerToPlacement": map(&self.customers),
            "placementToEndpoint": map(&self.placements),
        });
        if let Some(header) = &self.customer_header {
            spec["customerHeader"] = header.as_str().into();
        }
        serde_json::json!({
            "apiVersion": API_VERSION,
            "kind": "RoutingConfig",
            "metadata": {"name": "routes"},
            "spec": spec,
        })
        .to_string()
    }
}

fn quote(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

fn push_map(out: &mut String, key: &str, pairs: &[(String, String)]) {
    if pairs.is_empty() {
        out.push_str(&format!("  {key}: {{}}\n"));
        return;
    }
    out.push_str(&format!("  {key}:\n"));
    for (k, v) in pairs {
        out.push_str(&format!("    {}: {}\n", quote(k), quote(v)));
    }
}

/// Truncates `path` and writes `contents` into the same inode, then syncs.
pub fn write_in_place(path: &Path, contents: &[u8]) -> io::Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

/// Writes `contents` to a temporary file beside `path` and renames it over `path`.
pub fn write_replace(path: &Path, contents: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", unique()));
    let mut file = fs::File::create(&tmp)?;
    file.write_all(contents)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, path)
}

/// A per-process counter, for names that must not collide.
fn unique() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A directory laid out like a kubelet-mounted ConfigMap volume with one key, `routing.yaml`.
#[derive(Debug)]
pub struct ConfigMapDir {
    root: PathBuf,
    current: PathBuf,
}

/// The one key of the mounted ConfigMap.
pub const CONFIGMAP_KEY: &str = "routing.yaml";

impl ConfigMapDir {
    /// Creates the volume in `root` (created if missing) holding `contents`.
    pub fn create(root: &Path, contents: &[u8]) -> io::Result<Self> {
        fs::create_dir_all(root)?;
        let current = Self::write_version(root, contents)?;
        symlink(
            current.file_name().expect("version dir has a name"),
            root.join("..data"),
        )?;
        symlink(Path::new("..data").join(CONFIGMAP_KEY), root.join(CONFIGMAP_KEY))?;
        Ok(Self {
            root: root.to_owned(),
            current,
        })
    }

    /// The path a data plane is given: `root/routing.yaml`, a symlink.
    pub fn file(&self) -> PathBuf {
        self.root.join(CONFIGMAP_KEY)
    }

    /// Publishes `contents` as kubelet does: new version dir, `..data_tmp` symlink renamed over
    /// `..data`, old version dir removed.
    pub fn swap(&mut self, contents: &[u8]) -> io::Result<()> {
        let next = Self::write_version(&self.root, contents)?;
        let tmp = self.root.join("..data_tmp");
        symlink(next.file_name().expect("version dir has a name"), &tmp)?;
        fs::rename(&tmp, self.root.join("..data"))?;
        fs::remove_dir_all(&self.current)?;
        self.current = next;
        Ok(())
    }

    fn write_version(root: &Path, contents: &[u8]) -> io::Result<PathBuf> {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let dir = root.join(format!(
            "..{}_{:09}.{}",
            stamp.as_secs(),
            stamp.subsec_nanos(),
            unique()
        ));
        fs::create_dir(&dir)?;
        let mut file = fs::File::create(dir.join(CONFIGMAP_KEY))?;
        file.write_all(contents)?;
        file.sync_all()?;
        Ok(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn renders_quoted_yaml() {
        let yaml = Routes::new("tier3")
            .header("X-Tenant")
            .customer("acme", "tier1")
            .placement("tier1", "http://127.0.0.1:1")
            .placement("tier3", "http://127.0.0.1:3")
            .render();
        assert!(yaml.contains("  customerHeader: \"X-Tenant\"\n"), "{yaml}");
        assert!(
            yaml.contains("  customerToPlacement:\n    \"acme\": \"tier1\"\n"),
            "{yaml}"
        );
        assert!(yaml.contains("    \"tier3\": \"http://127.0.0.1:3\"\n"), "{yaml}");
        assert!(Routes::new("x").render().contains("customerToPlacement: {}\n"));
    }

    #[test]
    fn lookups_follow_the_default() {
        let routes = Routes::new("d").customer("acme", "p").customer("acme", "q");
        assert_eq!(routes.placement_of("acme"), "q");
        assert_eq!(routes.placement_of("other"), "d");
        assert_eq!(routes.without_customer("acme").placement_of("acme"), "d");
    }

    #[test]
    fn in_place_keeps_the_inode_and_replace_changes_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        fs::write(&path, "one").unwrap();
        let inode = fs::metadata(&path).unwrap().ino();
        write_in_place(&path, b"two").unwrap();
        assert_eq!(fs::metadata(&path).unwrap().ino(), inode);
        assert_eq!(fs::read_to_string(&path).unwrap(), "two");
        write_replace(&path, b"three").unwrap();
        assert_ne!(fs::metadata(&path).unwrap().ino(), inode);
        assert_eq!(fs::read_to_string(&path).unwrap(), "three");
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "temporary file left behind"
        );
    }

    #[test]
    fn configmap_swap_changes_content_behind_the_same_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let mut volume = ConfigMapDir::create(&dir.path().join("cm"), b"one").unwrap();
        let file = volume.file();
        assert!(fs::symlink_metadata(&file).unwrap().file_type().is_symlink());
        assert_eq!(fs::read_to_string(&file).unwrap(), "one");
        volume.swap(b"two").unwrap();
        assert_eq!(fs::read_to_string(&file).unwrap(), "two");
        volume.swap(b"three").unwrap();
        assert_eq!(fs::read_to_string(&file).unwrap(), "three");
        // routing.yaml, ..data and exactly one version directory.
        assert_eq!(fs::read_dir(dir.path().join("cm")).unwrap().count(), 3);
    }
}
