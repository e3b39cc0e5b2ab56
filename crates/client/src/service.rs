//! The tower form of [`ServiceClient`].

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use tower_service::Service;
use waypost_core_types::quote::quoted;
use waypost_core_types::{Error, Result};

use crate::client::{CallSpec, ServiceClient};

/// `ServiceClient` is a `tower::Service<http::Request<Bytes>>`: the URI's host names the service
/// (`http://user-service/users?id=1`), the rest of the URI is the path. Discovery, retries,
/// deadlines, ejection and the body limit apply as for [`ServiceClient::request`]; a status ≥ 400
/// is `Err(Error::Http)`. Always ready.
impl Service<http::Request<Bytes>> for ServiceClient {
    type Response = http::Response<Bytes>;
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<Bytes>>> + Send + 'static>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Bytes>) -> Self::Future {
        let client = self.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let service = parts.uri.host().ok_or_else(|| {
                // Never the query string: it may carry a token.
                Error::InvalidConfig(format!(
                    "request URI with path `{}` needs the service name as its host (http://user-service/path)",
                    quoted(parts.uri.path())
                ))
            })?;
            let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            let mut spec = CallSpec::new(service, parts.method, path);
            spec.headers = parts.headers;
            spec.headers.remove(http::header::HOST);
            spec.body = body;
            let resp = client.execute(spec).await?;
            let mut out = http::Response::new(resp.body);
            *out.status_mut() = resp.status;
            *out.headers_mut() = resp.headers;
            Ok(out)
        })
    }
}
