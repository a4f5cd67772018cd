//! Harness for cellroute's end-to-end tests.
//!
//! The tests in `tests/tests/` treat the binaries as black boxes: they start the real
//! `data-plane` binary, point it at in-process echo "cells", and talk to it over loopback
//! sockets exactly as a client, an operator and Kubernetes would; the `operator_*` tests start
//! the real `control-plane` binary against a real Kubernetes API server. This library holds what
//! those tests share, one concern per module:
//!
//! - [`echo`]: an echo cell that answers every request with what it received;
//! - [`tls_cell`]: the echo cell behind TLS, with a certificate made for the test and a chosen
//!   ALPN offer;
//! - [`grpc`]: a tonic gRPC cell and client (unary, streaming, error trailers);
//! - [`websocket`]: a WebSocket echo cell and client (tokio-tungstenite);
//! - [`process`]: start, signal, stop and read the logs of the real binaries;
//! - [`k8s`]: the Kubernetes API server of the run, its CRD, namespaces and RoutingConfigs;
//! - [`control_plane`]: the real `control-plane` binary watching that API server;
//! - [`config`]: render RoutingConfig files and replace them the way editors and kubelet do;
//! - [`chart`]: the Helm chart rendered directly or from a parent chart, read back as objects;
//! - [`admin`]: a client for the admin API and a parser for its metrics text;
//! - [`proxy`]: a client for the proxy port, including a raw one for hop-by-hop headers;
//! - [`client`]: the HTTP plumbing the two clients share;
//! - [`inject`]: the sidecar injector on the API server: the chart's objects and a control plane serving it;
//! - [`own_cluster`]: a cluster of a test's own, with the kube-controller-manager controllers it
//!   needs (the shared one has none);
//! - [`kubelet`]: a kubelet and scheduler for such a cluster, running its pods with the real
//!   binaries in network namespaces of their own;
//! - [`faketime`]: a process started with its wall clock stepped (libfaketime);
//! - [`fixture`]: cells, config file, token file and data plane started together;
//! - [`net`]: this machine's non-loopback address, for tests of what is served beyond loopback;
//! - [`peer`]: a data plane driven by hand over the raw WebSocket client, for attacker tests;
//! - [`fault`]: failing or delaying system calls (`strace`), a network namespace for a peer
//!   that is not on loopback;
//! - [`scripted_cp`]: the server side of the snapshot protocol, sending what a data-plane test
//!   says (bursts, refusable snapshots) where the real control plane never would;
//! - [`split`]: large routing files and the real `control-plane split`;
//! - [`wait`]: polling for a condition with a deadline, never sleeping instead of waiting.
//!
//! Everything here listens on and connects to 127.0.0.1 only (and to the API server of
//! `KUBECONFIG`, which `scripts/test` starts on loopback), except the tests of what is served
//! beyond loopback: they also use this machine's own non-loopback address ([`net`]) or a
//! network namespace the test itself created ([`fault::NetNs`], and the pod network of
//! [`kubelet`], on a test's own cluster).

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod admin;
pub mod chart;
pub mod client;
pub mod config;
pub mod control_plane;
pub mod cp_http;
pub mod echo;
pub mod example;
pub mod faketime;
pub mod fault;
pub mod fixture;
pub mod grpc;
pub mod inject;
pub mod journey;
pub mod k8s;
pub mod kubelet;
pub mod net;
pub mod own_cluster;
pub mod peer;
pub mod process;
pub mod proxy;
pub mod push;
pub mod push_k8s;
pub mod relay;
pub mod scripted_cp;
pub mod split;
pub mod tls_cell;
pub mod wait;
pub mod websocket;
pub mod ws;
