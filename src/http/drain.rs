//! Reads what a request's handler left of its body, so that its client gets the answer.
//!
//! An answer sent while the client is still uploading makes the server close the connection
//! under it: the unread bytes make the kernel reset the connection, and the client sees a
//! reset or a broken pipe instead of the answer (even one already in its receive queue), and
//! a proxy in front (nginx) a broken pipe, which it turns into a 502 and counts against the
//! replica. Any refusal can come before the upload is through: 401, 404, 405, 413, 415, 422,
//! a malformed multipart body. So this middleware, outside every route, wraps the body;
//! whatever the handler drops unread comes back to it, and:
//!
//! - within the upload limit, it is read and thrown away (within the request's time)
//!   before the answer is sent;
//! - over the limit (announced so, or found so while reading), the answer goes out at once
//!   with `Connection: close`, and the rest of the body is read and thrown away in the
//!   background, chunk by chunk, before the connection closes: a lingering close, as nginx
//!   does. Most clients send their whole body before they read (Python's http.client, Go,
//!   Node, Java, curl with `Expect:` emptied); they find the 413 waiting. Clients that read
//!   while sending (curl) stop at the 413 and close, which ends the lingering too. It is
//!   bounded: `linger_bytes` of body in all, `linger_secs` after the answer; then the
//!   connection is closed as it is.
//!
//! Not read at all, answered and closed at once: an upload announced larger than
//! `linger_bytes` (reading part of it would only delay the same reset, and reading it all
//! is what the bound is there to refuse), and one whose client asked `Expect: 100-continue`
//! (curl does for bodies over 1 MB) when the handler never touched the body: that client
//! waits for the go-ahead, which it never gets, and takes the answer instead of sending its
//! upload in vain.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use http_body::{Frame, SizeHint};

/// How much may be read, and for how long, per request.
#[derive(Clone, Copy)]
pub struct DrainLimits {
    /// The upload limit: what is left of a body within it is read before the answer.
    pub max_bytes: u64,
    /// The request's time, which that reading must keep within.
    pub within: Duration,
    /// Lingering close: the most bytes of a body over the limit read in all (what the
    /// handler read included), and for how long after the answer. Either 0: none.
    pub linger_bytes: u64,
    pub linger_for: Duration,
}

pub async fn drain_unread(
    State(limits): State<DrainLimits>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let announced = super::announced_length(request.headers());
    let over_limit = announced.is_some_and(|n| n > limits.max_bytes);
    if over_limit && announced.is_some_and(|n| n > limits.linger_bytes) {
        // More than lingering would read: reading part of it only delays the same reset,
        // at the cost of the bandwidth and the time the bound is there to refuse.
        return closing(next.run(request).await);
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
    let Some(Unread {
        mut body,
        polled,
        read,
    }) = rest
    else {
        return response;
    };
    if waits_for_go_ahead && !polled {
        // No `100 Continue` went out, so the client sends nothing more: nothing to read.
        return closing(response);
    }
    let mut read = read as u64;
    if !over_limit {
        let within = limits.within.saturating_sub(started.elapsed());
        match tokio::time::timeout(within, discard(&mut body, limits.max_bytes, &mut read)).await {
            Ok(Discarded::All) => return response,
            // A streamed body over the limit after all: linger.
            Ok(Discarded::OverBudget) => {}
            Ok(Discarded::Broken) | Err(_) => return closing(response),
        }
    }
    linger(body, read, limits);
    closing(response)
}

/// The answer, saying that the connection closes after it.
fn closing(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Reads and throws away the rest of `body` in the background, within the limits; the
/// connection closes when it is dropped (at its end, or when a limit is reached).
fn linger(mut body: Body, mut read: u64, limits: DrainLimits) {
    if limits.linger_for.is_zero() || read > limits.linger_bytes {
        return;
    }
    tokio::spawn(async move {
        let ended = tokio::time::timeout(
            limits.linger_for,
            discard(&mut body, limits.linger_bytes, &mut read),
        )
        .await;
        let outcome = match ended {
            Ok(Discarded::All) => "read to its end",
            Ok(Discarded::OverBudget) => "over linger_bytes",
            Ok(Discarded::Broken) => "closed by the client",
            Err(_) => "out of linger_secs",
        };
        tracing::debug!(bytes = read, outcome, "lingering close");
    });
}

enum Discarded {
    /// To its end.
    All,
    /// Up to the budget, and there is more.
    OverBudget,
    /// The connection failed or the client closed it.
    Broken,
}

/// Reads `body`, keeping nothing, counting into `read`, until its end or until `read`
/// is over `budget`.
async fn discard(body: &mut Body, budget: u64, read: &mut u64) -> Discarded {
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await {
        let Ok(frame) = frame else {
            return Discarded::Broken;
        };
        *read += frame.data_ref().map_or(0, |d| d.len() as u64);
        if *read > budget {
            return Discarded::OverBudget;
        }
    }
    Discarded::All
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
