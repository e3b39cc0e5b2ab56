//! Username/password login against Nacos' HTTP endpoint `/nacos/v1/auth/login`.
//!
//! The SDK's own HTTP login plugin writes the password into its debug log and cannot tell its
//! caller that the credentials were refused. This plugin keeps the password out of every log and
//! `Debug` output, sends it in the request body (not in the URL), shares one token among all the
//! SDK connections of a registry, and remembers why the last login failed so that construction
//! can return a clear [`Error::Auth`](waypost_core_types::Error::Auth).

use std::sync::Arc;
use std::time::Duration;

use nacos_sdk::api::plugin::{AuthContext, AuthPlugin, LoginIdentityContext, RequestResource};
use parking_lot::Mutex;
use tokio::time::Instant;
use waypost_core_types::quote::{quoted, quoted_up_to};
use waypost_core_types::Secret;

const ACCESS_TOKEN: &str = "accessToken";
/// Largest login answer read; a token answer is well under 1 KiB.
const MAX_LOGIN_ANSWER: usize = 64 * 1024;
/// Longest time a token is used before it is asked for again, whatever TTL the server states.
const MAX_REFRESH: Duration = Duration::from_secs(3600);

/// When to log in again for a token valid for `ttl`: halfway through its life, at most an hour
/// away (a server stating an absurd TTL cannot make the instant overflow or the token stale).
fn refresh_time(now: Instant, ttl: Duration) -> Instant {
    now + (ttl / 2).min(MAX_REFRESH)
}

/// The body of a login answer, refused beyond [`MAX_LOGIN_ANSWER`] bytes.
async fn read_bounded(mut resp: reqwest::Response) -> Result<String, String> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
        if body.len() + chunk.len() > MAX_LOGIN_ANSWER {
            return Err(format!(
                "the answer is larger than {MAX_LOGIN_ANSWER} bytes"
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// Why the last login did not produce a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LoginFailure {
    /// The server answered and refused the credentials.
    Rejected(String),
    /// No server could be reached or understood.
    Unreachable(String),
}

#[derive(Debug)]
struct State {
    token: Option<Secret>,
    refresh_at: Instant,
    last_failure: Option<LoginFailure>,
}

/// The login plugin, shared by every SDK connection of one registry.
#[derive(Debug)]
pub(crate) struct LoginPlugin {
    username: String,
    password: Secret,
    servers: Vec<String>,
    http: reqwest::Client,
    state: Mutex<State>,
    login_lock: tokio::sync::Mutex<()>,
}

impl LoginPlugin {
    pub(crate) fn new(
        username: String,
        password: Secret,
        servers: Vec<String>,
        timeout: Duration,
    ) -> Arc<Self> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .unwrap_or_default();
        Arc::new(LoginPlugin {
            username,
            password,
            servers,
            http,
            state: Mutex::new(State {
                token: None,
                refresh_at: Instant::now(),
                last_failure: None,
            }),
            login_lock: tokio::sync::Mutex::new(()),
        })
    }

    /// Whether a token is held.
    #[cfg(test)]
    pub(crate) fn has_token(&self) -> bool {
        self.state.lock().token.is_some()
    }

    /// Why the last login failed, if it did.
    pub(crate) fn last_failure(&self) -> Option<LoginFailure> {
        self.state.lock().last_failure.clone()
    }

    /// Logs in unless a fresh token is held.
    ///
    /// # Errors
    /// Why no token could be obtained.
    pub(crate) async fn ensure_login(&self) -> Result<(), LoginFailure> {
        let _one_at_a_time = self.login_lock.lock().await;
        {
            let st = self.state.lock();
            if st.token.is_some() && Instant::now() < st.refresh_at {
                return Ok(());
            }
        }
        let mut last = LoginFailure::Unreachable("no server address".into());
        for server in &self.servers {
            match self.login_once(server).await {
                Ok((token, ttl)) => {
                    let mut st = self.state.lock();
                    st.token = Some(Secret::new(token));
                    // Refresh well before expiry (the SDK asks every 30 s).
                    st.refresh_at = refresh_time(Instant::now(), ttl);
                    st.last_failure = None;
                    return Ok(());
                }
                Err(e) => last = e,
            }
        }
        let mut st = self.state.lock();
        if matches!(last, LoginFailure::Rejected(_)) {
            // Refused credentials: the old token (if any) is not to be trusted either.
            st.token = None;
        }
        st.last_failure = Some(last.clone());
        Err(last)
    }

    async fn login_once(&self, server: &str) -> Result<(String, Duration), LoginFailure> {
        let url = format!("http://{server}/nacos/v1/auth/login");
        let body = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("username", &self.username)
            .append_pair("password", self.password.expose())
            .finish();
        let resp = self
            .http
            .post(&url)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .map_err(|e| LoginFailure::Unreachable(format!("login at {server}: {e}")))?;
        let status = resp.status();
        let text = read_bounded(resp)
            .await
            .map_err(|e| LoginFailure::Unreachable(format!("login at {server}: {e}")))?;
        if status.as_u16() == 401 || status.as_u16() == 403 {
            return Err(LoginFailure::Rejected(format!(
                "the server refused user `{}` (HTTP {}): {}",
                quoted(&self.username),
                status.as_u16(),
                quoted_up_to(text.trim(), 300)
            )));
        }
        if !status.is_success() {
            return Err(LoginFailure::Unreachable(format!(
                "login at {server}: HTTP {}: {}",
                status.as_u16(),
                quoted_up_to(text.trim(), 300)
            )));
        }
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct LoginResponse {
            access_token: String,
            #[serde(default)]
            token_ttl: u64,
        }
        let parsed: LoginResponse = serde_json::from_str(&text).map_err(|e| {
            LoginFailure::Unreachable(format!(
                "login at {server}: unexpected answer: {}",
                quoted(&e.to_string())
            ))
        })?;
        let ttl = if parsed.token_ttl == 0 {
            Duration::from_secs(18_000)
        } else {
            Duration::from_secs(parsed.token_ttl)
        };
        Ok((parsed.access_token, ttl))
    }
}

#[async_trait::async_trait]
impl AuthPlugin for LoginPlugin {
    async fn login(&self, _server_list: Arc<Vec<String>>, _auth_context: Arc<AuthContext>) {
        if let Err(e) = self.ensure_login().await {
            // The message names the user, never the password.
            tracing::warn!(target: "waypost::nacos", "nacos login failed: {e:?}");
        }
    }

    fn get_login_identity(&self, _resource: RequestResource) -> LoginIdentityContext {
        match self.state.lock().token.as_ref() {
            Some(t) => LoginIdentityContext::default().add_context(ACCESS_TOKEN, t.expose()),
            None => LoginIdentityContext::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_password() {
        let p = LoginPlugin::new(
            "nacos".into(),
            Secret::new("top-secret-pw"),
            vec!["127.0.0.1:1".into()],
            Duration::from_millis(100),
        );
        let dbg = format!("{p:?}");
        assert!(!dbg.contains("top-secret-pw"), "{dbg}");
        assert!(dbg.contains("nacos"));
    }

    #[tokio::test]
    async fn unreachable_server_is_not_a_rejection() {
        let p = LoginPlugin::new(
            "nacos".into(),
            Secret::new("pw"),
            vec!["127.0.0.1:1".into()],
            Duration::from_millis(300),
        );
        match p.ensure_login().await {
            Err(LoginFailure::Unreachable(m)) => assert!(!m.contains("pw\""), "{m}"),
            other => panic!("expected Unreachable, got {other:?}"),
        }
        assert!(!p.has_token());
        assert!(matches!(
            p.last_failure(),
            Some(LoginFailure::Unreachable(_))
        ));
    }

    /// A one-shot HTTP server on loopback that answers every request with `status` and `body`.
    async fn hostile_server(status: &'static str, body: Vec<u8>) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let mut buf = vec![0u8; 4096];
                let _ = conn.read(&mut buf).await;
                let head = format!(
                    "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(head.as_bytes()).await;
                let _ = conn.write_all(&body).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn an_absurd_token_ttl_is_used_for_an_hour_at_most() {
        let answer = format!(r#"{{"accessToken":"tok","tokenTtl":{}}}"#, u64::MAX);
        let server = hostile_server("200 OK", answer.into_bytes()).await;
        let p = LoginPlugin::new(
            "nacos".into(),
            Secret::new("pw"),
            vec![server],
            Duration::from_secs(5),
        );
        p.ensure_login().await.unwrap();
        assert!(p.has_token());
        let now = Instant::now();
        assert_eq!(refresh_time(now, Duration::MAX), now + MAX_REFRESH);
        assert_eq!(
            refresh_time(now, Duration::from_secs(60)),
            now + Duration::from_secs(30)
        );
    }

    #[tokio::test]
    async fn a_hostile_login_answer_is_bounded_and_escaped() {
        let mut body = b"\x1b[2J\r\nFAKE LOG LINE\x07".to_vec();
        body.extend(std::iter::repeat_n(b'x', 10_000));
        let server = hostile_server("401 Unauthorized", body).await;
        let p = LoginPlugin::new(
            "nacos".into(),
            Secret::new("pw"),
            vec![server.clone()],
            Duration::from_secs(5),
        );
        match p.ensure_login().await {
            Err(LoginFailure::Rejected(m)) => {
                assert!(!m.chars().any(char::is_control), "{m:?}");
                assert!(m.contains(r"\u{1b}[2J\r\nFAKE LOG LINE\u{7}"), "{m}");
                assert!(m.len() < 600, "{} bytes", m.len());
            }
            other => panic!("expected Rejected, got {other:?}"),
        }
        let huge = hostile_server("200 OK", vec![b'{'; MAX_LOGIN_ANSWER + 1]).await;
        let p = LoginPlugin::new(
            "nacos".into(),
            Secret::new("pw"),
            vec![huge],
            Duration::from_secs(5),
        );
        match p.ensure_login().await {
            Err(LoginFailure::Unreachable(m)) => assert!(m.contains("larger than"), "{m}"),
            other => panic!("expected Unreachable, got {other:?}"),
        }
    }
}
