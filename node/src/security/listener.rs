//! Named listeners, as Kafka's `listeners`, `advertised.listeners` and
//! `listener.security.protocol.map` describe them.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::str::FromStr;

/// How a listener's connections are secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl Protocol {
    pub fn tls(self) -> bool {
        matches!(self, Protocol::Ssl | Protocol::SaslSsl)
    }
    pub fn sasl(self) -> bool {
        matches!(self, Protocol::SaslPlaintext | Protocol::SaslSsl)
    }
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Plaintext => "PLAINTEXT",
            Protocol::Ssl => "SSL",
            Protocol::SaslPlaintext => "SASL_PLAINTEXT",
            Protocol::SaslSsl => "SASL_SSL",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_uppercase().as_str() {
            "PLAINTEXT" => Ok(Protocol::Plaintext),
            "SSL" => Ok(Protocol::Ssl),
            "SASL_PLAINTEXT" => Ok(Protocol::SaslPlaintext),
            "SASL_SSL" => Ok(Protocol::SaslSsl),
            other => Err(format!(
                "unknown security protocol {other} (PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL)"
            )),
        }
    }
}

/// One Kafka listener of this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub name: String,
    pub addr: SocketAddr,
    pub protocol: Protocol,
    /// Host and port clients of this listener are told to connect to
    /// (default: the bound address).
    pub advertised: Option<(String, u16)>,
}

/// `NAME://host:port`: an empty host means every interface.
fn split_endpoint(s: &str) -> Result<(String, String, u16), String> {
    let (name, rest) = s
        .split_once("://")
        .ok_or_else(|| format!("listener {s:?} is not of the form NAME://host:port"))?;
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(format!(
            "listener name {name:?} must be letters, digits, _ or -"
        ));
    }
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| format!("listener {s:?} has no port"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("listener {s:?} has a bad port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Ok((name.to_ascii_uppercase(), host.to_string(), port))
}

/// The protocol map's default: each standard protocol names itself.
pub fn default_protocol_map() -> BTreeMap<String, Protocol> {
    [
        Protocol::Plaintext,
        Protocol::Ssl,
        Protocol::SaslPlaintext,
        Protocol::SaslSsl,
    ]
    .into_iter()
    .map(|p| (p.name().to_string(), p))
    .collect()
}

/// `NAME:PROTOCOL,...` on top of the default map.
pub fn parse_protocol_map(s: &str) -> Result<BTreeMap<String, Protocol>, String> {
    let mut map = default_protocol_map();
    for entry in s.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (name, proto) = entry
            .split_once(':')
            .ok_or_else(|| format!("{entry:?} is not of the form NAME:PROTOCOL"))?;
        map.insert(name.trim().to_ascii_uppercase(), proto.trim().parse()?);
    }
    Ok(map)
}

/// Parses `listeners` and `advertised.listeners` against the protocol map.
pub fn parse_listeners(
    listeners: &str,
    advertised: Option<&str>,
    map: &BTreeMap<String, Protocol>,
) -> Result<Vec<Listener>, String> {
    let mut out: Vec<Listener> = vec![];
    for item in listeners
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
    {
        let (name, host, port) = split_endpoint(item)?;
        let protocol = *map.get(&name).ok_or_else(|| {
            format!("listener {name} has no security protocol (add it to --listener-security-protocol-map)")
        })?;
        let host = if host.is_empty() { "0.0.0.0" } else { &host };
        let addr = (host, port)
            .to_socket_addrs()
            .map_err(|e| format!("listener {item}: {e}"))?
            .next()
            .ok_or_else(|| format!("listener {item}: {host} resolves to nothing"))?;
        if out.iter().any(|l| l.name == name) {
            return Err(format!("listener {name} is named twice"));
        }
        if out.iter().any(|l| l.addr.port() == port && port != 0) {
            return Err(format!("two listeners on port {port}"));
        }
        out.push(Listener {
            name,
            addr,
            protocol,
            advertised: None,
        });
    }
    if out.is_empty() {
        return Err("no listener given".into());
    }
    for item in advertised
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
    {
        let (name, host, port) = split_endpoint(item)?;
        let l = out
            .iter_mut()
            .find(|l| l.name == name)
            .ok_or_else(|| format!("advertised listener {name} is not a listener"))?;
        if host.is_empty() {
            return Err(format!("advertised listener {name} needs a host"));
        }
        l.advertised = Some((host, port));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_parse_as_kafka_writes_them() {
        let map = parse_protocol_map("CLIENT:SASL_SSL,REPL:ssl").unwrap();
        let ls = parse_listeners(
            "PLAINTEXT://127.0.0.1:9092, CLIENT://:9093,sasl_plaintext://localhost:9094",
            Some("CLIENT://kafka.example.com:443"),
            &map,
        )
        .unwrap();
        assert_eq!(ls.len(), 3);
        assert_eq!(ls[0].protocol, Protocol::Plaintext);
        assert_eq!(ls[1].name, "CLIENT");
        assert_eq!(ls[1].protocol, Protocol::SaslSsl);
        assert!(ls[1].addr.ip().is_unspecified());
        assert_eq!(ls[1].advertised, Some(("kafka.example.com".into(), 443)));
        assert_eq!(ls[2].protocol, Protocol::SaslPlaintext);
        assert!(ls[2].addr.ip().is_loopback());
    }

    #[test]
    fn bad_listeners_are_named() {
        let map = default_protocol_map();
        for (l, a, why) in [
            ("127.0.0.1:9092", None, "NAME://"),
            ("FOO://127.0.0.1:9092", None, "no security protocol"),
            ("PLAINTEXT://127.0.0.1", None, "no port"),
            ("PLAINTEXT://127.0.0.1:x", None, "bad port"),
            ("PLAINTEXT://:1,SSL://:1", None, "two listeners"),
            ("PLAINTEXT://:1,PLAINTEXT://:2", None, "named twice"),
            ("PLAINTEXT://:1", Some("SSL://h:2"), "not a listener"),
            ("", None, "no listener"),
        ] {
            let e = parse_listeners(l, a, &map).unwrap_err();
            assert!(e.contains(why), "{l}: {e}");
        }
        assert!(parse_protocol_map("X:TLS").unwrap_err().contains("unknown"));
    }
}
