//! `grpc-cell`: the upstream of the gRPC benchmark row. It serves `cellroute.test.Echo/Say`
//! (the unary method of the test suite's gRPC cell, `tests/src/grpc.rs`) over HTTP/2 without
//! TLS, answering each message with itself and the cell's name, on a current-thread runtime
//! (one core, as the nginx upstream of the other rows).
//!
//! It prints `listening on ADDR` once bound and runs until killed.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use clap::Parser;
use tonic::body::Body;
use tonic::codegen::{BoxFuture, Service};
use tonic::server::NamedService;
use tonic::{Request, Response, Status};
use tonic_prost::ProstCodec;

/// A request to the echo service.
#[derive(Clone, PartialEq, prost::Message)]
struct EchoRequest {
    #[prost(string, tag = "1")]
    message: String,
    #[prost(uint32, tag = "2")]
    count: u32,
}

/// A reply.
#[derive(Clone, PartialEq, prost::Message)]
struct EchoReply {
    #[prost(string, tag = "1")]
    message: String,
    #[prost(string, tag = "2")]
    cell: String,
    #[prost(string, tag = "3")]
    customer: String,
}

#[derive(Debug, Parser)]
#[command(name = "grpc-cell")]
struct Args {
    /// Address to listen on; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Cell name in every reply.
    #[arg(long)]
    name: String,
}

#[derive(Clone)]
struct Echo {
    cell: Arc<str>,
}

impl NamedService for Echo {
    const NAME: &'static str = "cellroute.test.Echo";
}

struct Say(Arc<str>);

impl Service<Request<EchoRequest>> for Say {
    type Response = Response<EchoReply>;
    type Error = Status;
    type Future = std::future::Ready<Result<Response<EchoReply>, Status>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<EchoRequest>) -> Self::Future {
        std::future::ready(Ok(Response::new(EchoReply {
            message: req.into_inner().message,
            cell: self.0.to_string(),
            customer: String::new(),
        })))
    }
}

impl Service<http::Request<Body>> for Echo {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let cell = self.cell.clone();
        Box::pin(async move {
            if req.uri().path() != "/cellroute.test.Echo/Say" {
                return Ok(Status::unimplemented("only Say").into_http());
            }
            let mut grpc = tonic::server::Grpc::new(ProstCodec::<EchoReply, EchoRequest>::default());
            Ok(grpc.unary(Say(cell), req).await)
        })
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen).await?;
        println!("listening on {}", listener.local_addr()?);
        tonic::transport::Server::builder()
            .add_service(Echo {
                cell: Arc::from(args.name.as_str()),
            })
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await?;
        Ok(())
    })
}
