//! A minimal HTTP/1.1 GET over a raw socket for loopback tests (keeps test dependencies
//! small). Shared with the root package's browser test.

/// The whole response (status line, headers and body) of `GET path`, as text.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    let (head, body) = http_get_bytes(addr, path).await;
    format!("{head}\r\n\r\n{}", String::from_utf8_lossy(&body))
}

/// `GET path`: the status line and headers as text, and the body as bytes.
pub async fn http_get_bytes(addr: std::net::SocketAddr, path: &str) -> (String, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let split = buf.windows(4).position(|w| w == b"\r\n\r\n").expect("a header block");
    (String::from_utf8_lossy(&buf[..split]).into_owned(), buf[split + 4..].to_vec())
}
