//! SASL PLAIN (RFC 4616): the client sends its user name and password in one message. Only
//! safe over TLS; checking the password is the caller's business (see
//! `AuthStore::verify_password`).

use crate::SaslError;

/// The SASL mechanism name of PLAIN, as Kafka spells it.
pub const MECHANISM: &str = "PLAIN";

/// Parses an RFC 4616 message: `[authzid] NUL authcid NUL passwd`, and returns
/// `(user, password)`.
///
/// The message must have exactly two NULs; the user name (authcid) and the password must be
/// non-empty valid UTF-8; the authorization id must be empty or equal to the user name
/// (acting as another user is not supported). Error texts never repeat the password.
pub fn parse_plain(message: &[u8]) -> Result<(String, String), SaslError> {
    let mut fields = message.split(|&byte| byte == 0);
    let (Some(authzid), Some(user), Some(password), None) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return Err(SaslError::Malformed(
            "a PLAIN message must be `authzid NUL user NUL password`, with exactly two NULs".to_owned(),
        ));
    };
    let utf8 = |field: &[u8], what: &str| {
        std::str::from_utf8(field)
            .map(str::to_owned)
            .map_err(|_| SaslError::Malformed(format!("the PLAIN {what} is not UTF-8")))
    };
    let authzid = utf8(authzid, "authorization id")?;
    let user = utf8(user, "user name")?;
    let password = utf8(password, "password")?;
    if user.is_empty() {
        return Err(SaslError::Malformed("the PLAIN user name is empty".to_owned()));
    }
    if password.is_empty() {
        return Err(SaslError::Malformed("the PLAIN password is empty".to_owned()));
    }
    if !authzid.is_empty() && authzid != user {
        return Err(SaslError::Unsupported(
            "an authorization id different from the user name is not supported".to_owned(),
        ));
    }
    Ok((user, password))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn parses_user_and_password() {
        let parsed = parse_plain(b"\0alice\0secret").unwrap();
        assert_eq!(parsed, ("alice".to_owned(), "secret".to_owned()));
        assert_eq!(parse_plain(b"alice\0alice\0secret").unwrap().0, "alice");
        // UTF-8 names and passwords, spaces kept as they are.
        assert_eq!(
            parse_plain("\0zoë\0pass word ".as_bytes()).unwrap(),
            ("zoë".to_owned(), "pass word ".to_owned())
        );
    }

    #[test]
    fn refuses_bad_messages() {
        let malformed: [&[u8]; 10] = [
            b"",
            b"alice",
            b"\0alice",
            b"\0alice\0",
            b"\0\0secret",
            b"\0alice\0secret\0",
            b"\0alice\0sec\0ret",
            b"\0al\xffice\0secret",
            b"\0alice\0\xc3",
            b"\xff\0alice\0secret",
        ];
        for message in malformed {
            let error = parse_plain(message).unwrap_err();
            assert!(matches!(error, SaslError::Malformed(_)), "{message:?}: {error:?}");
        }
        let error = parse_plain(b"admin\0alice\0secret").unwrap_err();
        assert!(matches!(error, SaslError::Unsupported(_)), "{error:?}");
    }

    #[test]
    fn errors_do_not_repeat_the_password() {
        for message in [&b"\0\0hunter2"[..], b"x\0alice\0hunter2", b"\0alice\0hunter2\0"] {
            let error = parse_plain(message).unwrap_err();
            assert!(!error.to_string().contains("hunter2"), "{error}");
        }
    }

    proptest! {
        #[test]
        fn never_panics(message in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = parse_plain(&message);
        }

        #[test]
        fn round_trips(user in "[^\u{0}]{1,20}", password in "[^\u{0}]{1,20}") {
            let message = format!("\0{user}\0{password}");
            prop_assert_eq!(parse_plain(message.as_bytes()), Ok((user, password)));
        }
    }
}
