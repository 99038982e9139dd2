//! The connection to the worker: where it stands, the reconnect backoff, and the model card
//! URL the page asks over HTTP why a socket was refused.

/// Where the connection stands.
#[derive(Debug, Clone, PartialEq)]
pub enum Connection {
    Connecting,
    /// `ready` came: the model card's name.
    Ready {
        model: String,
    },
    /// Closed; the next try is in `retry_ms` (attempt `attempt`).
    Retrying {
        attempt: u32,
        retry_ms: u32,
        why: String,
    },
    /// Refused for good (auth, version): retrying would not help until settings change.
    Refused {
        why: String,
    },
}

impl Connection {
    /// The status's badge: `connecting`, `connected`, `reconnecting` (closed; the next try is
    /// timed) or `offline` (refused: retrying cannot help until the settings change).
    pub fn badge(&self) -> &'static str {
        match self {
            Connection::Connecting => "connecting",
            Connection::Ready { .. } => "connected",
            Connection::Retrying { .. } => "reconnecting",
            Connection::Refused { .. } => "offline",
        }
    }

    /// What the badge leaves out while the connection is down: why, and when the next try
    /// is; `None` while connecting or connected.
    pub fn detail(&self) -> Option<String> {
        match self {
            Connection::Connecting | Connection::Ready { .. } => None,
            Connection::Retrying { attempt, retry_ms, why } => {
                Some(format!("{why}; retry {attempt} in {:.1} s", *retry_ms as f64 / 1000.0))
            }
            Connection::Refused { why } => Some(format!("refused: {why}")),
        }
    }

    /// The stable id the page exposes as `data-connection`.
    pub fn id(&self) -> &'static str {
        match self {
            Connection::Connecting => "connecting",
            Connection::Ready { .. } => "ready",
            Connection::Retrying { .. } => "retrying",
            Connection::Refused { .. } => "refused",
        }
    }
}

/// Reconnect delay before attempt `attempt` (1-based): 0.5 s doubling to a 15 s ceiling.
pub fn backoff_ms(attempt: u32) -> u32 {
    let exp = attempt.saturating_sub(1).min(10);
    (500u32 << exp).min(15_000)
}

/// The worker's model card URL (`/api/model`, same query) for a `/ws` socket URL, to ask
/// over HTTP why a socket was refused; `None` if the URL does not end its path in `/ws`.
pub fn model_card_url(socket_url: &str) -> Option<String> {
    let http = if let Some(rest) = socket_url.strip_prefix("wss://") {
        format!("https://{rest}")
    } else {
        format!("http://{}", socket_url.strip_prefix("ws://")?)
    };
    let (path, query) = match http.split_once('?') {
        Some((p, q)) => (p, format!("?{q}")),
        None => (http.as_str(), String::new()),
    };
    Some(format!("{}/api/model{query}", path.strip_suffix("/ws")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_ceiling() {
        let v: Vec<u32> = (1..=8).map(backoff_ms).collect();
        assert_eq!(v, [500, 1000, 2000, 4000, 8000, 15000, 15000, 15000]);
        assert_eq!(backoff_ms(0), 500);
        assert_eq!(backoff_ms(u32::MAX), 15000);
    }

    #[test]
    fn the_badge_and_its_detail_say_where_the_connection_stands() {
        assert_eq!((Connection::Connecting.badge(), Connection::Connecting.detail()), ("connecting", None));
        let ready = Connection::Ready { model: "shapes-demo".into() };
        assert_eq!((ready.badge(), ready.detail(), ready.id()), ("connected", None, "ready"));
        let retrying = Connection::Retrying { attempt: 2, retry_ms: 1000, why: "closed, code 1006".into() };
        assert_eq!((retrying.badge(), retrying.id()), ("reconnecting", "retrying"));
        assert_eq!(retrying.detail().as_deref(), Some("closed, code 1006; retry 2 in 1.0 s"));
        let refused = Connection::Refused { why: "the worker refused the token (401)".into() };
        assert_eq!((refused.badge(), refused.id()), ("offline", "refused"));
        assert_eq!(refused.detail().as_deref(), Some("refused: the worker refused the token (401)"));
    }
}
