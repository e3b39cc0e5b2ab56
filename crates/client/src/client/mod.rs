//! [`ServiceClient`]: calls a service by name through discovery, with retries, deadlines and
//! outlier ejection.
//!
//! This file holds the client and its call methods; the rest is one idea per file: `builder`
//! configures a client, `call` describes one call and its response, `execute` runs a call (the
//! retry loop under the deadline and the budget), and `attempt` makes one try (pick an instance,
//! send, report the outcome).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use serde::de::DeserializeOwned;
use serde::Serialize;
use waypost_core_types::{Result, ServiceDiscovery};

use crate::budget::RetryBudget;
use crate::http::HttpClient;
use crate::metrics::ClientMetrics;
use crate::outlier::OutlierDetector;
use crate::retry::RetryPolicy;

mod attempt;
mod builder;
mod call;
mod execute;

pub use self::builder::{ServiceClientBuilder, DEFAULT_TIMEOUT};
pub(crate) use self::call::CallSpec;
pub use self::call::{CallBuilder, ServiceResponse};

/// Calls services by name: each attempt asks discovery for an instance (avoiding the ones that
/// failed in this call and the ejected ones), sends the request over a pooled hyper client
/// (http or https from the instance's protocol), and retries what is safe to retry under a retry
/// budget and an overall deadline.
///
/// Cheap to clone; clones share the connection pool, the retry budget and the per-instance
/// breakers. Build one with [`ServiceClient::builder`].
#[derive(Clone)]
pub struct ServiceClient {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    discovery: Arc<dyn ServiceDiscovery>,
    http: HttpClient,
    timeout: Duration,
    deadline: Option<Duration>,
    retry: RetryPolicy,
    budget: Option<Arc<RetryBudget>>,
    body_limit: usize,
    outliers: Option<OutlierDetector>,
    metrics: ClientMetrics,
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

impl ServiceClient {
    /// The discovery this client resolves services with.
    pub fn discovery(&self) -> &Arc<dyn ServiceDiscovery> {
        &self.inner.discovery
    }

    /// The state of instance `id`'s outlier breaker (`Closed` when it has none).
    pub fn instance_state(&self, id: &str) -> waypost_core_types::CircuitState {
        self.inner
            .outliers
            .as_ref()
            .map_or(waypost_core_types::CircuitState::Closed, |o| o.state(id))
    }

    /// Starts a request to `service` (path may carry a query string).
    pub fn request(&self, method: Method, service: &str, path: &str) -> CallBuilder<'_> {
        CallBuilder {
            client: self,
            spec: CallSpec::new(service, method, path),
            error: None,
        }
    }

    /// Sends `body` (if any) with `method` to `path` of `service` and returns the response body
    /// (the Laravel-Go module's `Call`).
    ///
    /// # Errors
    /// As [`CallBuilder::send`].
    pub fn call(
        &self,
        service: &str,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> impl Future<Output = Result<Bytes>> + Send + '_ {
        // Built now (copying `service` and `path`), so the future borrows only `self`.
        let mut call = self.request(method, service, path);
        if let Some(b) = body {
            call = call.body(b);
        }
        let sent = call.send();
        async move { Ok(sent.await?.body) }
    }

    /// Sends `body` as JSON (if any) and decodes the JSON response (the Laravel-Go module's
    /// `CallJSON`).
    ///
    /// # Errors
    /// As [`CallBuilder::send`], and [`Error::Codec`](waypost_core_types::Error::Codec) when
    /// either side is not the expected JSON.
    pub async fn call_json<Req, Resp>(
        &self,
        service: &str,
        method: Method,
        path: &str,
        body: Option<&Req>,
    ) -> Result<Resp>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        let mut call = self
            .request(method, service, path)
            .header(http::header::ACCEPT, "application/json");
        if let Some(b) = body {
            call = call.json(b);
        }
        call.send().await?.json()
    }

    /// [`call`](Self::call) for the methods below, whose futures borrow `service` and `path`
    /// anyway: the call borrows them too instead of copying them.
    async fn call_borrowed(
        &self,
        service: &str,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<Bytes> {
        let mut spec = CallSpec::borrowed(service, method, path);
        if let Some(b) = body {
            spec.body = b;
        }
        Ok(self.execute(spec).await?.body)
    }

    /// GET `path` of `service`.
    ///
    /// # Errors
    /// As [`CallBuilder::send`].
    pub async fn get(&self, service: &str, path: &str) -> Result<Bytes> {
        self.call_borrowed(service, Method::GET, path, None).await
    }

    /// POST `body` to `path` of `service` (not retried on 5xx or timeouts unless enabled).
    ///
    /// # Errors
    /// As [`CallBuilder::send`].
    pub async fn post(&self, service: &str, path: &str, body: impl Into<Bytes>) -> Result<Bytes> {
        self.call_borrowed(service, Method::POST, path, Some(body.into()))
            .await
    }

    /// PUT `body` to `path` of `service`.
    ///
    /// # Errors
    /// As [`CallBuilder::send`].
    pub async fn put(&self, service: &str, path: &str, body: impl Into<Bytes>) -> Result<Bytes> {
        self.call_borrowed(service, Method::PUT, path, Some(body.into()))
            .await
    }

    /// DELETE `path` of `service`.
    ///
    /// # Errors
    /// As [`CallBuilder::send`].
    pub async fn delete(&self, service: &str, path: &str) -> Result<Bytes> {
        self.call_borrowed(service, Method::DELETE, path, None)
            .await
    }

    /// GET `path` and decode the JSON response.
    ///
    /// # Errors
    /// As [`call_json`](Self::call_json).
    pub async fn get_json<Resp: DeserializeOwned>(
        &self,
        service: &str,
        path: &str,
    ) -> Result<Resp> {
        self.call_json::<(), Resp>(service, Method::GET, path, None)
            .await
    }

    /// POST `body` as JSON and decode the JSON response (the Laravel-Go module's `PostJSON`).
    ///
    /// # Errors
    /// As [`call_json`](Self::call_json).
    pub async fn post_json<Req, Resp>(&self, service: &str, path: &str, body: &Req) -> Result<Resp>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        self.call_json(service, Method::POST, path, Some(body))
            .await
    }

    /// PUT `body` as JSON and decode the JSON response.
    ///
    /// # Errors
    /// As [`call_json`](Self::call_json).
    pub async fn put_json<Req, Resp>(&self, service: &str, path: &str, body: &Req) -> Result<Resp>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        self.call_json(service, Method::PUT, path, Some(body)).await
    }

    /// DELETE `path` and decode the JSON response.
    ///
    /// # Errors
    /// As [`call_json`](Self::call_json).
    pub async fn delete_json<Resp: DeserializeOwned>(
        &self,
        service: &str,
        path: &str,
    ) -> Result<Resp> {
        self.call_json::<(), Resp>(service, Method::DELETE, path, None)
            .await
    }
}

impl fmt::Debug for ServiceClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &*self.inner;
        f.debug_struct("ServiceClient")
            .field("discovery", &i.discovery)
            .field("timeout", &i.timeout)
            .field("deadline", &i.deadline)
            .field("retry", &i.retry)
            .field("budget", &i.budget)
            .field("body_limit", &i.body_limit)
            .field("outliers", &i.outliers)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use waypost_core_types::{Error, SelectContext, Selection, ServiceInfo};

    use super::*;

    #[derive(Debug)]
    struct Nowhere;

    #[waypost_core_types::async_trait]
    impl ServiceDiscovery for Nowhere {
        async fn discover(&self, _name: &str) -> Result<Vec<Arc<ServiceInfo>>> {
            Ok(Vec::new())
        }
        async fn select(&self, _name: &str, _ctx: &SelectContext<'_>) -> Result<Selection> {
            Err(Error::Closed)
        }
        async fn watch(&self, _name: &str) -> Result<waypost_core_types::ServiceEventStream> {
            Err(Error::Closed)
        }
        async fn close(&self) -> Result<()> {
            Ok(())
        }
    }

    /// Every future of a call is built on the stack and moved into its place (or its box), so
    /// its size is copied on every call; the boxes must also stay within glibc's per-thread
    /// cache (1032 bytes) to be cheap to allocate. Measured with rustc 1.95: `get` 480, the
    /// call box about 780, an attempt (with its exchange inline; the request on its way and its
    /// connection's lease are boxed) 1024.
    /// With the `otel` feature the attempt's span takes 16 bytes more: tracing costs that
    /// allocation.
    #[test]
    fn call_futures_stay_small() {
        let client = ServiceClient::new(Arc::new(Nowhere)).unwrap();
        let spec = CallSpec::new("svc", Method::GET, "/x");
        let get = std::mem::size_of_val(&client.get("svc", "/x"));
        let call_box = std::mem::size_of::<CallSpec<'_>>()
            + std::mem::size_of::<tracing::Span>()
            + std::mem::size_of_val(&client.execute_in_span(&spec));
        let attempt = std::mem::size_of_val(&client.try_once(
            &spec,
            &[],
            1,
            None,
            Duration::from_secs(1),
            None,
            Some(Duration::from_millis(50)),
            None,
        ));
        assert!(get <= 512, "get future: {get} bytes");
        assert!(call_box <= 1000, "call box: about {call_box} bytes");
        let attempt_limit = if cfg!(feature = "otel") { 1048 } else { 1032 };
        assert!(attempt <= attempt_limit, "attempt box: {attempt} bytes");
    }
}
