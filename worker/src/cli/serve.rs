//! `htc serve`: builds the server from its flags, serves until Ctrl-C or SIGTERM, then drains.

use anyhow::{bail, Context, Result};

use crate::server::{serve_on, App, ServeArgs};

pub fn run(args: ServeArgs) -> Result<()> {
    if !args.api_only && !args.static_dir.join("index.html").is_file() {
        bail!(
            "no built web app at {} (run scripts/build-web.sh first, pass --static-dir, or serve the API \
             alone with --api-only)",
            args.static_dir.display()
        );
    }
    let addr = args.addr;
    let app = App::new(args)?;
    tracing::info!(card = ?app.engine.card, "model ready");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let listener =
            tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
        tracing::info!("serving http://{}", listener.local_addr()?);
        serve_on(listener, app, async {
            let ctrl_c = tokio::signal::ctrl_c();
            #[cfg(unix)]
            {
                let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
                tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
            }
            #[cfg(not(unix))]
            let _ = ctrl_c.await;
        })
        .await
    })
}
