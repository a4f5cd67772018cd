//! The standalone `echo-cell` binary, as the demo script and benchmarks use it.

#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

#[tokio::test]
async fn echo_cell_prints_its_address_and_answers_there() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_echo-cell"))
        .args(["--listen", "127.0.0.1:0", "--name", "demo-cell"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start echo-cell");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read the first line");
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
        .to_owned();

    let reply = cellroute_tests::client::http_client()
        .get(format!("http://{addr}/hello"))
        .send()
        .await
        .expect("request to echo-cell");
    let echo: serde_json::Value = reply.json().await.expect("JSON echo");
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(echo["cell"], "demo-cell");
    assert_eq!(echo["path"], "/hello");
}
