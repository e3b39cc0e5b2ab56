//! ACLs of the fake agent: who is asking (a token from the query, `X-Consul-Token` or a bearer
//! header) and Consul's "permission denied" answer.

use super::query::Query;
use super::respond::{text, Resp};
use super::Shared;

/// Who is asking, under ACLs.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Caller {
    /// ACLs off, or the configured token.
    Allowed,
    Anonymous,
}

pub(crate) fn resolve_token(
    shared: &Shared,
    q: &Query,
    headers: &http::HeaderMap,
) -> Result<Caller, Resp> {
    let Some(secret) = &shared.opts.acl_token else {
        return Ok(Caller::Allowed);
    };
    let from_query = q.get("token").filter(|t| !t.is_empty()).map(str::to_owned);
    let from_header = headers
        .get("x-consul-token")
        .and_then(|v| v.to_str().ok())
        .filter(|t| !t.is_empty())
        .map(str::to_owned);
    let from_bearer = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| rest.trim().to_owned())
        })
        .filter(|t| !t.is_empty());
    match from_query.or(from_header).or(from_bearer) {
        None => Ok(Caller::Anonymous),
        Some(t) if &t == secret => Ok(Caller::Allowed),
        Some(_) => Err(text(403, "ACL not found")),
    }
}

pub(crate) fn denied(perm: &str, on: &str) -> Resp {
    text(
        403,
        format!(
            "Permission denied: anonymous token lacks permission '{perm}' on \"{on}\". The anonymous \
             token is used implicitly when a request does not specify a token."
        ),
    )
}
