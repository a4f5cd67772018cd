//! The body of a cell's response, streamed to the client as it arrives.
//!
//! An HTTP/1.1 connection can carry the next request only once this response has been read to
//! its end, so the body holds the connection and hands it back to its pool when it is dropped
//! after the end. Dropped before the end (the client went away mid-body), it lets the
//! connection close: what is left of the response would otherwise be read as the next one.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1;

use super::pool::OriginPool;

/// A cell's response body, and the HTTP/1.1 connection to return once it has ended.
#[derive(Debug)]
pub struct UpstreamBody {
    inner: Incoming,
    reuse: Option<(Arc<OriginPool>, http1::SendRequest<Incoming>)>,
    ended: bool,
}

impl UpstreamBody {
    pub(super) fn new(
        inner: Incoming,
        reuse: Option<(Arc<OriginPool>, http1::SendRequest<Incoming>)>,
    ) -> Self {
        Self {
            inner,
            reuse,
            ended: false,
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.ended = true,
            // An error leaves the connection in an unknown state: never reuse it.
            Poll::Ready(Some(Err(_))) => this.reuse = None,
            Poll::Ready(Some(Ok(_))) | Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        if let Some((pool, sender)) = self.reuse.take()
            && (self.ended || self.inner.is_end_stream())
        {
            pool.put(sender);
        }
    }
}
