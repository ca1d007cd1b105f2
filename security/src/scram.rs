//! SCRAM-SHA-256 and SCRAM-SHA-512 (RFC 5802, RFC 7677) as Kafka speaks
//! them: credentials kept as salt, iteration count, StoredKey and ServerKey
//! (never the password), and the server's side of the exchange as a small
//! state machine over the client's two messages.

use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ring::{digest, hmac, pbkdf2, rand::SecureRandom};
use serde::{Deserialize, Serialize};

/// Kafka refuses fewer iterations than this, and more than [`MAX_ITERATIONS`].
pub const MIN_ITERATIONS: u32 = 4096;
pub const MAX_ITERATIONS: u32 = 16384;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Mechanism {
    #[serde(rename = "SCRAM-SHA-256")]
    Sha256,
    #[serde(rename = "SCRAM-SHA-512")]
    Sha512,
}

impl Mechanism {
    pub const ALL: [Mechanism; 2] = [Mechanism::Sha256, Mechanism::Sha512];

    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Sha256 => "SCRAM-SHA-256",
            Mechanism::Sha512 => "SCRAM-SHA-512",
        }
    }

    /// The code DescribeUserScramCredentials and AlterUserScramCredentials use.
    pub fn code(self) -> i8 {
        match self {
            Mechanism::Sha256 => 1,
            Mechanism::Sha512 => 2,
        }
    }

    pub fn from_code(code: i8) -> Option<Mechanism> {
        match code {
            1 => Some(Mechanism::Sha256),
            2 => Some(Mechanism::Sha512),
            _ => None,
        }
    }

    fn pbkdf2(self) -> pbkdf2::Algorithm {
        match self {
            Mechanism::Sha256 => pbkdf2::PBKDF2_HMAC_SHA256,
            Mechanism::Sha512 => pbkdf2::PBKDF2_HMAC_SHA512,
        }
    }

    fn hmac(self) -> hmac::Algorithm {
        match self {
            Mechanism::Sha256 => hmac::HMAC_SHA256,
            Mechanism::Sha512 => hmac::HMAC_SHA512,
        }
    }

    fn digest(self) -> &'static digest::Algorithm {
        match self {
            Mechanism::Sha256 => &digest::SHA256,
            Mechanism::Sha512 => &digest::SHA512,
        }
    }

    fn len(self) -> usize {
        self.digest().output_len()
    }
}

impl fmt::Display for Mechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Mechanism {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "SCRAM-SHA-256" => Ok(Mechanism::Sha256),
            "SCRAM-SHA-512" => Ok(Mechanism::Sha512),
            other => Err(format!("unknown SCRAM mechanism {other}")),
        }
    }
}

/// What the server keeps of a password (RFC 5802 section 3).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScramCredential {
    #[serde(with = "b64")]
    pub salt: Vec<u8>,
    pub iterations: u32,
    #[serde(with = "b64")]
    pub stored_key: Vec<u8>,
    #[serde(with = "b64")]
    pub server_key: Vec<u8>,
}

impl fmt::Debug for ScramCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramCredential")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

mod b64 {
    use super::*;
    pub fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&B64.encode(v))
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        B64.decode(s).map_err(serde::de::Error::custom)
    }
}

/// Why a credential cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    #[error("iterations must be between {MIN_ITERATIONS} and {MAX_ITERATIONS}, got {0}")]
    Iterations(i64),
    #[error("the salt must not be empty")]
    EmptySalt,
    #[error("the salted password must be {expected} bytes for {mechanism}, got {got}")]
    SaltedLength {
        mechanism: Mechanism,
        expected: usize,
        got: usize,
    },
}

/// The iteration count and salt a stored credential may have.
fn check(iterations: i64, salt: &[u8]) -> Result<u32, CredentialError> {
    if !(i64::from(MIN_ITERATIONS)..=i64::from(MAX_ITERATIONS)).contains(&iterations) {
        return Err(CredentialError::Iterations(iterations));
    }
    if salt.is_empty() {
        return Err(CredentialError::EmptySalt);
    }
    Ok(iterations as u32)
}

fn hmac_sign(m: Mechanism, key: &[u8], data: &[u8]) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(m.hmac(), key), data)
        .as_ref()
        .to_vec()
}

/// SaltedPassword (PBKDF2 of the password): what AlterUserScramCredentials
/// carries, so the password itself never travels.
pub fn salted_password(m: Mechanism, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
    let mut out = vec![0; m.len()];
    let n = NonZeroU32::new(iterations.max(1)).expect("at least one iteration");
    pbkdf2::derive(m.pbkdf2(), n, salt, password, &mut out);
    out
}

impl ScramCredential {
    /// The credential of `password` with a fresh random salt.
    pub fn new(
        m: Mechanism,
        password: &str,
        iterations: i64,
    ) -> Result<ScramCredential, CredentialError> {
        let mut salt = vec![0; 32];
        ring::rand::SystemRandom::new()
            .fill(&mut salt)
            .expect("the system's random source works");
        ScramCredential::derive(m, password.as_bytes(), &salt, iterations)
    }

    /// The credential of `password` with `salt`.
    pub fn derive(
        m: Mechanism,
        password: &[u8],
        salt: &[u8],
        iterations: i64,
    ) -> Result<ScramCredential, CredentialError> {
        let iterations = check(iterations, salt)?;
        let salted = salted_password(m, password, salt, iterations);
        Ok(ScramCredential::from_salted(m, &salted, salt, iterations))
    }

    /// The credential from a salted password computed elsewhere, as
    /// AlterUserScramCredentials carries it (the password never travels).
    pub fn from_salted_password(
        m: Mechanism,
        salted: &[u8],
        salt: &[u8],
        iterations: i64,
    ) -> Result<ScramCredential, CredentialError> {
        let iterations = check(iterations, salt)?;
        if salted.len() != m.len() {
            return Err(CredentialError::SaltedLength {
                mechanism: m,
                expected: m.len(),
                got: salted.len(),
            });
        }
        Ok(ScramCredential::from_salted(m, salted, salt, iterations))
    }

    fn from_salted(m: Mechanism, salted: &[u8], salt: &[u8], iterations: u32) -> ScramCredential {
        let client_key = hmac_sign(m, salted, b"Client Key");
        ScramCredential {
            salt: salt.to_vec(),
            iterations,
            stored_key: digest::digest(m.digest(), &client_key).as_ref().to_vec(),
            server_key: hmac_sign(m, salted, b"Server Key"),
        }
    }

    /// Whether `password` is the one this credential was made from (how a
    /// PLAIN login is checked against the stored SCRAM credential).
    pub fn verify_password(&self, m: Mechanism, password: &str) -> bool {
        let salted = salted_password(m, password.as_bytes(), &self.salt, self.iterations);
        let client_key = hmac_sign(m, &salted, b"Client Key");
        let stored = digest::digest(m.digest(), &client_key);
        constant_time_eq(stored.as_ref(), &self.stored_key)
    }
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Why an exchange failed. The client is told only that authentication
/// failed; the reason is for the node's log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    #[error("channel binding is not supported")]
    ChannelBinding,
    #[error("the authorization id {authzid} is not the user {user}")]
    Authzid { authzid: String, user: String },
    #[error("delegation tokens are not supported")]
    TokenAuth,
    #[error("unknown user {0}")]
    UnknownUser(String),
    #[error("the client's nonce does not continue the server's")]
    Nonce,
    #[error("the channel binding in the final message differs from the first")]
    BindingMismatch,
    #[error("invalid credentials for user {0}")]
    InvalidProof(String),
}

/// The server's side of one SCRAM exchange.
pub struct ServerExchange {
    mechanism: Mechanism,
    state: State,
}

enum State {
    Initial,
    SentFirst {
        user: String,
        credential: ScramCredential,
        gs2_header: String,
        client_first_bare: String,
        server_first: String,
        nonce: String,
    },
    Done,
}

/// The result of a client message.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Send this to the client and wait for its next message.
    Continue(Vec<u8>),
    /// Authenticated as `user`: send this last message.
    Done { user: String, server_final: Vec<u8> },
}

/// Splits `name=value` attributes of a SCRAM message.
fn attr(part: Option<&str>, name: char) -> Result<&str, ScramError> {
    let part = part.ok_or(ScramError::Malformed("missing attribute"))?;
    let mut chars = part.chars();
    if chars.next() != Some(name) || chars.next() != Some('=') {
        return Err(ScramError::Malformed("unexpected attribute"));
    }
    Ok(&part[2..])
}

/// A `saslname`: `=2C` is `,` and `=3D` is `=`; a lone `=` is not allowed.
fn decode_saslname(s: &str) -> Result<String, ScramError> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        match rest.get(i + 1..i + 3) {
            Some("2C") => out.push(','),
            Some("3D") => out.push('='),
            _ => return Err(ScramError::Malformed("bad escape in user name")),
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    if out.is_empty() {
        return Err(ScramError::Malformed("empty user name"));
    }
    Ok(out)
}

impl ServerExchange {
    pub fn new(mechanism: Mechanism) -> ServerExchange {
        ServerExchange {
            mechanism,
            state: State::Initial,
        }
    }

    pub fn mechanism(&self) -> Mechanism {
        self.mechanism
    }

    /// Takes the client's next message. `lookup` finds a user's credential
    /// for this mechanism; `nonce` is the server's part of the nonce
    /// (random, printable, without commas).
    pub fn step(
        &mut self,
        message: &[u8],
        lookup: impl FnOnce(&str) -> Option<ScramCredential>,
        nonce: impl FnOnce() -> String,
    ) -> Result<Step, ScramError> {
        let text = std::str::from_utf8(message).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        match std::mem::replace(&mut self.state, State::Done) {
            State::Initial => self.first(text, lookup, nonce),
            State::SentFirst {
                user,
                credential,
                gs2_header,
                client_first_bare,
                server_first,
                nonce,
            } => self.last(
                text,
                user,
                credential,
                &gs2_header,
                &client_first_bare,
                &server_first,
                &nonce,
            ),
            State::Done => Err(ScramError::Malformed("the exchange is over")),
        }
    }

    fn first(
        &mut self,
        text: &str,
        lookup: impl FnOnce(&str) -> Option<ScramCredential>,
        nonce: impl FnOnce() -> String,
    ) -> Result<Step, ScramError> {
        // gs2-header: cbind flag, authzid, then the bare message.
        let mut parts = text.splitn(3, ',');
        let cbind = parts.next().ok_or(ScramError::Malformed("empty"))?;
        match cbind {
            "n" | "y" => {}
            c if c.starts_with("p=") => return Err(ScramError::ChannelBinding),
            _ => return Err(ScramError::Malformed("bad channel binding flag")),
        }
        let authzid = parts.next().ok_or(ScramError::Malformed("no gs2 header"))?;
        let bare = parts
            .next()
            .ok_or(ScramError::Malformed("no client-first"))?;
        let gs2_header = format!("{cbind},{authzid},");
        let mut attrs = bare.split(',');
        let first = attrs.next();
        if first.is_some_and(|a| a.starts_with("m=")) {
            return Err(ScramError::Malformed("mandatory extension not supported"));
        }
        let user = decode_saslname(attr(first, 'n')?)?;
        let client_nonce = attr(attrs.next(), 'r')?;
        if client_nonce.is_empty() || !client_nonce.chars().all(|c| c.is_ascii_graphic()) {
            return Err(ScramError::Malformed("bad client nonce"));
        }
        for ext in attrs {
            if ext == "tokenauth=true" {
                return Err(ScramError::TokenAuth);
            }
        }
        if !authzid.is_empty() {
            let id = decode_saslname(
                authzid
                    .strip_prefix("a=")
                    .ok_or(ScramError::Malformed("bad authzid"))?,
            )?;
            if id != user {
                return Err(ScramError::Authzid { authzid: id, user });
            }
        }
        let credential = lookup(&user).ok_or_else(|| ScramError::UnknownUser(user.clone()))?;
        let nonce = format!("{client_nonce}{}", nonce());
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&credential.salt),
            credential.iterations
        );
        let reply = server_first.clone().into_bytes();
        self.state = State::SentFirst {
            user,
            credential,
            gs2_header,
            client_first_bare: bare.to_string(),
            server_first,
            nonce,
        };
        Ok(Step::Continue(reply))
    }

    #[allow(clippy::too_many_arguments)]
    fn last(
        &mut self,
        text: &str,
        user: String,
        credential: ScramCredential,
        gs2_header: &str,
        client_first_bare: &str,
        server_first: &str,
        nonce: &str,
    ) -> Result<Step, ScramError> {
        let m = self.mechanism;
        let (without_proof, proof) = text
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("no proof"))?;
        let mut attrs = without_proof.split(',');
        let binding = attr(attrs.next(), 'c')?;
        if B64.decode(binding).ok().as_deref() != Some(gs2_header.as_bytes()) {
            return Err(ScramError::BindingMismatch);
        }
        // As Kafka's server: the final nonce must end with the one the
        // server sent. librdkafka (2.0 and later) sends its own nonce again
        // in front of it; the proof covers the message as sent either way.
        if !attr(attrs.next(), 'r')?.ends_with(nonce) {
            return Err(ScramError::Nonce);
        }
        let proof = B64
            .decode(proof)
            .map_err(|_| ScramError::Malformed("proof is not base64"))?;
        if proof.len() != m.len() {
            return Err(ScramError::InvalidProof(user));
        }
        let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
        let signature = hmac_sign(m, &credential.stored_key, auth_message.as_bytes());
        let client_key: Vec<u8> = proof.iter().zip(&signature).map(|(p, s)| p ^ s).collect();
        let stored = digest::digest(m.digest(), &client_key);
        if !constant_time_eq(stored.as_ref(), &credential.stored_key) {
            return Err(ScramError::InvalidProof(user));
        }
        let server_signature = hmac_sign(m, &credential.server_key, auth_message.as_bytes());
        Ok(Step::Done {
            user,
            server_final: format!("v={}", B64.encode(server_signature)).into_bytes(),
        })
    }
}

/// A fresh server nonce: 24 random bytes, base64 (no commas).
pub fn server_nonce() -> String {
    let mut bytes = [0u8; 24];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system's random source works");
    B64.encode(bytes)
}

/// The client's side of an exchange (RFC 5802): what the operator and the
/// tests use to log in to a node.
pub struct ClientExchange {
    m: Mechanism,
    password: String,
    nonce: String,
    first_bare: String,
}

impl ClientExchange {
    /// `nonce`: printable, without commas (see [`server_nonce`]).
    pub fn new(m: Mechanism, user: &str, password: &str, nonce: &str) -> ClientExchange {
        let escaped = user.replace('=', "=3D").replace(',', "=2C");
        ClientExchange {
            m,
            password: password.into(),
            nonce: nonce.into(),
            first_bare: format!("n={escaped},r={nonce}"),
        }
    }

    /// The client-first message.
    pub fn first(&self) -> Vec<u8> {
        format!("n,,{}", self.first_bare).into_bytes()
    }

    /// The client-final message for the server's first message, and the
    /// server-final message a server that knows the password sends.
    pub fn last(&self, server_first: &[u8]) -> Result<(Vec<u8>, Vec<u8>), ScramError> {
        let sf =
            std::str::from_utf8(server_first).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let mut it = sf.split(',');
        let r = attr(it.next(), 'r')?;
        if !r.starts_with(&self.nonce) {
            return Err(ScramError::Nonce);
        }
        let salt = B64
            .decode(attr(it.next(), 's')?)
            .map_err(|_| ScramError::Malformed("salt is not base64"))?;
        let i: u32 = attr(it.next(), 'i')?
            .parse()
            .map_err(|_| ScramError::Malformed("bad iteration count"))?;
        // More than Kafka stores would only cost the client time: a hostile
        // server could stall it in PBKDF2.
        if i == 0 || i > MAX_ITERATIONS {
            return Err(ScramError::Malformed("bad iteration count"));
        }
        let salted = salted_password(self.m, self.password.as_bytes(), &salt, i);
        let client_key = hmac_sign(self.m, &salted, b"Client Key");
        let stored = digest::digest(self.m.digest(), &client_key);
        let without = format!("c=biws,r={r}");
        let auth = format!("{},{sf},{without}", self.first_bare);
        let sig = hmac_sign(self.m, stored.as_ref(), auth.as_bytes());
        let proof: Vec<u8> = client_key.iter().zip(&sig).map(|(a, b)| a ^ b).collect();
        let server_key = hmac_sign(self.m, &salted, b"Server Key");
        let expect = format!(
            "v={}",
            B64.encode(hmac_sign(self.m, &server_key, auth.as_bytes()))
        );
        Ok((
            format!("{without},p={}", B64.encode(proof)).into_bytes(),
            expect.into_bytes(),
        ))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    use ClientExchange as Client;

    /// RFC 7677's example exchange, byte for byte.
    #[test]
    fn rfc7677_sha256_example() {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let cred = ScramCredential::derive(Mechanism::Sha256, b"pencil", &salt, 4096).unwrap();
        let mut ex = ServerExchange::new(Mechanism::Sha256);
        let first = ex
            .step(
                b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO",
                |u| (u == "user").then(|| cred.clone()),
                || "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0".into(),
            )
            .unwrap();
        assert_eq!(
            first,
            Step::Continue(
                b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096".to_vec()
            )
        );
        let last = ex
            .step(
                b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
                |_| None,
                String::new,
            )
            .unwrap();
        assert_eq!(
            last,
            Step::Done {
                user: "user".into(),
                server_final: b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=".to_vec()
            }
        );
    }

    fn exchange(
        m: Mechanism,
        cred: &ScramCredential,
        user: &str,
        password: &str,
    ) -> Result<Step, ScramError> {
        let client = Client::new(m, user, password, "clientnonce123");
        let mut ex = ServerExchange::new(m);
        let Step::Continue(sf) = ex.step(&client.first(), |_| Some(cred.clone()), server_nonce)?
        else {
            panic!("the first message does not end the exchange")
        };
        let (last, expect) = client.last(&sf).unwrap();
        let step = ex.step(&last, |_| None, String::new)?;
        if let Step::Done { server_final, .. } = &step {
            assert_eq!(server_final, &expect);
        }
        Ok(step)
    }

    #[test]
    fn wrong_password_unknown_user_and_bad_messages_fail() {
        for m in Mechanism::ALL {
            let cred = ScramCredential::new(m, "right", 4096).unwrap();
            assert!(
                matches!(exchange(m, &cred, "alice", "right"), Ok(Step::Done { user, .. }) if user == "alice")
            );
            assert_eq!(
                exchange(m, &cred, "alice", "wrong"),
                Err(ScramError::InvalidProof("alice".into()))
            );
        }
        let mut ex = ServerExchange::new(Mechanism::Sha512);
        assert_eq!(
            ex.step(b"n,,n=bob,r=abc", |_| None, server_nonce),
            Err(ScramError::UnknownUser("bob".into()))
        );
        for bad in [
            &b""[..],
            b"x",
            b"n,,",
            b"n,,r=abc",
            b"p=tls-unique,,n=a,r=b",
            b"n,,n=a,r=b,tokenauth=true",
            b"\xff\xfe",
            b"n,a=bob,n=alice,r=x",
            b"n,,n=a=2,r=x",
        ] {
            let mut ex = ServerExchange::new(Mechanism::Sha512);
            let cred = ScramCredential::new(Mechanism::Sha512, "pw", 4096).unwrap();
            assert!(
                ex.step(bad, |_| Some(cred.clone()), server_nonce).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn user_names_are_unescaped_and_authzid_must_match() {
        let cred = ScramCredential::new(Mechanism::Sha256, "pw", 4096).unwrap();
        assert!(
            matches!(exchange(Mechanism::Sha256, &cred, "a,b=c", "pw"), Ok(Step::Done { user, .. }) if user == "a,b=c")
        );
        let mut ex = ServerExchange::new(Mechanism::Sha256);
        assert!(matches!(
            ex.step(
                b"n,a=alice,n=alice,r=x",
                |_| Some(cred.clone()),
                server_nonce
            ),
            Ok(Step::Continue(_))
        ));
    }

    #[test]
    fn credentials_refuse_bad_iterations_and_verify_plain_passwords() {
        assert_eq!(
            ScramCredential::new(Mechanism::Sha256, "pw", 4095).unwrap_err(),
            CredentialError::Iterations(4095)
        );
        assert!(ScramCredential::new(Mechanism::Sha256, "pw", 16385).is_err());
        let pw = "correct horse battery staple";
        let c = ScramCredential::new(Mechanism::Sha512, pw, 4096).unwrap();
        assert!(c.verify_password(Mechanism::Sha512, pw));
        assert!(!c.verify_password(Mechanism::Sha512, "correct horse battery stapler"));
        // Stored salted and hashed: no trace of the password (base64 has
        // no spaces).
        let json = serde_json::to_string(&c).unwrap();
        assert!(!json.contains(pw) && !json.contains(' '));
        assert_eq!(serde_json::from_str::<ScramCredential>(&json).unwrap(), c);
        assert!(!format!("{c:?}").contains("stored"));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        #[test]
        fn any_tampered_final_message_fails(flip in 0usize..200, user in "[a-z,=]{1,8}") {
            let m = Mechanism::Sha256;
            let cred = ScramCredential::new(m, "pw", 4096).unwrap();
            let client = Client::new(m, &user, "pw", "n0nce");
            let mut ex = ServerExchange::new(m);
            let Ok(Step::Continue(sf)) = ex.step(&client.first(), |_| Some(cred.clone()), server_nonce) else {
                panic!("first step")
            };
            let (mut last, _) = client.last(&sf).unwrap();
            let i = flip % last.len();
            last[i] ^= 0x01;
            prop_assert!(ex.step(&last, |_| None, String::new).is_err());
        }
    }
}
