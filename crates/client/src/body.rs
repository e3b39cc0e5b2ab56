//! Reading response bodies under a size limit.

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Body;

/// The default response body limit: 10 MiB.
pub const DEFAULT_BODY_LIMIT: usize = 10 * 1024 * 1024;

/// How much of an error response's body is kept in [`Error::Http`](waypost_core_types::Error::Http).
pub(crate) const ERROR_BODY_PREFIX: usize = 1024;

/// How many characters of that prefix [`Error::Http`](waypost_core_types::Error::Http) shows,
/// control and bidi characters escaped (`waypost_core_types::quote::quoted_up_to`).
pub(crate) const ERROR_BODY_CHARS: usize = 512;

#[derive(Debug)]
pub(crate) enum ReadError<E> {
    /// The body is larger than the limit.
    TooLarge,
    /// The connection failed while reading.
    Body(E),
}

/// Reads the whole body, failing as soon as it would exceed `limit`: a body whose declared size
/// (`Content-Length`, which hyper reports as the body's size hint) is above the limit fails before
/// anything is read, and a streamed body stops being buffered at the limit. A body that arrives
/// in one chunk is returned without copying.
pub(crate) async fn read_limited<B>(mut body: B, limit: usize) -> Result<Bytes, ReadError<B::Error>>
where
    B: Body<Data = Bytes> + Unpin,
{
    let hint = body.size_hint();
    if hint.lower() > limit as u64 {
        return Err(ReadError::TooLarge);
    }
    let declared = hint.exact();
    let mut first: Option<Bytes> = None;
    let mut buf: Option<BytesMut> = None;
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(ReadError::Body)?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        total = total.saturating_add(data.len());
        if total > limit {
            return Err(ReadError::TooLarge);
        }
        if let Some(buf) = buf.as_mut() {
            buf.extend_from_slice(&data);
        } else if let Some(f) = first.take() {
            let hint = declared.map_or(0, |l| l as usize).max(f.len() + data.len());
            let mut b = BytesMut::with_capacity(hint.min(limit));
            b.extend_from_slice(&f);
            b.extend_from_slice(&data);
            buf = Some(b);
        } else {
            first = Some(data);
        }
    }
    Ok(match (buf, first) {
        (Some(b), _) => b.freeze(),
        (None, Some(f)) => f,
        (None, None) => Bytes::new(),
    })
}

/// Reads at most `max` bytes of the body (for error messages), lossily decoded. Errors while
/// reading end the prefix early. The body is borrowed: its caller can tell whether it was read to
/// its end (`is_end_stream`).
pub(crate) async fn read_prefix<B>(body: &mut B, max: usize) -> String
where
    B: Body<Data = Bytes> + Unpin,
{
    let mut buf = Vec::new();
    while buf.len() < max {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    let take = data.len().min(max - buf.len());
                    buf.extend_from_slice(&data[..take]);
                }
            }
            _ => break,
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}
