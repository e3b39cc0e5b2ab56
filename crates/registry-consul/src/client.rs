//! The thin Consul HTTP client: one pooled hyper client, the token header, timeouts, body
//! limits, and the mapping of transport failures and statuses onto [`Error`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use waypost_core_types::{Error, Result, Secret};

use crate::config::{ConsulConfig, Endpoint};

pub(crate) const BACKEND: &str = "consul";

/// Characters left as they are in a path segment or query value.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Percent-encodes one path segment or query value.
pub(crate) fn enc(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

/// A response with its status, `X-Consul-Index` (if any) and body.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) index: Option<u64>,
    pub(crate) body: Bytes,
}

impl Reply {
    pub(crate) fn text(&self) -> String {
        let s = String::from_utf8_lossy(&self.body);
        let mut s = s.trim().to_owned();
        if s.len() > 512 {
            let mut cut = 512;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            s.truncate(cut);
            s.push('…');
        }
        s
    }

    /// The error for an unexpected status.
    pub(crate) fn error(&self, what: &str) -> Error {
        Error::Backend {
            backend: BACKEND,
            message: format!("{what}: HTTP {}: {}", self.status.as_u16(), self.text()),
            source: Some(Box::new(Error::Http {
                status: self.status.as_u16(),
                body: self.text(),
            })),
        }
    }

    pub(crate) fn json<T: serde::de::DeserializeOwned>(&self, what: &str) -> Result<T> {
        serde_json::from_slice(&self.body)
            .map_err(|e| Error::backend_msg(BACKEND, format!("{what}: undecodable response: {e}")))
    }
}

/// The HTTP client of one registry.
#[derive(Clone)]
pub(crate) struct ConsulClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    base: String,
    token: Option<Secret>,
    datacenter: Option<String>,
    request_timeout: Duration,
    max_body: usize,
}

impl fmt::Debug for ConsulClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsulClient")
            .field("base", &self.inner.base)
            .field("token", &self.inner.token)
            .field("datacenter", &self.inner.datacenter)
            .finish()
    }
}

fn tls_config(cfg: &ConsulConfig) -> Result<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let bad = |m: String| Error::InvalidConfig(format!("consul: {m}"));
    let pem: Option<Vec<u8>> = match (&cfg.ca_pem, &cfg.ca_file) {
        (Some(p), _) => Some(p.as_bytes().to_vec()),
        (None, Some(path)) => Some(
            std::fs::read(path)
                .map_err(|e| bad(format!("cannot read ca_file {}: {e}", path.display())))?,
        ),
        (None, None) => None,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(format!("TLS: {e}")))?;
    let Some(pem) = pem else {
        use hyper_rustls::ConfigBuilderExt;
        // hyper-rustls's `webpki-tokio` feature brings the Mozilla roots.
        return Ok(builder.with_webpki_roots().with_no_client_auth());
    };
    let mut roots = rustls::RootCertStore::empty();
    let mut n = 0;
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| bad(format!("CA PEM: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| bad(format!("CA certificate rejected: {e}")))?;
        n += 1;
    }
    if n == 0 {
        return Err(bad("the CA PEM holds no certificate".into()));
    }
    Ok(builder.with_root_certificates(roots).with_no_client_auth())
}

impl ConsulClient {
    pub(crate) fn new(cfg: &ConsulConfig) -> Result<Self> {
        let endpoint =
            Endpoint::parse(&cfg.address, cfg.ca_file.is_some() || cfg.ca_pem.is_some())?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(cfg.connect_timeout));
        http.set_nodelay(true);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls_config(cfg)?)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        Ok(ConsulClient {
            inner: Arc::new(Inner {
                http: client,
                base: endpoint.base_url(),
                token: cfg.token.clone(),
                datacenter: cfg.datacenter.clone(),
                request_timeout: cfg.request_timeout,
                max_body: cfg.max_response_bytes,
            }),
        })
    }

    pub(crate) fn base(&self) -> &str {
        &self.inner.base
    }

    pub(crate) fn request_timeout(&self) -> Duration {
        self.inner.request_timeout
    }

    /// `dc=<dc>` for catalog and health reads, or "".
    pub(crate) fn dc_param(&self) -> String {
        match &self.inner.datacenter {
            Some(dc) => format!("dc={}", enc(dc)),
            None => String::new(),
        }
    }

    /// Sends one request. A 403 becomes [`Error::Auth`]; other statuses are returned for the
    /// caller to judge.
    ///
    /// `path_and_query` must already be encoded.
    pub(crate) async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<Vec<u8>>,
        timeout: Option<Duration>,
    ) -> Result<Reply> {
        let timeout = timeout.unwrap_or(self.inner.request_timeout);
        let what = format!("{method} {}", path_only(path_and_query));
        let uri = format!("{}{}", self.inner.base, path_and_query);
        let mut req = Request::builder().method(method).uri(&uri);
        if let Some(t) = &self.inner.token {
            req = req.header("X-Consul-Token", t.expose());
        }
        if body.is_some() {
            req = req.header(http::header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| Error::backend_msg(BACKEND, format!("{what}: bad request: {e}")))?;
        let max = self.inner.max_body;
        let fut = async {
            let resp = self.inner.http.request(req).await.map_err(|e| {
                let msg = error_chain(&e);
                if e.is_connect() {
                    Error::Unavailable(format!(
                        "consul agent at {} is unreachable: {msg}",
                        self.inner.base
                    ))
                } else {
                    Error::backend_msg(BACKEND, format!("{what}: {msg}"))
                }
            })?;
            let status = resp.status();
            let index = resp
                .headers()
                .get("x-consul-index")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            let body = Limited::new(resp.into_body(), max)
                .collect()
                .await
                .map_err(|e| {
                    if e.downcast_ref::<http_body_util::LengthLimitError>()
                        .is_some()
                    {
                        Error::BodyTooLarge { limit: max }
                    } else {
                        Error::backend_msg(BACKEND, format!("{what}: reading the body: {e}"))
                    }
                })?
                .to_bytes();
            Ok::<_, Error>(Reply {
                status,
                index,
                body,
            })
        };
        let reply = tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| Error::timeout(format!("consul {what}"), timeout))??;
        if reply.status == StatusCode::FORBIDDEN {
            return Err(Error::Auth {
                backend: BACKEND,
                message: format!("{what}: {}", reply.text()),
            });
        }
        Ok(reply)
    }

    pub(crate) async fn get(&self, path_and_query: &str) -> Result<Reply> {
        self.send(Method::GET, path_and_query, None, None).await
    }

    pub(crate) async fn put(&self, path_and_query: &str, body: Option<Vec<u8>>) -> Result<Reply> {
        self.send(Method::PUT, path_and_query, body, None).await
    }
}

fn path_only(pq: &str) -> &str {
    pq.split('?').next().unwrap_or(pq)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_encoded() {
        assert_eq!(enc("web-1.a_b~"), "web-1.a_b~");
        assert_eq!(enc("a:b@c/d e"), "a%3Ab%40c%2Fd%20e");
    }
}
