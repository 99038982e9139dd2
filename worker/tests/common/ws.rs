//! WebSocket client helpers for loopback tests and the load benchmark.
#![allow(dead_code)] // each includer uses a subset

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use htc_shared::protocol::ServerMessage;
use tokio_tungstenite::tungstenite::Message;

pub type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub async fn send(ws: &mut Ws, v: serde_json::Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

/// The next server message (control frames skipped), within 300 s.
pub async fn recv(ws: &mut Ws) -> ServerMessage {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(300), ws.next())
            .await
            .expect("server answers in time")
            .expect("open")
            .expect("frame");
        if let Message::Text(t) = m {
            return serde_json::from_str(t.as_str()).expect("server JSON");
        }
    }
}

/// A worker on an ephemeral loopback port (the demo model unless `tweak` says otherwise).
pub async fn serve(tweak: impl FnOnce(&mut htc_worker::server::ServeArgs)) -> std::net::SocketAddr {
    use htc_worker::server::{serve_on, App, ServeArgs};
    let mut args = ServeArgs::local(std::env::temp_dir());
    tweak(&mut args);
    let app = tokio::task::spawn_blocking(move || App::new(args)).await.unwrap().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { serve_on(listener, app, std::future::pending()).await.unwrap() });
    addr
}

/// A connection that said hello and uploaded `png` as image `img` (request 0).
pub async fn open_with_image(addr: std::net::SocketAddr, png: &[u8]) -> Ws {
    use htc_shared::protocol::{encode_binary, BinaryKind};
    // Nagle off, as browsers and the load client have it: small frames go out at once.
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(format!("ws://{addr}/ws"), None, true)
        .await
        .expect("connect");
    send(&mut ws, serde_json::json!({"type": "hello", "version": 1})).await;
    assert!(matches!(recv(&mut ws).await, ServerMessage::Ready { .. }));
    send(
        &mut ws,
        serde_json::json!({"type": "image", "request_id": 0, "image_id": "img", "byte_len": png.len()}),
    )
    .await;
    ws.send(Message::Binary(encode_binary(BinaryKind::ImageBytes, 0, png).into())).await.unwrap();
    ws
}
