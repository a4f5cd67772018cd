//! Request metrics without a lock or a shared cache line on the request path.
//!
//! Every placement has one [`Shard`] per proxy worker (one per core), each on its own cache
//! lines. A worker only ever writes its own shard, with relaxed atomic adds, so two cores
//! serving the same placement never touch the same line; a scrape sums the shards. The
//! latency histogram keeps integer nanoseconds and fixed bucket bounds, so recording a request
//! is a handful of adds with no mutex (prometheus-client's `Histogram::observe` takes one).
//!
//! The proxy's own failures ([`ProxyError`]) are counted apart from the cells' answers: a cell
//! answering 503 and the proxy failing to reach the cell are different alerts.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;

/// A failure of the proxy itself, as opposed to a status code sent by a cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyError {
    /// No routing table is active, so the request has no route (503).
    NoRoute,
    /// The cell could not be reached, or broke the connection before its response (502).
    Unreachable,
    /// The cell sent no response headers within `--upstream-timeout` (504).
    Timeout,
    /// The request cannot be forwarded as given (400, 405).
    BadRequest,
}

impl ProxyError {
    /// Errors counted per placement ([`ProxyError::NoRoute`] has no placement).
    const PER_PLACEMENT: [ProxyError; 3] = [
        ProxyError::Unreachable,
        ProxyError::Timeout,
        ProxyError::BadRequest,
    ];

    /// The `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyError::NoRoute => "no_route",
            ProxyError::Unreachable => "unreachable",
            ProxyError::Timeout => "timeout",
            ProxyError::BadRequest => "bad_request",
        }
    }

    fn slot(self) -> usize {
        match self {
            ProxyError::NoRoute | ProxyError::Unreachable => 0,
            ProxyError::Timeout => 1,
            ProxyError::BadRequest => 2,
        }
    }
}

/// Buckets of `cellroute_upstream_request_duration_seconds`: 100 µs doubling to about 13 s,
/// then +Inf.
const BUCKETS: usize = 18;
const FIRST_BUCKET_NS: u64 = 100_000;

/// The bucket of a duration: the first whose bound (`100 µs × 2^i`) is at least `ns`.
fn bucket(ns: u64) -> usize {
    let q = ns.saturating_sub(1) / FIRST_BUCKET_NS;
    ((u64::BITS - q.leading_zeros()) as usize).min(BUCKETS)
}

fn bucket_bound_seconds(i: usize) -> f64 {
    if i >= BUCKETS {
        f64::INFINITY
    } else {
        (FIRST_BUCKET_NS << i) as f64 / 1e9
    }
}

/// One worker's counts for one placement, alone on its cache lines.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Shard {
    by_class: [AtomicU64; 5],
    errors: [AtomicU64; 3],
    latency_count: AtomicU64,
    latency_sum_ns: AtomicU64,
    latency_buckets: [AtomicU64; BUCKETS + 1],
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// Request metric handles of one placement: one shard per worker. Cheap to clone (one `Arc`),
/// resolved once per table build, never per request.
#[derive(Debug, Clone)]
pub struct PlacementMetrics {
    shards: Arc<[Shard]>,
}

impl PlacementMetrics {
    fn shard(&self, worker: usize) -> &Shard {
        // A worker index beyond the shards (never the case when the proxy and metrics were built
        // with the same worker count) still counts correctly, only on a shared line.
        &self.shards[worker.min(self.shards.len() - 1)]
    }

    /// Records a response from the cell: its status class and the time to its headers.
    #[inline]
    pub fn record_response(&self, worker: usize, status: u16, elapsed: Duration) {
        let shard = self.shard(worker);
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        add(&shard.by_class[class], 1);
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        add(&shard.latency_count, 1);
        add(&shard.latency_sum_ns, ns);
        add(&shard.latency_buckets[bucket(ns)], 1);
    }

    /// Records a response the proxy made itself because of `error`.
    #[inline]
    pub fn record_error(&self, worker: usize, error: ProxyError) {
        add(&self.shard(worker).errors[error.slot()], 1);
    }
}

/// Every placement's shards, for table builds (which resolve handles) and scrapes (which sum).
#[derive(Debug)]
pub struct RequestMetrics {
    workers: usize,
    placements: Mutex<BTreeMap<String, PlacementMetrics>>,
    no_route: Counter,
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

impl RequestMetrics {
    /// Metrics for `workers` proxy workers; `no_route` counts requests without a table.
    pub fn new(workers: usize, no_route: Counter) -> Self {
        Self {
            workers: workers.max(1),
            placements: Mutex::default(),
            no_route,
        }
    }

    /// Proxy workers (shards per placement).
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// The handles of `placement`, created on first use and kept (so counts survive table
    /// swaps, and a placement's series stay in place once seen).
    pub fn placement(&self, placement: &str) -> PlacementMetrics {
        let mut placements = self
            .placements
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        placements
            .entry(placement.to_owned())
            .or_insert_with(|| PlacementMetrics {
                shards: (0..self.workers).map(|_| Shard::default()).collect(),
            })
            .clone()
    }

    fn snapshot(&self) -> Vec<(String, PlacementMetrics)> {
        let placements = self
            .placements
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        placements.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

impl RequestMetrics {
    /// Every placement's requests so far (answered by the cell, or by the proxy for it) and,
    /// of those, the 5xx: the cells' and the proxy's own 502 and 504. What a staged rollout
    /// judges (see `routing_model::protocol::CAP_HEALTH`).
    pub fn health(&self) -> BTreeMap<String, routing_model::protocol::PlacementHealth> {
        self.snapshot()
            .into_iter()
            .map(|(name, m)| {
                let t = Totals::of(&m);
                let failed = t.errors[ProxyError::Unreachable.slot()] + t.errors[ProxyError::Timeout.slot()];
                let health = routing_model::protocol::PlacementHealth {
                    requests: t.by_class.iter().sum::<u64>() + t.errors.iter().sum::<u64>(),
                    errors: t.by_class[4] + failed,
                };
                (name, health)
            })
            .collect()
    }
}

/// Sums of one placement's shards.
struct Totals {
    by_class: [u64; 5],
    errors: [u64; 3],
    count: u64,
    sum_ns: u64,
    buckets: [u64; BUCKETS + 1],
}

impl Totals {
    fn of(metrics: &PlacementMetrics) -> Self {
        let mut t = Totals {
            by_class: [0; 5],
            errors: [0; 3],
            count: 0,
            sum_ns: 0,
            buckets: [0; BUCKETS + 1],
        };
        for shard in metrics.shards.iter() {
            for (total, c) in t.by_class.iter_mut().zip(&shard.by_class) {
                *total += get(c);
            }
            for (total, c) in t.errors.iter_mut().zip(&shard.errors) {
                *total += get(c);
            }
            // Read the buckets before the count: a request recorded in between then shows in
            // the count but not yet in a bucket, never the other way round.
            for (total, c) in t.buckets.iter_mut().zip(&shard.latency_buckets) {
                *total += get(c);
            }
            t.count += get(&shard.latency_count);
            t.sum_ns += get(&shard.latency_sum_ns);
        }
        // The +Inf bucket must equal the count for a valid histogram.
        let in_buckets: u64 = t.buckets.iter().sum();
        t.count = t.count.max(in_buckets);
        t.buckets[BUCKETS] += t.count - in_buckets;
        t
    }
}

impl Collector for RequestMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let placements: Vec<(String, Totals)> = self
            .snapshot()
            .into_iter()
            .map(|(name, m)| {
                let totals = Totals::of(&m);
                (name, totals)
            })
            .collect();

        let mut family = encoder.encode_descriptor(
            "cellroute_requests",
            "Requests answered by a cell, by placement and the cell's status class (the proxy's own errors are in cellroute_proxy_errors_total)",
            None,
            MetricType::Counter,
        )?;
        for (name, t) in &placements {
            for (class, value) in CLASSES.iter().zip(t.by_class) {
                let labels = [("placement", name.as_str()), ("status_class", class)];
                family
                    .encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(&value, None)?;
            }
        }

        let mut family = encoder.encode_descriptor(
            "cellroute_proxy_errors",
            "Responses the proxy made itself, by placement and reason: no_route (no table), unreachable (502), timeout (504), bad_request (400/405)",
            None,
            MetricType::Counter,
        )?;
        family
            .encode_family(&[("reason", ProxyError::NoRoute.as_str())])?
            .encode_counter::<NoLabelSet, _, u64>(&self.no_route.get(), None)?;
        for (name, t) in &placements {
            for kind in ProxyError::PER_PLACEMENT {
                let labels = [("placement", name.as_str()), ("reason", kind.as_str())];
                family
                    .encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(&t.errors[kind.slot()], None)?;
            }
        }

        let mut family = encoder.encode_descriptor(
            "cellroute_upstream_request_duration_seconds",
            "Time from forwarding a request to receiving the cell's response headers (responses from cells only)",
            None,
            MetricType::Histogram,
        )?;
        for (name, t) in &placements {
            let buckets: Vec<(f64, u64)> = t
                .buckets
                .iter()
                .enumerate()
                .map(|(i, n)| (bucket_bound_seconds(i), *n))
                .collect();
            family
                .encode_family(&[("placement", name.as_str())])?
                .encode_histogram::<NoLabelSet>(t.sum_ns as f64 / 1e9, t.count, &buckets, None)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_hold_durations_up_to_their_bound() {
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(100_000), 0);
        assert_eq!(bucket(100_001), 1);
        assert_eq!(bucket(200_000), 1);
        assert_eq!(bucket(200_001), 2);
        assert_eq!(bucket(400_000), 2);
        assert_eq!(bucket(400_001), 3);
        for i in 0..BUCKETS {
            let bound = FIRST_BUCKET_NS << i;
            assert_eq!(bucket(bound), i, "{bound} ns");
            assert_eq!(bucket(bound + 1), i + 1, "{bound} ns + 1");
        }
        assert_eq!(bucket(u64::MAX), BUCKETS);
    }

    #[test]
    fn shards_of_every_worker_are_summed_and_errors_kept_apart() {
        let m = RequestMetrics::new(2, Counter::default());
        let tier1 = m.placement("tier1");
        tier1.record_response(0, 200, Duration::from_micros(50));
        tier1.record_response(1, 503, Duration::from_millis(3));
        tier1.record_error(1, ProxyError::Unreachable);
        tier1.record_error(0, ProxyError::Timeout);
        // A second handle of the same placement (the next table build) shares the counts.
        m.placement("tier1")
            .record_response(1, 204, Duration::from_secs(100));
        let t = Totals::of(&m.placement("tier1"));
        assert_eq!(t.by_class, [0, 2, 0, 0, 1]);
        assert_eq!(t.errors, [1, 1, 0]);
        assert_eq!(t.count, 3);
        assert_eq!(t.buckets[0], 1);
        assert_eq!(t.buckets[bucket(3_000_000)], 1);
        assert_eq!(t.buckets[BUCKETS], 1);
    }
}
