//! A gRPC "cell" and client, both real tonic, for the tests that carry gRPC through the data
//! plane.
//!
//! The service `cellroute.test.Echo` is written by hand the way tonic-build would generate it
//! (prost messages, `tonic::server::Grpc` per method), so the tests need no `protoc`:
//!
//! - `Say` (unary): answers the message with the cell's name and the customer header it saw;
//! - `Fail` (unary): answers `FAILED_PRECONDITION` with a message and trailing metadata
//!   (`x-cell`), so a test can see the trailers arrive;
//! - `Count` (server streaming): `n` replies;
//! - `Chat` (bidirectional streaming): one reply per message, as each arrives.
//!
//! Every reply names the cell, so a test tells from any message where its stream is served.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::StreamExt as _;
use http::uri::PathAndQuery;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::body::Body;
use tonic::codegen::{BoxFuture, BoxStream, Service};
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::server::NamedService;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status, Streaming};
use tonic_prost::ProstCodec;

/// A request to the echo service.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoRequest {
    /// Echoed back.
    #[prost(string, tag = "1")]
    pub message: String,
    /// For `Count`: how many replies.
    #[prost(uint32, tag = "2")]
    pub count: u32,
}

/// A reply from the echo service.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoReply {
    /// The request's message (for `Count`, with the reply's index appended).
    #[prost(string, tag = "1")]
    pub message: String,
    /// The cell that answered.
    #[prost(string, tag = "2")]
    pub cell: String,
    /// The `x-customer-id` the cell received.
    #[prost(string, tag = "3")]
    pub customer: String,
}

const SERVICE: &str = "cellroute.test.Echo";

/// A running gRPC cell (HTTP/2 without TLS, as tonic serves it); stops when dropped.
#[derive(Debug)]
pub struct GrpcCell {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl GrpcCell {
    /// Starts the echo service called `name` on an ephemeral loopback port.
    ///
    /// # Panics
    ///
    /// When no loopback port can be bound.
    pub async fn start(name: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind gRPC cell");
        let addr = listener.local_addr().expect("gRPC cell address");
        let service = EchoService {
            cell: Arc::from(name),
        };
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await;
        });
        Self { addr, task }
    }

    /// Its endpoint for a RoutingConfig: HTTP/2 with prior knowledge.
    pub fn h2c_url(&self) -> String {
        format!("h2c://{}", self.addr)
    }
}

impl Drop for GrpcCell {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Clone)]
struct EchoService {
    cell: Arc<str>,
}

impl NamedService for EchoService {
    const NAME: &'static str = SERVICE;
}

/// A tower service from a closure, the shape `tonic::server::Grpc` takes per method.
struct Method<F>(F);

impl<F, Req, Resp, Fut> Service<Req> for Method<F>
where
    F: FnMut(Req) -> Fut,
    Fut: Future<Output = Result<Resp, Status>>,
{
    type Response = Resp;
    type Error = Status;
    type Future = Fut;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Fut {
        (self.0)(req)
    }
}

fn customer(metadata: &MetadataMap) -> String {
    metadata
        .get("x-customer-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

impl Service<http::Request<Body>> for EchoService {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let cell = self.cell.clone();
        let method = req
            .uri()
            .path()
            .strip_prefix(&format!("/{SERVICE}/"))
            .unwrap_or_default()
            .to_owned();
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(ProstCodec::<EchoReply, EchoRequest>::default());
            let resp = match method.as_str() {
                "Say" => {
                    let say = Method(move |req: Request<EchoRequest>| {
                        let reply = EchoReply {
                            customer: customer(req.metadata()),
                            message: req.into_inner().message,
                            cell: cell.to_string(),
                        };
                        std::future::ready(Ok(Response::new(reply)))
                    });
                    grpc.unary(say, req).await
                }
                "Fail" => {
                    let fail = Method(move |_: Request<EchoRequest>| {
                        let mut trailers = MetadataMap::new();
                        let value = MetadataValue::try_from(&*cell).expect("cell name is ASCII");
                        trailers.insert("x-cell", value);
                        std::future::ready(Err::<Response<EchoReply>, _>(Status::with_metadata(
                            Code::FailedPrecondition,
                            "the cell says no",
                            trailers,
                        )))
                    });
                    grpc.unary(fail, req).await
                }
                "Count" => {
                    let count = Method(move |req: Request<EchoRequest>| {
                        let customer = customer(req.metadata());
                        let req = req.into_inner();
                        let cell = cell.to_string();
                        let replies: Vec<Result<EchoReply, Status>> = (0..req.count)
                            .map(|i| {
                                Ok(EchoReply {
                                    message: format!("{} {i}", req.message),
                                    cell: cell.clone(),
                                    customer: customer.clone(),
                                })
                            })
                            .collect();
                        let stream: BoxStream<EchoReply> = Box::pin(tokio_stream::iter(replies));
                        std::future::ready(Ok(Response::new(stream)))
                    });
                    grpc.server_streaming(count, req).await
                }
                "Chat" => {
                    let chat = Method(move |req: Request<Streaming<EchoRequest>>| {
                        let customer = customer(req.metadata());
                        let cell = cell.to_string();
                        let stream: BoxStream<EchoReply> = Box::pin(req.into_inner().map(move |m| {
                            m.map(|m| EchoReply {
                                message: m.message,
                                cell: cell.clone(),
                                customer: customer.clone(),
                            })
                        }));
                        std::future::ready(Ok(Response::new(stream)))
                    });
                    grpc.streaming(chat, req).await
                }
                _ => Status::unimplemented(format!("no method `{method}`")).into_http(),
            };
            Ok(resp)
        })
    }
}

/// A tonic client for the echo service, reaching it through `addr` (the data plane) over
/// HTTP/2 with prior knowledge, as gRPC clients do without TLS.
#[derive(Debug, Clone)]
pub struct GrpcClient {
    grpc: tonic::client::Grpc<Channel>,
}

type Stream<T> = Pin<Box<dyn futures_util::Stream<Item = T> + Send + 'static>>;

impl GrpcClient {
    /// Connects to `addr`.
    ///
    /// # Panics
    ///
    /// When the connection cannot be made.
    pub async fn connect(addr: SocketAddr) -> Self {
        let channel = Channel::from_shared(format!("http://{addr}"))
            .expect("valid URL")
            .connect()
            .await
            .unwrap_or_else(|e| panic!("gRPC connect to {addr}: {e}"));
        Self {
            grpc: tonic::client::Grpc::new(channel),
        }
    }

    fn request<T>(customer: &str, message: T) -> Request<T> {
        let mut req = Request::new(message);
        req.metadata_mut().insert(
            "x-customer-id",
            MetadataValue::try_from(customer).expect("customer id is ASCII"),
        );
        req
    }

    async fn ready(&mut self) {
        self.grpc.ready().await.expect("gRPC channel ready");
    }

    /// `Say` as `customer`.
    pub async fn say(&mut self, customer: &str, message: &str) -> Result<EchoReply, Status> {
        self.ready().await;
        let req = Self::request(
            customer,
            EchoRequest {
                message: message.to_owned(),
                count: 0,
            },
        );
        let path = PathAndQuery::from_static("/cellroute.test.Echo/Say");
        self.grpc
            .unary(req, path, ProstCodec::default())
            .await
            .map(Response::into_inner)
    }

    /// `Fail` as `customer`: always an error status, with trailers.
    pub async fn fail(&mut self, customer: &str) -> Status {
        self.ready().await;
        let req = Self::request(customer, EchoRequest::default());
        let path = PathAndQuery::from_static("/cellroute.test.Echo/Fail");
        match self
            .grpc
            .unary::<_, EchoReply, _>(req, path, ProstCodec::default())
            .await
        {
            Ok(reply) => panic!("Fail answered {reply:?}"),
            Err(status) => status,
        }
    }

    /// `Count` as `customer`: every reply of the stream, then its end status.
    pub async fn count(&mut self, customer: &str, message: &str, n: u32) -> Result<Vec<EchoReply>, Status> {
        self.ready().await;
        let req = Self::request(
            customer,
            EchoRequest {
                message: message.to_owned(),
                count: n,
            },
        );
        let path = PathAndQuery::from_static("/cellroute.test.Echo/Count");
        let mut stream = self
            .grpc
            .server_streaming::<_, EchoReply, _>(req, path, ProstCodec::default())
            .await?
            .into_inner();
        let mut replies = Vec::new();
        while let Some(reply) = stream.message().await? {
            replies.push(reply);
        }
        Ok(replies)
    }

    /// Opens a `Chat` stream as `customer`.
    pub async fn chat(&mut self, customer: &str) -> Chat {
        self.ready().await;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<EchoRequest>();
        let outgoing: Stream<EchoRequest> =
            Box::pin(tokio_stream::wrappers::UnboundedReceiverStream::new(rx));
        let req = Self::request(customer, outgoing);
        let path = PathAndQuery::from_static("/cellroute.test.Echo/Chat");
        let incoming = self
            .grpc
            .streaming::<_, _, EchoReply, _>(req, path, ProstCodec::default())
            .await
            .expect("open the Chat stream")
            .into_inner();
        Chat { tx, incoming }
    }
}

/// An open bidirectional `Chat` stream.
#[derive(Debug)]
pub struct Chat {
    tx: tokio::sync::mpsc::UnboundedSender<EchoRequest>,
    incoming: Streaming<EchoReply>,
}

impl Chat {
    /// Sends `message` and waits for its reply.
    ///
    /// # Panics
    ///
    /// When the stream has ended or failed.
    pub async fn round_trip(&mut self, message: &str) -> EchoReply {
        self.tx
            .send(EchoRequest {
                message: message.to_owned(),
                count: 0,
            })
            .expect("Chat stream open for sending");
        let reply = tokio::time::timeout(crate::client::REQUEST_TIMEOUT, self.incoming.message())
            .await
            .expect("Chat reply within the request timeout");
        reply
            .unwrap_or_else(|e| panic!("Chat stream failed: {e}"))
            .expect("Chat stream ended early")
    }

    /// Ends the sending side and returns the stream's final status.
    pub async fn finish(self) -> Result<(), Status> {
        let Chat { tx, mut incoming } = self;
        drop(tx);
        match incoming.message().await? {
            None => Ok(()),
            Some(extra) => panic!("unexpected reply after the last message: {extra:?}"),
        }
    }
}
