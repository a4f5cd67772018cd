//! Echo cells, a config file, a token file and a data plane, started together.
//!
//! Most tests need the same scene: a few cells, a temporary directory holding `routing.yaml` and
//! an admin token, a data plane pointed at both, and clients for its two ports. [`Cells`] starts
//! the cells first (a config needs their ports); [`Harness`] does the rest and owns it all, so
//! dropping it stops the data plane and the cells and removes the directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tempfile::TempDir;

use crate::admin::AdminClient;
use crate::config::{Routes, write_replace};
use crate::echo::EchoCell;
use crate::process::DataPlane;
use crate::proxy::ProxyClient;

/// The admin token every harness uses.
pub const TOKEN: &str = "s3cret-admin-token";

/// Named echo cells.
#[derive(Debug, Default)]
pub struct Cells(BTreeMap<String, EchoCell>);

impl Cells {
    /// Starts one echo cell per name.
    pub async fn start(names: &[&str]) -> Self {
        let mut cells = BTreeMap::new();
        for name in names {
            cells.insert((*name).to_owned(), EchoCell::start(name).await);
        }
        Self(cells)
    }

    /// The cell called `name`.
    ///
    /// # Panics
    ///
    /// When there is no such cell, a mistake in the test.
    pub fn get(&self, name: &str) -> &EchoCell {
        self.0
            .get(name)
            .unwrap_or_else(|| panic!("no echo cell called {name}"))
    }

    /// The base URL of the cell called `name`.
    pub fn url(&self, name: &str) -> String {
        self.get(name).url()
    }
}

/// A data plane and everything it was started with.
#[derive(Debug)]
pub struct Harness {
    /// The echo cells.
    pub cells: Cells,
    /// The config file the data plane was given.
    pub config_path: PathBuf,
    /// The running data plane.
    pub dp: DataPlane,
    /// Admin client with the right token.
    pub admin: AdminClient,
    /// Proxy client sending `x-customer-id`.
    pub proxy: ProxyClient,
    // Last, so that the directory outlives the process that reads from it.
    dir: TempDir,
}

impl Harness {
    /// Writes `routes` to `routing.yaml` in a new temporary directory and starts a data plane on
    /// it with `args` added to the command line.
    pub async fn start(cells: Cells, routes: &Routes, args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let config_path = dir.path().join("routing.yaml");
        write_replace(&config_path, routes.render().as_bytes()).expect("write routing.yaml");
        Self::start_at(cells, dir, config_path, args).await
    }

    /// Starts a data plane on `config_path`, which the caller prepared inside `dir` (or not at
    /// all, to start without a config).
    pub async fn start_at(cells: Cells, dir: TempDir, config_path: PathBuf, args: &[&str]) -> Self {
        let token_file = dir.path().join("admin-token");
        // A trailing newline, as `echo token > file` and Kubernetes Secrets leave one; the data
        // plane trims it.
        std::fs::write(&token_file, format!("{TOKEN}\n")).expect("write the admin token file");
        let dp = DataPlane::start(&config_path, Some(&token_file), args).await;
        let admin = AdminClient::new(dp.admin_addr(), TOKEN);
        let proxy = ProxyClient::new(dp.proxy_addr());
        Self {
            cells,
            config_path,
            dp,
            admin,
            proxy,
            dir,
        }
    }

    /// The temporary directory holding the config and token files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Replaces the config file with `routes` by write-then-rename.
    pub fn write_config(&self, routes: &Routes) {
        self.write_bytes(routes.render().as_bytes());
    }

    /// Replaces the config file with `bytes` by write-then-rename.
    pub fn write_bytes(&self, bytes: &[u8]) {
        write_replace(&self.config_path, bytes).expect("replace the config file");
    }

    /// Asserts that the data plane process is still running.
    ///
    /// # Panics
    ///
    /// When it has exited.
    pub fn assert_running(&mut self) {
        assert!(self.dp.is_running(), "the data plane exited");
    }
}
