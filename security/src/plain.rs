//! SASL PLAIN (RFC 4616): one message, `authzid NUL authcid NUL password`.
//! The password is checked against the user's stored SCRAM credential, so
//! PLAIN and SCRAM share one set of users and no password is kept.

/// A parsed PLAIN message.
#[derive(Debug, PartialEq, Eq)]
pub struct PlainLogin<'a> {
    pub user: &'a str,
    pub password: &'a str,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlainError {
    #[error("malformed PLAIN message: {0}")]
    Malformed(&'static str),
    #[error("the authorization id {0} is not the user")]
    Authzid(String),
}

pub fn parse(message: &[u8]) -> Result<PlainLogin<'_>, PlainError> {
    let text = std::str::from_utf8(message).map_err(|_| PlainError::Malformed("not UTF-8"))?;
    let mut parts = text.split('\0');
    let (Some(authzid), Some(user), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(PlainError::Malformed("expected three NUL-separated fields"));
    };
    if user.is_empty() || password.is_empty() {
        return Err(PlainError::Malformed("empty user name or password"));
    }
    if !authzid.is_empty() && authzid != user {
        return Err(PlainError::Authzid(authzid.to_string()));
    }
    Ok(PlainLogin { user, password })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses() {
        assert_eq!(
            parse(b"\0alice\0secret"),
            Ok(PlainLogin {
                user: "alice",
                password: "secret"
            })
        );
        assert!(parse(b"alice\0alice\0secret").is_ok());
        assert_eq!(
            parse(b"bob\0alice\0secret"),
            Err(PlainError::Authzid("bob".into()))
        );
        for bad in [
            &b""[..],
            b"alice",
            b"\0alice",
            b"\0\0pw",
            b"\0a\0",
            b"\0a\0b\0c",
            b"\xff\0a\0b",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
