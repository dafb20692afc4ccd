//! Named Kafka listeners, as Kafka's `listeners` and `advertised.listeners`: a broker may
//! listen on several addresses (say `INTERNAL://0.0.0.0:29092` for other containers and
//! `EXTERNAL://0.0.0.0:9092` for the host) and advertise a different address for each. A
//! client's Metadata answer names, for every broker, the address advertised for the listener
//! the client connected to, so each client is told addresses it can reach.
//!
//! The advertised list is what a broker registers with the controller (its Kafka endpoint,
//! one string): `HOST:PORT` for a lone unnamed listener, else `NAME://HOST:PORT,...`.

/// The name of a listener given without one.
pub const DEFAULT_LISTENER: &str = "PLAINTEXT";

/// One listener: its name and `HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// Upper-case letters, digits and `_`.
    pub name: String,
    /// `HOST:PORT` (IPv6 in brackets).
    pub addr: String,
}

/// Parses `[NAME://]HOST:PORT[,...]`. Names are unique; a lone entry may omit its name.
pub fn parse(text: &str) -> Result<Vec<Listener>, String> {
    let entries: Vec<&str> = text.split(',').map(str::trim).filter(|e| !e.is_empty()).collect();
    if entries.is_empty() {
        return Err("no listener given".to_owned());
    }
    let mut out: Vec<Listener> = Vec::with_capacity(entries.len());
    for entry in &entries {
        let (name, addr) = match entry.split_once("://") {
            Some((name, addr)) => (name.to_owned(), addr.to_owned()),
            None if entries.len() == 1 => (DEFAULT_LISTENER.to_owned(), (*entry).to_owned()),
            None => {
                return Err(format!("{entry:?}: with several listeners each needs a name, NAME://HOST:PORT"));
            }
        };
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(format!("listener name {name:?}: use upper-case letters, digits and _"));
        }
        if crate::handlers::host_port(&addr).is_none() {
            return Err(format!("{entry:?}: the address is not HOST:PORT"));
        }
        if out.iter().any(|l| l.name == name) {
            return Err(format!("listener {name} is given twice"));
        }
        out.push(Listener { name, addr });
    }
    Ok(out)
}

/// Pairs each listener with its advertised address: by name, or, for one listener and one
/// advertised address, with each other whatever their names.
pub fn advertise(listeners: &[Listener], advertised: &[Listener]) -> Result<Vec<Listener>, String> {
    if let ([l], [a]) = (listeners, advertised) {
        return Ok(vec![Listener { name: l.name.clone(), addr: a.addr.clone() }]);
    }
    listeners
        .iter()
        .map(|l| {
            advertised
                .iter()
                .find(|a| a.name == l.name)
                .map(|a| Listener { name: l.name.clone(), addr: a.addr.clone() })
                .ok_or_else(|| format!("listener {} has no advertised address", l.name))
        })
        .collect()
}

/// The endpoint string a broker registers: `HOST:PORT` for the lone default listener, else
/// `NAME://HOST:PORT,...`.
pub fn encode(advertised: &[Listener]) -> String {
    match advertised {
        [one] if one.name == DEFAULT_LISTENER => one.addr.clone(),
        many => many.iter().map(|l| format!("{}://{}", l.name, l.addr)).collect::<Vec<_>>().join(","),
    }
}

/// The host and port a broker registered as `endpoint` advertises to clients of `listener`:
/// the entry of that name, or the only entry.
pub fn address_for(endpoint: &str, listener: &str) -> Option<(String, i32)> {
    let entries = parse(endpoint).ok()?;
    let chosen = match entries.as_slice() {
        [one] => one,
        many => many.iter().find(|l| l.name == listener)?,
    };
    crate::handlers::host_port(&chosen.addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(name: &str, addr: &str) -> Listener {
        Listener { name: name.into(), addr: addr.into() }
    }

    #[test]
    fn a_lone_address_is_the_default_listener_and_registers_as_it_is() {
        let parsed = parse("127.0.0.1:9092").unwrap();
        assert_eq!(parsed, vec![l("PLAINTEXT", "127.0.0.1:9092")]);
        assert_eq!(encode(&parsed), "127.0.0.1:9092");
        assert_eq!(address_for("127.0.0.1:9092", "ANY"), Some(("127.0.0.1".into(), 9092)));
    }

    #[test]
    fn named_listeners_advertise_per_name() {
        let listeners = parse("INTERNAL://0.0.0.0:29092, EXTERNAL://0.0.0.0:9092").unwrap();
        let advertised = parse("EXTERNAL://localhost:9092,INTERNAL://runnel-1:29092").unwrap();
        let paired = advertise(&listeners, &advertised).unwrap();
        assert_eq!(paired, vec![l("INTERNAL", "runnel-1:29092"), l("EXTERNAL", "localhost:9092")]);
        let endpoint = encode(&paired);
        assert_eq!(endpoint, "INTERNAL://runnel-1:29092,EXTERNAL://localhost:9092");
        assert_eq!(address_for(&endpoint, "INTERNAL"), Some(("runnel-1".into(), 29092)));
        assert_eq!(address_for(&endpoint, "EXTERNAL"), Some(("localhost".into(), 9092)));
        assert_eq!(address_for(&endpoint, "OTHER"), None, "a broker without that listener is not shown");
    }

    #[test]
    fn bad_listener_lists_are_refused() {
        assert!(parse("").is_err());
        assert!(parse("a:1,b:2").is_err(), "several need names");
        assert!(parse("lower://h:1").is_err());
        assert!(parse("A://h:1,A://h:2").is_err());
        assert!(parse("A://nohost").is_err());
        let listeners = parse("A://h:1,B://h:2").unwrap();
        assert!(advertise(&listeners, &parse("A://x:1").unwrap()).is_err(), "B has none");
        // One and one pair whatever the names.
        assert_eq!(
            advertise(&parse("h:1").unwrap(), &parse("X://x:1").unwrap()).unwrap(),
            vec![l("PLAINTEXT", "x:1")]
        );
    }
}
