//! Reloading under load never fails a request and never serves a mix of two tables.
//!
//! Tables A and B route the same customers to different cells, and their placement → endpoint
//! maps are permuted too, so a request that took A's customer map and B's endpoints (or the
//! reverse) would land on a third cell that neither table allows. While client tasks send a
//! steady stream of requests, the data plane is switched between A and B two hundred times;
//! every answer must then be a 200 from a cell that A or B allows for that customer.

#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cellroute_tests::config::Routes;
use cellroute_tests::fixture::{Cells, Harness};
use cellroute_tests::proxy::ProxyClient;
use cellroute_tests::wait::{SOON, eventually};

const CUSTOMERS: usize = 30;
const RELOADS: u64 = 200;
const CLIENT_TASKS: usize = 4;
/// Upper bound on requests per client task, whatever the speed of the machine.
const MAX_REQUESTS_PER_TASK: usize = 50_000;
/// Upper bound on the whole load phase.
const HARD_DEADLINE: Duration = Duration::from_secs(60);
/// Requests for this id fall through to the default placement.
const UNLISTED: &str = "not-a-customer";

fn customer(i: usize) -> String {
    format!("cust-{i:02}")
}

/// Customer i on placement p((i + shift) % 3); placement p(k) on cell((k + rotate) % 3).
fn table(cells: &Cells, shift: usize, rotate: usize) -> Routes {
    let mut routes = Routes::new("p0");
    for k in 0..3 {
        routes = routes.placement(
            &format!("p{k}"),
            &cells.url(&format!("cell-{}", (k + rotate) % 3)),
        );
    }
    for i in 0..CUSTOMERS {
        routes = routes.customer(&customer(i), &format!("p{}", (i + shift) % 3));
    }
    routes
}

/// The cell `routes` sends `customer` to.
fn cell_of(routes: &Routes, cells_by_url: &BTreeMap<String, String>, customer: &str) -> String {
    let endpoint = routes
        .endpoint_of(routes.placement_of(customer))
        .expect("placement has an endpoint");
    cells_by_url[endpoint].clone()
}

#[derive(Debug)]
struct Outcome {
    customer: String,
    result: Result<String, String>,
}

/// Sends requests round-robin over all customers until `stop` (or the hard bounds).
async fn client_task(
    proxy: ProxyClient,
    task: usize,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
) -> Vec<Outcome> {
    let ids: Vec<String> = (0..CUSTOMERS)
        .map(customer)
        .chain([UNLISTED.to_owned()])
        .collect();
    let started = Instant::now();
    let mut outcomes = Vec::new();
    for n in 0..MAX_REQUESTS_PER_TASK {
        if stop.load(Ordering::SeqCst) || started.elapsed() > HARD_DEADLINE {
            break;
        }
        let id = &ids[(n + task * 7) % ids.len()];
        let result = proxy.cell_for(Some(id)).await;
        sent.fetch_add(1, Ordering::SeqCst);
        outcomes.push(Outcome {
            customer: id.clone(),
            result,
        });
    }
    outcomes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_reloads_under_load_never_fail_or_tear_a_request() {
    let cells = Cells::start(&["cell-0", "cell-1", "cell-2"]).await;
    let a = table(&cells, 0, 0);
    let b = table(&cells, 1, 1);
    let cells_by_url: BTreeMap<String, String> = (0..3)
        .map(|k| (cells.url(&format!("cell-{k}")), format!("cell-{k}")))
        .collect();
    let allowed: BTreeMap<String, BTreeSet<String>> = (0..CUSTOMERS)
        .map(customer)
        .chain([UNLISTED.to_owned()])
        .map(|c| {
            let both = [cell_of(&a, &cells_by_url, &c), cell_of(&b, &cells_by_url, &c)];
            (c, both.into_iter().collect())
        })
        .collect();
    // The test only means something if A and B disagree and a torn mix is detectable.
    for i in 0..CUSTOMERS {
        let c = customer(i);
        assert_eq!(allowed[&c].len(), 2, "A and B must disagree on {c}");
        let torn = cells_by_url[b.endpoint_of(a.placement_of(&c)).expect("endpoint")].clone();
        assert!(
            !allowed[&c].contains(&torn),
            "a torn lookup for {c} would go unnoticed"
        );
    }

    let mut h = Harness::start(cells, &a, &["--no-watch"]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..CLIENT_TASKS)
        .map(|task| {
            // One client (and connection pool) per task, as independent callers would have.
            let proxy = ProxyClient::new(h.dp.proxy_addr());
            tokio::spawn(client_task(proxy, task, stop.clone(), sent.clone()))
        })
        .collect();
    eventually("the load to start", SOON, || async {
        match sent.load(Ordering::SeqCst) {
            n if n >= 2 * CLIENT_TASKS as u64 => Ok(()),
            n => Err(format!("{n} requests so far")),
        }
    })
    .await;

    let during_reloads = sent.load(Ordering::SeqCst);
    for i in 0..RELOADS {
        let next = if i % 2 == 0 { &b } else { &a };
        h.write_config(next);
        let reply = h.admin.reload().await;
        assert_eq!(reply.status, 200, "reload {i}: {reply}");
        assert_eq!(reply.json["changed"], true, "reload {i}: {reply}");
        assert_eq!(reply.u64("config_generation"), Some(i + 2), "reload {i}: {reply}");
    }
    let during_reloads = sent.load(Ordering::SeqCst) - during_reloads;
    stop.store(true, Ordering::SeqCst);
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.extend(task.await.expect("client task panicked"));
    }

    let failed: Vec<_> = outcomes.iter().filter(|o| o.result.is_err()).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed; first: {:?}",
        failed.len(),
        outcomes.len(),
        &failed[..failed.len().min(5)]
    );
    let torn: Vec<_> = outcomes
        .iter()
        .filter(|o| {
            o.result
                .as_ref()
                .is_ok_and(|cell| !allowed[&o.customer].contains(cell))
        })
        .collect();
    assert!(
        torn.is_empty(),
        "{} of {} answers came from a cell neither table allows; first: {:?}",
        torn.len(),
        outcomes.len(),
        &torn[..torn.len().min(5)]
    );

    // The load really overlapped the reloads, and both tables were really served.
    assert!(
        during_reloads >= RELOADS,
        "only {during_reloads} requests during {RELOADS} reloads"
    );
    let mut seen: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for o in &outcomes {
        if let Ok(cell) = &o.result {
            seen.entry(&o.customer).or_default().insert(cell);
        }
    }
    let both = seen.values().filter(|cells| cells.len() == 2).count();
    assert!(
        both > 0,
        "no customer was ever served by both tables: the reloads had no effect"
    );

    // After the last reload (back to A), every customer is where A says.
    for i in 0..CUSTOMERS {
        let c = customer(i);
        h.proxy
            .assert_cell(Some(&c), &cell_of(&a, &cells_by_url, &c))
            .await;
    }
    let history = h.admin.history().await;
    assert_eq!(history.json["entries"][0]["generation"], RELOADS + 1, "{history}");
    h.assert_running();
    eprintln!(
        "torn-state: {} requests in total, {during_reloads} during {RELOADS} reloads, {both} customers seen on both cells",
        outcomes.len()
    );
}
