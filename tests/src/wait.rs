//! Waiting for a condition instead of sleeping for a guessed time.
//!
//! A fixed sleep is either too short on a loaded CI machine (a flaky test) or too long
//! everywhere else (a slow suite). [`eventually`] polls a check until it passes or a deadline
//! runs out, and then fails with the check's own last explanation, so a failure says what was
//! still wrong rather than only "timed out".

use std::future::Future;
use std::time::{Duration, Instant};

/// How often [`eventually`] retries its check.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// The deadline tests use for anything that should happen "soon" (a reload, a route change):
/// generous, because a deadline only costs time when the feature is broken.
pub const SOON: Duration = Duration::from_secs(10);

/// Polls `check` every [`POLL_INTERVAL`] until it returns `Ok`, and returns that value.
///
/// # Panics
///
/// When `timeout` passes without success; the message names `what` and the last error.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    eventually_every(what, timeout, POLL_INTERVAL, check).await
}

/// [`eventually`] with its own poll interval, for checks that cost a request to a shared server
/// (such as the Kubernetes API server) and need not hammer it.
///
/// # Panics
///
/// When `timeout` passes without success; the message names `what` and the last error.
pub async fn eventually_every<T, F, Fut>(what: &str, timeout: Duration, interval: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting for {what}; last error: {last}")
            }
            Err(_) => tokio::time::sleep(interval).await,
        }
    }
}

/// The blocking twin of [`eventually`], for code that runs outside an async runtime.
///
/// # Panics
///
/// When `timeout` passes without success; the message names `what` and the last error.
pub fn eventually_blocking<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting for {what}; last error: {last}")
            }
            Err(_) => std::thread::sleep(POLL_INTERVAL),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn returns_as_soon_as_the_check_passes() {
        let mut calls = 0;
        let got = eventually("third call", Duration::from_secs(5), || {
            calls += 1;
            let n = calls;
            async move { if n >= 3 { Ok(n) } else { Err(format!("call {n}")) } }
        })
        .await;
        assert_eq!(got, 3);
    }

    #[tokio::test]
    #[should_panic(expected = "last error: still no")]
    async fn panics_with_the_last_error() {
        eventually("never", Duration::from_millis(50), || async {
            Err::<(), _>("still no".to_owned())
        })
        .await;
    }

    #[test]
    fn blocking_variant_polls_too() {
        let mut calls = 0;
        let got = eventually_blocking("second call", Duration::from_secs(5), || {
            calls += 1;
            if calls >= 2 {
                Ok(calls)
            } else {
                Err("first".to_owned())
            }
        });
        assert_eq!(got, 2);
    }
}
