//! SASL on a connection: SaslHandshake (v0, whose tokens then travel as
//! bare length-prefixed frames, and v1, whose tokens travel in
//! SaslAuthenticate), the PLAIN and SCRAM exchanges against the stored
//! credentials, and re-authentication (KIP-368): a session lasts
//! `connections.max.reauth.ms` and the client must authenticate again, as
//! the same principal, before it runs out.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_security::scram::{server_nonce, ServerExchange, Step};
use sluice_security::{plain, user_principal, Mechanism, ScramCredential, SecurityRecord};

/// A SASL mechanism this node can offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mech {
    Plain,
    Scram(Mechanism),
}

impl Mech {
    pub fn parse(name: &str) -> Option<Mech> {
        match name {
            "PLAIN" => Some(Mech::Plain),
            other => other.parse().ok().map(Mech::Scram),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Mech::Plain => "PLAIN",
            Mech::Scram(m) => m.name(),
        }
    }
}

/// `sasl.enabled.mechanisms`, parsed.
pub fn parse_mechanisms(s: &str) -> Result<Vec<Mech>, String> {
    let mut out = vec![];
    for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let m = Mech::parse(name).ok_or_else(|| {
            format!("unknown SASL mechanism {name} (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512)")
        })?;
        if !out.contains(&m) {
            out.push(m);
        }
    }
    if out.is_empty() {
        return Err("no SASL mechanism enabled".into());
    }
    Ok(out)
}

/// Settings every SASL connection shares.
#[derive(Debug, Clone)]
pub struct SaslConfig {
    pub mechanisms: Vec<Mech>,
    /// `connections.max.reauth.ms`; 0: a session never expires.
    pub max_reauth_ms: u64,
    /// `connection.failed.authentication.delay.ms`: a failed login is
    /// answered this late, slowing password guessing.
    pub failed_delay_ms: u64,
}

/// A credential no password matches: a PLAIN login of an unknown user is
/// checked against it, so it takes as long as a wrong password (the time
/// does not tell which users exist).
fn decoy() -> &'static ScramCredential {
    static DECOY: std::sync::OnceLock<ScramCredential> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| {
        ScramCredential::new(Mechanism::Sha512, &server_nonce(), 4096)
            .expect("4096 iterations are allowed")
    })
}

enum State {
    /// Waiting for SaslHandshake.
    Start,
    /// A mechanism was chosen; `raw` for a v0 handshake.
    Chosen { mech: Mech, raw: bool },
    /// Between SCRAM's two client messages.
    Scram {
        exchange: Box<ServerExchange>,
        raw: bool,
    },
    /// Authenticated (possibly again, if re-authenticating).
    Done,
}

/// A connection's SASL state.
pub struct Authenticator {
    config: Arc<SaslConfig>,
    state: State,
    /// The principal once authenticated; kept through re-authentication.
    principal: Option<String>,
    /// The mechanism of the first authentication: re-authentication must
    /// use it again, as Kafka requires.
    mechanism: Option<Mech>,
    expires: Option<Instant>,
}

/// What a client's token leads to.
pub enum Outcome {
    /// Send these bytes; the exchange goes on.
    Continue(Vec<u8>),
    /// Authenticated: send these bytes; the session lasts this long (ms, 0
    /// for ever).
    Done { reply: Vec<u8>, lifetime_ms: i64 },
}

/// Why a connection's authentication failed: the client is told
/// `message`; the node logs `detail`.
#[derive(Debug)]
pub struct Failed {
    pub message: String,
    pub detail: String,
}

impl Failed {
    fn credentials(mech: Mech, detail: impl Into<String>) -> Failed {
        Failed {
            message: format!(
                "Authentication failed during authentication due to invalid credentials with SASL mechanism {}",
                mech.name()
            ),
            detail: detail.into(),
        }
    }
    fn state(detail: &str) -> Failed {
        Failed {
            message: detail.to_string(),
            detail: detail.to_string(),
        }
    }
}

/// The answer to a SaslHandshake.
pub enum Handshake {
    Accepted,
    /// UNSUPPORTED_SASL_MECHANISM: the connection closes after the answer.
    Unsupported,
    /// ILLEGAL_SASL_STATE: the connection closes after the answer.
    Illegal,
}

impl Authenticator {
    pub fn new(config: Arc<SaslConfig>) -> Authenticator {
        Authenticator {
            config,
            state: State::Start,
            principal: None,
            mechanism: None,
            expires: None,
        }
    }

    pub fn mechanisms(&self) -> Vec<&'static str> {
        self.config.mechanisms.iter().map(|m| m.name()).collect()
    }

    /// The authenticated principal, while the session has not expired.
    pub fn principal(&self) -> Option<&str> {
        match self.expires {
            Some(t) if Instant::now() >= t => None,
            _ => self.principal.as_deref(),
        }
    }

    /// Whether an exchange is under way (only its messages may come now).
    pub fn exchanging(&self) -> bool {
        !matches!(self.state, State::Start | State::Done)
    }

    /// Whether the next frame is a bare token (after a v0 handshake).
    pub fn raw(&self) -> bool {
        matches!(
            self.state,
            State::Chosen { raw: true, .. } | State::Scram { raw: true, .. }
        )
    }

    /// Whether a SaslAuthenticate may come now.
    pub fn expects_token(&self) -> bool {
        matches!(self.state, State::Chosen { .. } | State::Scram { .. })
    }

    pub fn handshake(&mut self, mechanism: &str, version: i16) -> Handshake {
        if !matches!(self.state, State::Start | State::Done) {
            return Handshake::Illegal;
        }
        // Re-authentication (KIP-368) needs SaslAuthenticate: v1 only.
        if self.principal.is_some() && version == 0 {
            return Handshake::Illegal;
        }
        match Mech::parse(mechanism).filter(|m| self.config.mechanisms.contains(m)) {
            Some(mech) if self.mechanism.is_some_and(|first| first != mech) => Handshake::Illegal,
            Some(mech) => {
                self.state = State::Chosen {
                    mech,
                    raw: version == 0,
                };
                Handshake::Accepted
            }
            None => Handshake::Unsupported,
        }
    }

    /// Takes the client's next token. Runs PBKDF2 for PLAIN: call it off
    /// the async workers.
    pub fn step(
        &mut self,
        token: &[u8],
        security: Option<&SecurityRecord>,
    ) -> Result<Outcome, Failed> {
        let lookup =
            |user: &str, m: Mechanism| security.and_then(|s| s.credential(user, m)).cloned();
        let mech = match &self.state {
            State::Chosen { mech, .. } => Some(*mech),
            State::Scram { exchange, .. } => Some(Mech::Scram(exchange.mechanism())),
            _ => None,
        };
        let (user, reply) = match std::mem::replace(&mut self.state, State::Start) {
            State::Chosen {
                mech: Mech::Plain, ..
            } => {
                let login = plain::parse(token)
                    .map_err(|e| Failed::credentials(Mech::Plain, e.to_string()))?;
                // Checked against the strongest stored credential.
                let ok = match [Mechanism::Sha512, Mechanism::Sha256]
                    .into_iter()
                    .find_map(|m| lookup(login.user, m).map(|c| (m, c)))
                {
                    Some((m, c)) => c.verify_password(m, login.password),
                    None => {
                        let _ = decoy().verify_password(Mechanism::Sha512, login.password);
                        false
                    }
                };
                if !ok {
                    return Err(Failed::credentials(
                        Mech::Plain,
                        format!("PLAIN login of {} refused", login.user),
                    ));
                }
                (login.user.to_string(), vec![])
            }
            State::Chosen {
                mech: Mech::Scram(m),
                raw,
            } => {
                let mut exchange = ServerExchange::new(m);
                match exchange.step(token, |u| lookup(u, m), server_nonce) {
                    Ok(Step::Continue(reply)) => {
                        self.state = State::Scram {
                            exchange: Box::new(exchange),
                            raw,
                        };
                        return Ok(Outcome::Continue(reply));
                    }
                    Ok(Step::Done { .. }) => unreachable!("SCRAM takes two client messages"),
                    Err(e) => return Err(Failed::credentials(Mech::Scram(m), e.to_string())),
                }
            }
            State::Scram { mut exchange, .. } => {
                let m = exchange.mechanism();
                match exchange.step(token, |_| None, String::new) {
                    Ok(Step::Done { user, server_final }) => (user, server_final),
                    Ok(Step::Continue(_)) => unreachable!("SCRAM's second message ends it"),
                    Err(e) => return Err(Failed::credentials(Mech::Scram(m), e.to_string())),
                }
            }
            State::Start | State::Done => {
                return Err(Failed::state(
                    "SaslAuthenticate request received before a SaslHandshake",
                ))
            }
        };
        let principal = user_principal(&user);
        if let Some(before) = &self.principal {
            if *before != principal {
                return Err(Failed::state(
                    "re-authentication must keep the connection's principal",
                ));
            }
        }
        self.principal = Some(principal);
        self.mechanism = mech;
        self.state = State::Done;
        let ms = self.config.max_reauth_ms;
        self.expires = (ms > 0).then(|| Instant::now() + Duration::from_millis(ms));
        Ok(Outcome::Done {
            reply,
            lifetime_ms: ms as i64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_security::ScramCredential;

    fn record() -> SecurityRecord {
        let mut r = SecurityRecord::default();
        r.users.entry("alice".into()).or_default().insert(
            Mechanism::Sha512,
            ScramCredential::new(Mechanism::Sha512, "secret", 4096).unwrap(),
        );
        r
    }

    fn auth(mechs: &str, reauth: u64) -> Authenticator {
        Authenticator::new(Arc::new(SaslConfig {
            mechanisms: parse_mechanisms(mechs).unwrap(),
            max_reauth_ms: reauth,
            failed_delay_ms: 0,
        }))
    }

    #[test]
    fn plain_checks_the_stored_scram_credential() {
        let r = record();
        let mut a = auth("PLAIN", 0);
        assert!(matches!(a.handshake("PLAIN", 1), Handshake::Accepted));
        assert!(a.step(b"\0alice\0secret", Some(&r)).is_ok());
        assert_eq!(a.principal(), Some("User:alice"));
        let mut b = auth("PLAIN", 0);
        b.handshake("PLAIN", 1);
        let e = b.step(b"\0alice\0wrong", Some(&r)).err().unwrap();
        assert!(e
            .message
            .contains("invalid credentials with SASL mechanism PLAIN"));
        assert_eq!(b.principal(), None);
        let mut c = auth("PLAIN", 0);
        c.handshake("PLAIN", 1);
        assert!(c.step(b"\0bob\0secret", Some(&r)).is_err());
    }

    #[test]
    fn handshakes_refuse_what_is_not_enabled_and_tokens_need_one() {
        let mut a = auth("SCRAM-SHA-512", 0);
        assert!(matches!(a.handshake("PLAIN", 1), Handshake::Unsupported));
        assert!(matches!(a.handshake("GSSAPI", 1), Handshake::Unsupported));
        assert!(a.step(b"x", None).is_err());
        assert!(matches!(
            a.handshake("SCRAM-SHA-512", 0),
            Handshake::Accepted
        ));
        assert!(a.raw());
        assert!(matches!(
            a.handshake("SCRAM-SHA-512", 1),
            Handshake::Illegal
        ));
        assert!(parse_mechanisms("PLAIN,KERBEROS").is_err());
        assert!(parse_mechanisms("").is_err());
    }

    #[test]
    fn sessions_expire_and_reauthentication_keeps_the_principal() {
        let mut r = record();
        r.users.entry("bob".into()).or_default().insert(
            Mechanism::Sha512,
            ScramCredential::new(Mechanism::Sha512, "pw", 4096).unwrap(),
        );
        let mut a = auth("PLAIN", 1);
        a.handshake("PLAIN", 1);
        let Ok(Outcome::Done { lifetime_ms, .. }) = a.step(b"\0alice\0secret", Some(&r)) else {
            panic!("login")
        };
        assert_eq!(lifetime_ms, 1);
        let until = Instant::now() + Duration::from_secs(5);
        while a.principal().is_some() {
            assert!(Instant::now() < until, "the session did not expire");
            std::thread::yield_now();
        }
        assert!(matches!(a.handshake("PLAIN", 0), Handshake::Illegal));
        let mut other = auth("PLAIN,SCRAM-SHA-512", 0);
        other.handshake("PLAIN", 1);
        assert!(other.step(b"\0alice\0secret", Some(&r)).is_ok());
        assert!(
            matches!(other.handshake("SCRAM-SHA-512", 1), Handshake::Illegal),
            "re-authentication keeps the mechanism"
        );
        assert!(matches!(a.handshake("PLAIN", 1), Handshake::Accepted));
        assert!(a.step(b"\0bob\0pw", Some(&r)).is_err(), "another principal");
    }
}
