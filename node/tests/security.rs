//! SASL and the security APIs on the wire, with requests encoded by
//! `kafka-protocol` and SCRAM computed by the client side of
//! `sluice-security`: users altered, described, logging in and refused;
//! hostile input during authentication; sessions that expire; the ACL APIs
//! at every advertised version. Real clients over TLS and SASL are in
//! tests/clients/test_security.py and test_acls.py.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use kafka_protocol::messages::alter_user_scram_credentials_request::{
    ScramCredentialDeletion, ScramCredentialUpsertion,
};
use kafka_protocol::messages::create_acls_request::AclCreation;
use kafka_protocol::messages::delete_acls_request::DeleteAclsFilter;
use kafka_protocol::messages::describe_user_scram_credentials_request::UserName;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use sluice_security::scram::{salted_password, server_nonce, ClientExchange};
use sluice_security::Mechanism;

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

/// A node whose only listener is SASL_PLAINTEXT, with `admin` and `alice`.
fn sasl_node(extra: &[&str]) -> (tempfile::TempDir, Node) {
    let d = tempfile::tempdir().unwrap();
    let users = d.path().join("users.txt");
    std::fs::write(&users, "admin:admin-secret\nalice:alice-secret\n").unwrap();
    let users = users.display().to_string();
    let mut args = vec![
        "--listeners",
        "SASL_PLAINTEXT://127.0.0.1:0",
        "--scram-users-file",
        &users,
    ];
    args.extend_from_slice(extra);
    let n = Node::start(&d.path().join("data"), &args);
    (d, n)
}

/// A SCRAM login at the given SaslAuthenticate version: the connection, or
/// the error code the node answered (the connection then closed).
fn login(node: &Node, m: Mechanism, user: &str, pw: &str, version: i16) -> Result<Client, i16> {
    let mut c = node.client();
    let hs = c.send(
        &SaslHandshakeRequest::default().with_mechanism(s(m.name())),
        1,
    );
    assert_eq!(hs.error_code, 0);
    match scram(&mut c, m, user, pw, version) {
        Ok(()) => Ok(c),
        Err(code) => {
            assert!(c.is_closed(), "a failed login closes the connection");
            Err(code)
        }
    }
}

fn scram(c: &mut Client, m: Mechanism, user: &str, pw: &str, version: i16) -> Result<(), i16> {
    let client = ClientExchange::new(m, user, pw, &server_nonce());
    let first = c.send(
        &SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from(client.first())),
        version,
    );
    if first.error_code != 0 {
        return Err(first.error_code);
    }
    let (last, expect) = client.last(&first.auth_bytes).unwrap();
    let done = c.send(
        &SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from(last)),
        version,
    );
    if done.error_code != 0 {
        return Err(done.error_code);
    }
    assert_eq!(
        done.auth_bytes.as_ref(),
        &expect[..],
        "the server proves it knows the key"
    );
    Ok(())
}

fn upsert(user: &str, m: Mechanism, pw: &str, iterations: i32) -> ScramCredentialUpsertion {
    let salt = b"0123456789abcdef".to_vec();
    ScramCredentialUpsertion::default()
        .with_name(s(user))
        .with_mechanism(m.code())
        .with_iterations(iterations)
        .with_salted_password(Bytes::from(salted_password(
            m,
            pw.as_bytes(),
            &salt,
            iterations.max(1) as u32,
        )))
        .with_salt(Bytes::from(salt))
}

#[test]
fn users_are_created_described_deleted_and_log_in_only_while_they_exist() {
    let (_d, n) = sasl_node(&[]);
    let mut admin = login(&n, Mechanism::Sha512, "admin", "admin-secret", 2).unwrap();
    let r = admin.send(
        &AlterUserScramCredentialsRequest::default().with_upsertions(vec![upsert(
            "carol",
            Mechanism::Sha512,
            "carol-pw",
            8192,
        )]),
        0,
    );
    assert_eq!(
        r.results[0].error_code, 0,
        "{:?}",
        r.results[0].error_message
    );
    let d = admin.send(
        &DescribeUserScramCredentialsRequest::default()
            .with_users(Some(vec![UserName::default().with_name(s("carol"))])),
        0,
    );
    let info = &d.results[0].credential_infos;
    assert_eq!(
        (info.len(), info[0].mechanism, info[0].iterations),
        (1, 2, 8192)
    );
    let all = admin.send(
        &DescribeUserScramCredentialsRequest::default().with_users(None),
        0,
    );
    let names: Vec<String> = all.results.iter().map(|r| r.user.to_string()).collect();
    assert_eq!(names, ["admin", "alice", "carol"]);

    let mut carol = login(&n, Mechanism::Sha512, "carol", "carol-pw", 1).unwrap();
    let md = carol.send(&MetadataRequest::default().with_topics(None), 12);
    assert_eq!(md.brokers.len(), 1);
    assert_eq!(
        login(&n, Mechanism::Sha512, "carol", "wrong", 1).err(),
        Some(58)
    );
    assert_eq!(
        login(&n, Mechanism::Sha256, "carol", "carol-pw", 1).err(),
        Some(58)
    );

    let r = admin.send(
        &AlterUserScramCredentialsRequest::default().with_deletions(vec![
            ScramCredentialDeletion::default()
                .with_name(s("carol"))
                .with_mechanism(2),
        ]),
        0,
    );
    assert_eq!(r.results[0].error_code, 0);
    assert_eq!(
        login(&n, Mechanism::Sha512, "carol", "carol-pw", 1).err(),
        Some(58)
    );
    // carol's open connection stays what it authenticated as until it ends.
    assert!(carol
        .try_send(&MetadataRequest::default().with_topics(None), 12)
        .is_some());
    n.assert_no_panics();
}

#[test]
fn bad_credential_changes_are_refused_user_by_user() {
    let (_d, n) = sasl_node(&[]);
    let mut admin = login(&n, Mechanism::Sha256, "admin", "admin-secret", 0).unwrap();
    let r = admin.send(
        &AlterUserScramCredentialsRequest::default()
            .with_upsertions(vec![
                upsert("few", Mechanism::Sha256, "pw", 100),
                upsert("twice", Mechanism::Sha256, "pw", 4096),
                upsert("twice", Mechanism::Sha256, "pw", 4096),
                upsert("good", Mechanism::Sha256, "pw", 4096),
                upsert("unknown-mech", Mechanism::Sha256, "pw", 4096).with_mechanism(7),
                upsert("short", Mechanism::Sha512, "pw", 4096)
                    .with_salted_password(Bytes::from_static(b"too short")),
            ])
            .with_deletions(vec![ScramCredentialDeletion::default()
                .with_name(s("nobody"))
                .with_mechanism(1)]),
        0,
    );
    let code = |u: &str| {
        r.results
            .iter()
            .find(|x| x.user.as_str() == u)
            .unwrap()
            .error_code
    };
    assert_eq!(code("few"), 93, "UNACCEPTABLE_CREDENTIAL");
    assert_eq!(code("twice"), 92, "DUPLICATE_RESOURCE");
    assert_eq!(code("good"), 0);
    assert_eq!(code("unknown-mech"), 33, "UNSUPPORTED_SASL_MECHANISM");
    assert_eq!(code("short"), 93);
    assert_eq!(code("nobody"), 91, "RESOURCE_NOT_FOUND");
    assert!(login(&n, Mechanism::Sha256, "good", "pw", 2).is_ok());
    assert_eq!(login(&n, Mechanism::Sha256, "few", "pw", 2).err(), Some(58));
}

#[test]
fn hostile_input_during_authentication_closes_only_that_connection() {
    let (_d, n) = sasl_node(&[]);
    // A request before authentication: closed, unanswered.
    let mut c = n.client();
    assert!(c
        .try_send(&MetadataRequest::default().with_topics(None), 12)
        .is_none());
    // ApiVersions is allowed first, as Kafka allows it.
    let mut c = n.client();
    assert_eq!(c.send(&ApiVersionsRequest::default(), 3).error_code, 0);
    // An unknown mechanism: the enabled ones are named, then closed.
    let hs = c.send(
        &SaslHandshakeRequest::default().with_mechanism(s("GSSAPI")),
        1,
    );
    assert_eq!(hs.error_code, 33);
    let offered: Vec<&str> = hs.mechanisms.iter().map(|m| m.as_str()).collect();
    assert_eq!(offered, ["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"]);
    assert!(c.is_closed());
    // SaslAuthenticate before a handshake.
    let mut c = n.client();
    let r = c.send(
        &SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from_static(b"x")),
        1,
    );
    assert_eq!(r.error_code, 34, "ILLEGAL_SASL_STATE");
    assert!(c.is_closed());
    // Malformed PLAIN and SCRAM messages.
    for (mech, token) in [
        ("PLAIN", &b"no separators at all"[..]),
        ("PLAIN", b"\0\0"),
        ("SCRAM-SHA-512", b"\xff\xfe not utf-8"),
        ("SCRAM-SHA-512", b"p=tls-unique,,n=admin,r=abc"),
        ("SCRAM-SHA-512", b"n,,n=admin"),
        ("SCRAM-SHA-256", b"n,,n=admin,r=abc,tokenauth=true"),
    ] {
        let mut c = n.client();
        assert_eq!(
            c.send(&SaslHandshakeRequest::default().with_mechanism(s(mech)), 1)
                .error_code,
            0
        );
        let r = c.send(
            &SaslAuthenticateRequest::default().with_auth_bytes(Bytes::copy_from_slice(token)),
            2,
        );
        assert_eq!(r.error_code, 58, "{mech} {token:?}");
        assert!(c.is_closed());
    }
    // A v0 handshake: the token follows bare; garbage closes.
    let mut c = n.client();
    assert_eq!(
        c.send(
            &SaslHandshakeRequest::default().with_mechanism(s("SCRAM-SHA-512")),
            0
        )
        .error_code,
        0
    );
    assert!(c.raw(b"garbage").is_none());
    // A Kafka request in the middle of an exchange.
    let mut c = n.client();
    c.send(
        &SaslHandshakeRequest::default().with_mechanism(s("SCRAM-SHA-512")),
        1,
    );
    let first = ClientExchange::new(Mechanism::Sha512, "admin", "admin-secret", "abc").first();
    let r = c.send(
        &SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from(first)),
        1,
    );
    assert_eq!(r.error_code, 0);
    assert!(c
        .try_send(&MetadataRequest::default().with_topics(None), 12)
        .is_none());
    // A frame too large for an unauthenticated connection.
    let mut c = n.client();
    c.write_bytes(&(1i32 << 20).to_be_bytes());
    assert!(c.is_closed());
    // Everyone else is served: a v0 login (bare tokens) works.
    let mut c = n.client();
    c.send(
        &SaslHandshakeRequest::default().with_mechanism(s("SCRAM-SHA-256")),
        0,
    );
    let client = ClientExchange::new(Mechanism::Sha256, "alice", "alice-secret", "nonce0");
    let sf = c.raw(&client.first()).expect("server-first");
    let (last, expect) = client.last(&sf).unwrap();
    assert_eq!(c.raw(&last).expect("server-final").as_ref(), &expect[..]);
    assert_eq!(
        c.send(&MetadataRequest::default().with_topics(None), 12)
            .brokers
            .len(),
        1
    );
    n.assert_no_panics();
}

#[test]
fn sessions_expire_and_reauthentication_keeps_the_principal() {
    let (_d, n) = sasl_node(&["--connections-max-reauth-ms", "300"]);
    let mut c = n.client();
    c.send(
        &SaslHandshakeRequest::default().with_mechanism(s("SCRAM-SHA-512")),
        1,
    );
    let client = ClientExchange::new(Mechanism::Sha512, "alice", "alice-secret", "n1");
    let first = c.send(
        &SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from(client.first())),
        1,
    );
    let (last, _) = client.last(&first.auth_bytes).unwrap();
    let done = c.send(
        &SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from(last)),
        1,
    );
    assert_eq!((done.error_code, done.session_lifetime_ms), (0, 300));
    // Authenticating again, as the same user, renews the session.
    c.send(
        &SaslHandshakeRequest::default().with_mechanism(s("SCRAM-SHA-512")),
        1,
    );
    assert!(scram(&mut c, Mechanism::Sha512, "alice", "alice-secret", 1).is_ok());
    // As someone else: refused, closed.
    c.send(
        &SaslHandshakeRequest::default().with_mechanism(s("SCRAM-SHA-512")),
        1,
    );
    assert!(scram(&mut c, Mechanism::Sha512, "admin", "admin-secret", 1).is_err());
    assert!(c.is_closed());
    // A session that is not renewed ends at its first request after expiry.
    let mut c = login(&n, Mechanism::Sha512, "alice", "alice-secret", 2).unwrap();
    let started = Instant::now();
    let closed_after = wait_for(Duration::from_secs(10), || {
        c.try_send(&MetadataRequest::default().with_topics(None), 12)
            .is_none()
            .then(|| started.elapsed())
    });
    assert!(
        closed_after >= Duration::from_millis(300),
        "{closed_after:?}"
    );
}

#[test]
fn acl_apis_answer_at_every_version() {
    // Without an authorizer they say so, as Kafka does.
    let (_d, n) = sasl_node(&[]);
    let mut c = login(&n, Mechanism::Sha512, "admin", "admin-secret", 2).unwrap();
    let creation = AclCreation::default()
        .with_resource_type(2)
        .with_resource_name(s("orders"))
        .with_resource_pattern_type(3)
        .with_principal(s("User:alice"))
        .with_host(s("*"))
        .with_operation(3)
        .with_permission_type(3);
    for v in 1..=3 {
        let r = c.send(
            &CreateAclsRequest::default().with_creations(vec![creation.clone()]),
            v,
        );
        assert_eq!(r.results[0].error_code, 54, "SECURITY_DISABLED v{v}");
    }
    drop(n);
    // With one, as a super user: create, describe, delete at each version.
    let (_d, n) = sasl_node(&["--authorizer", "--super-users", "User:admin"]);
    let mut c = login(&n, Mechanism::Sha512, "admin", "admin-secret", 2).unwrap();
    for v in 1..=3 {
        let r = c.send(
            &CreateAclsRequest::default().with_creations(vec![
                creation.clone(),
                creation.clone().with_resource_type(7),
            ]),
            v,
        );
        assert_eq!(r.results[0].error_code, 0, "create v{v}");
        assert_eq!(
            r.results[1].error_code, 42,
            "INVALID_REQUEST for a USER resource v{v}"
        );
        let d = c.send(
            &DescribeAclsRequest::default()
                .with_resource_name_filter(None)
                .with_principal_filter(None)
                .with_host_filter(None)
                .with_resource_type_filter(1)
                .with_pattern_type_filter(1)
                .with_operation(1)
                .with_permission_type(1),
            v,
        );
        assert_eq!(d.error_code, 0);
        assert_eq!(d.resources.len(), 1, "describe v{v}");
        assert_eq!(d.resources[0].resource_name.as_str(), "orders");
        assert_eq!(d.resources[0].acls[0].principal.as_str(), "User:alice");
        let del = c.send(
            &DeleteAclsRequest::default().with_filters(vec![DeleteAclsFilter::default()
                .with_resource_type_filter(2)
                .with_resource_name_filter(Some(s("orders")))
                .with_principal_filter(None)
                .with_host_filter(None)
                .with_pattern_type_filter(3)
                .with_operation(1)
                .with_permission_type(1)]),
            v,
        );
        assert_eq!(del.filter_results[0].matching_acls.len(), 1, "delete v{v}");
    }
    // alice, no super user and no ACL: refused.
    let mut alice = login(&n, Mechanism::Sha512, "alice", "alice-secret", 2).unwrap();
    let r = alice.send(
        &CreateAclsRequest::default().with_creations(vec![creation]),
        3,
    );
    assert_eq!(r.results[0].error_code, 31, "CLUSTER_AUTHORIZATION_FAILED");
    let md = alice.send(&MetadataRequest::default().with_topics(None), 12);
    assert!(md.topics.is_empty());
}
