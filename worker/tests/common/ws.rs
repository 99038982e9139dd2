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
