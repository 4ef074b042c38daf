//! Reads what a request's handler left of its body before the answer goes out.
//!
//! An answer sent while the client is still uploading makes the server close the connection
//! under it: the client sees a reset instead of the answer, and a proxy in front (nginx) a
//! broken pipe, which it turns into a 502 and counts against the replica. Any refusal can
//! come before the upload is through: 401, 404, 405, 415, 422, a malformed multipart
//! body. So this middleware, outside every route, wraps the body; whatever the handler
//! drops unread comes back to it, and is read and thrown away (within the upload limit and
//! the request's time) before the answer is sent. An upload announced over the limit is
//! not read: it is answered 413 at once. Nor is one whose client asked `Expect:
//! 100-continue` (curl does for bodies over 1 MB) when the handler never touched the body:
//! that client waits for the go-ahead, which it never gets, and takes the answer instead
//! of sending its upload in vain.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;
use futures_util::StreamExt;
use http_body::{Frame, SizeHint};

/// How much may be read, and for how long, per request.
#[derive(Clone, Copy)]
pub struct DrainLimits {
    pub max_bytes: usize,
    pub within: Duration,
}

pub async fn drain_unread(
    State(limits): State<DrainLimits>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    if super::announced_length(request.headers()).is_some_and(|n| n > limits.max_bytes as u64) {
        return next.run(request).await;
    }
    let waits_for_go_ahead = request
        .headers()
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let unread = Arc::new(Mutex::new(None));
    let request = request.map(|body| {
        Body::new(Returning {
            inner: Some(body),
            polled: false,
            read: 0,
            unread: unread.clone(),
        })
    });
    let response = next.run(request).await;
    let rest = unread.lock().expect("never poisoned").take();
    if let Some(Unread { body, polled, read }) = rest {
        if waits_for_go_ahead && !polled {
            return response;
        }
        let budget = limits.max_bytes.saturating_sub(read);
        let within = limits.within.saturating_sub(started.elapsed());
        let _ = tokio::time::timeout(within, discard(body, budget)).await;
    }
    response
}

/// Reads `body` to its end, keeping nothing, unless it holds more than `budget` bytes.
async fn discard(body: Body, mut budget: usize) {
    let mut chunks = body.into_data_stream();
    while let Some(Ok(chunk)) = chunks.next().await {
        match budget.checked_sub(chunk.len()) {
            Some(left) => budget = left,
            None => return,
        }
    }
}

/// The request body as the handler sees it; dropped before its end, it hands the rest
/// back to `drain_unread`.
struct Returning {
    inner: Option<Body>,
    polled: bool,
    read: usize,
    unread: Arc<Mutex<Option<Unread>>>,
}

/// What the handler left of the body, whether it asked for any of it (hyper sends `100
/// Continue` on the first read), and how many bytes it read.
struct Unread {
    body: Body,
    polled: bool,
    read: usize,
}

impl HttpBody for Returning {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        self.polled = true;
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = Pin::new(inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &frame {
            self.read += frame.data_ref().map_or(0, Bytes::len);
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

impl Drop for Returning {
    fn drop(&mut self) {
        if let Some(body) = self.inner.take().filter(|b| !b.is_end_stream()) {
            *self.unread.lock().expect("never poisoned") = Some(Unread {
                body,
                polled: self.polled,
                read: self.read,
            });
        }
    }
}
