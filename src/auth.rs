//! Authentication and authorisation: bearer tokens with roles, checked on every RPC.
//!
//! The interceptor in front of Ingest, AlertFeed, Scoring and Ops turns the
//! `authorization: Bearer <token>` header into a `Principal` kept in the request's extensions;
//! each handler then asks `authorize` whether that principal may do what the request names
//! (stream calls, read one agent's alerts, ...). Tokens are matched by their SHA-256, so the
//! config file holds no secret. Health checking and reflection stay open: load balancers and
//! grpcurl need them, and they carry no personal data.

use std::net::SocketAddr;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Status};

use crate::config::{AuthConfig, Role};
use crate::domain::AgentId;
use crate::error::Error;
use crate::session::{Reject, Sessions};

/// Who is calling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// A loopback client without a token, where `auth.loopback_without_token` allows it.
    Loopback,
    Ingest,
    Agent(AgentId),
    Supervisor(Arc<str>),
    Ops,
}

/// What a request wants to do.
#[derive(Clone, Copy, Debug)]
pub enum Action<'a> {
    StreamCall,
    Score,
    /// Read an agent's alerts; `team` is the agent's team as far as the server knows.
    Subscribe {
        agent: &'a AgentId,
        team: Option<&'a str>,
    },
    Ops,
}

/// SHA-256 of a token in lowercase hex, as `auth.tokens[].sha256` holds it.
pub fn hash_token(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Who presents `header` (the `authorization` metadata) from `peer`.
pub fn authenticate(
    auth: &AuthConfig,
    header: Option<&str>,
    peer: Option<SocketAddr>,
) -> Result<Principal, Error> {
    let Some(header) = header else {
        if auth.loopback_without_token && peer.is_some_and(|p| p.ip().is_loopback()) {
            return Ok(Principal::Loopback);
        }
        return Err(Error::Unauthenticated(
            "missing authorization: Bearer token".into(),
        ));
    };
    let token = header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| Error::Unauthenticated("authorization is not a Bearer token".into()))?;
    let hash = hash_token(token);
    let entry = auth
        .tokens
        .iter()
        .find(|t| t.sha256 == hash)
        .ok_or_else(|| Error::Unauthenticated("unknown token".into()))?;
    Ok(match entry.role {
        Role::Ingest => Principal::Ingest,
        Role::Ops => Principal::Ops,
        // validation guarantees the id and team are there
        Role::Agent => Principal::Agent(AgentId(
            entry.agent_id.as_deref().unwrap_or_default().into(),
        )),
        Role::Supervisor => Principal::Supervisor(entry.team.as_deref().unwrap_or_default().into()),
    })
}

/// May `principal` do `action`? The whole permission table is here.
pub fn authorize(principal: &Principal, action: Action<'_>) -> Result<(), Error> {
    let allowed = match (principal, action) {
        (Principal::Loopback, _) => true,
        (Principal::Ingest, Action::StreamCall | Action::Score) => true,
        (Principal::Ops, Action::Ops | Action::Score) => true,
        (Principal::Agent(own), Action::Subscribe { agent, .. }) => own == agent,
        (Principal::Supervisor(team), Action::Subscribe { team: Some(t), .. }) => **team == *t,
        _ => false,
    };
    if allowed {
        return Ok(());
    }
    let what = match action {
        Action::StreamCall => "stream calls".to_string(),
        Action::Score => "score text".to_string(),
        Action::Subscribe { agent, .. } => format!("read the alerts of agent {agent}"),
        Action::Ops => "use the ops service".to_string(),
    };
    let who = match principal {
        Principal::Loopback => "a loopback client",
        Principal::Ingest => "an ingest token",
        Principal::Agent(_) => "this agent's token",
        Principal::Supervisor(_) => {
            "this supervisor's token (another team, or a team not seen yet)"
        }
        Principal::Ops => "an ops token",
    };
    Err(Error::PermissionDenied(format!("{who} may not {what}")))
}

/// The interceptor: authenticates every request and leaves its `Principal` for the handler.
#[derive(Clone)]
pub struct Authenticate {
    pub sessions: Arc<Sessions>,
}

impl Authenticate {
    /// `service` behind this interceptor.
    pub fn guard<S>(&self, service: S) -> InterceptedService<S, Authenticate> {
        InterceptedService::new(service, self.clone())
    }
}

impl Interceptor for Authenticate {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let cfg = self.sessions.config();
        let header = request
            .metadata()
            .get("authorization")
            .map(|v| v.to_str().unwrap_or(""));
        let principal = authenticate(&cfg.auth, header, request.remote_addr()).map_err(|e| {
            tracing::warn!(peer = ?request.remote_addr(), reason = %e, "unauthenticated request");
            self.sessions.reject(Reject::Unauthenticated, e)
        })?;
        request.extensions_mut().insert(principal);
        Ok(request)
    }
}

/// The principal the interceptor left on `request`.
pub fn principal_of<T>(request: &Request<T>) -> Result<Principal, Error> {
    request
        .extensions()
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| Error::Unauthenticated("not authenticated".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TokenConfig;

    fn config(open: bool) -> AuthConfig {
        let token = |t: &str, role, agent: Option<&str>, team: Option<&str>| TokenConfig {
            sha256: hash_token(t),
            role,
            name: String::new(),
            agent_id: agent.map(Into::into),
            team: team.map(Into::into),
        };
        AuthConfig {
            loopback_without_token: open,
            tokens: vec![
                token("ing", Role::Ingest, None, None),
                token("a1", Role::Agent, Some("agent-1"), None),
                token("sup", Role::Supervisor, None, Some("team-a")),
                token("ops", Role::Ops, None, None),
            ],
        }
    }

    const LOCAL: Option<SocketAddr> = Some(SocketAddr::new(
        std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        5000,
    ));
    const REMOTE: Option<SocketAddr> = Some(SocketAddr::new(
        std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 7)),
        5000,
    ));

    #[test]
    fn tokens_map_to_their_roles_and_the_rest_is_unauthenticated() {
        let cfg = config(false);
        assert_eq!(
            authenticate(&cfg, Some("Bearer ing"), REMOTE).unwrap(),
            Principal::Ingest
        );
        assert_eq!(
            authenticate(&cfg, Some("Bearer a1"), REMOTE).unwrap(),
            Principal::Agent(AgentId("agent-1".into()))
        );
        for bad in [None, Some("Bearer nope"), Some("Basic a1"), Some("Bearer ")] {
            assert!(matches!(
                authenticate(&cfg, bad, LOCAL),
                Err(Error::Unauthenticated(_))
            ));
        }
    }

    #[test]
    fn loopback_needs_no_token_only_when_allowed_and_only_on_loopback() {
        let cfg = config(true);
        assert_eq!(
            authenticate(&cfg, None, LOCAL).unwrap(),
            Principal::Loopback
        );
        assert!(authenticate(&cfg, None, REMOTE).is_err());
        assert!(authenticate(&cfg, None, None).is_err());
        // a wrong token is refused even on loopback
        assert!(authenticate(&cfg, Some("Bearer nope"), LOCAL).is_err());
    }

    #[test]
    fn each_role_reaches_only_its_scope() {
        let a1 = AgentId("agent-1".into());
        let a2 = AgentId("agent-2".into());
        let sub = |agent, team| Action::Subscribe { agent, team };
        let agent = Principal::Agent(a1.clone());
        assert!(authorize(&agent, sub(&a1, None)).is_ok());
        assert!(authorize(&agent, sub(&a2, None)).is_err());
        assert!(authorize(&agent, Action::StreamCall).is_err());
        let sup = Principal::Supervisor("team-a".into());
        assert!(authorize(&sup, sub(&a2, Some("team-a"))).is_ok());
        assert!(authorize(&sup, sub(&a2, Some("team-b"))).is_err());
        assert!(authorize(&sup, sub(&a2, None)).is_err());
        assert!(authorize(&Principal::Ingest, Action::StreamCall).is_ok());
        assert!(authorize(&Principal::Ingest, sub(&a1, None)).is_err());
        assert!(authorize(&Principal::Ingest, Action::Ops).is_err());
        assert!(authorize(&Principal::Ops, Action::Ops).is_ok());
        assert!(authorize(&Principal::Ops, sub(&a1, None)).is_err());
        assert!(matches!(
            authorize(&Principal::Ops, Action::StreamCall),
            Err(Error::PermissionDenied(_))
        ));
    }
}
