//! A process with its clock stepped, through libfaketime (Debian package `faketime`), for the
//! tests of what must not depend on the wall clock.
//!
//! The library is preloaded into the process itself (not through the `faketime` wrapper, which
//! forks), so the test's pid is the process's and `kill -9` reaches it. Only the wall clock is
//! moved: monotonic clocks (timers, timeouts) run as usual.

use std::path::PathBuf;

/// Where Debian installs the multi-threaded library.
const CANDIDATES: [&str; 3] = [
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
    "/usr/lib/faketime/libfaketimeMT.so.1",
];

/// The libfaketime library.
///
/// # Panics
///
/// When it is not installed (`apt-get install faketime`; `.ci/run` installs it).
pub fn library() -> PathBuf {
    CANDIDATES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!("libfaketime is not installed (apt-get install faketime); looked in {CANDIDATES:?}")
        })
}

/// The environment that starts a process with its wall clock `offset` away from the real one,
/// in libfaketime's syntax (`-1h`, `+30m`, ...).
pub fn stepped(offset: &str) -> Vec<(String, String)> {
    vec![
        ("LD_PRELOAD".to_owned(), library().display().to_string()),
        ("FAKETIME".to_owned(), offset.to_owned()),
        ("FAKETIME_DONT_FAKE_MONOTONIC".to_owned(), "1".to_owned()),
    ]
}
