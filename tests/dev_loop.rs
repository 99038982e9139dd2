//! The UI dev loop (`trunk serve` on 8081 beside `htc serve` on 8080): every URL the page
//! derives from its default worker URL (its own origin's `/ws`) must be forwarded to the
//! worker by one of `Trunk.toml`'s proxies, or trunk answers it with the page itself (an
//! encoder manifest that is HTML: "expected value at line 1 column 1").

use serde::Deserialize;

#[derive(Deserialize)]
struct Trunk {
    serve: Serve,
    proxy: Vec<Proxy>,
}

#[derive(Deserialize)]
struct Serve {
    port: u16,
}

#[derive(Deserialize)]
struct Proxy {
    backend: String,
    #[serde(default)]
    ws: bool,
}

#[test]
fn trunk_serve_forwards_everything_the_page_asks_the_worker() {
    let raw = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Trunk.toml")).unwrap();
    let trunk: Trunk = toml::from_str(&raw).unwrap();
    assert_eq!(trunk.serve.port, 8081);
    // What the page requests (web/src/state/connection.rs, runner/mod.rs, samples.rs), and
    // whether it is a WebSocket.
    let asked = [
        ("/ws", true),
        ("/api/model", false),
        ("/api/encoder", false),
        ("/api/encoder/0123abcd.safetensors", false),
        ("/api/samples/0.png", false),
    ];
    for (path, ws) in asked {
        let by: Vec<&Proxy> = trunk
            .proxy
            .iter()
            .filter(|p| {
                let rest = p.backend.split_once("://").map_or("", |(_, r)| r);
                let (host, prefix) = rest.split_once('/').map_or((rest, ""), |(h, p)| (h, p));
                host == "127.0.0.1:8080" && path.starts_with(&format!("/{prefix}"))
            })
            .collect();
        assert_eq!(by.len(), 1, "{path}: forwarded to the worker on 8080 by exactly one proxy");
        assert_eq!(by[0].ws, ws, "{path}: a WebSocket proxy exactly when the page opens a socket");
    }
}
