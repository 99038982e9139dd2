//! What a served model says about itself: the model card's `about` and `samples` from the
//! model directory's `about.json`, the sample PNGs at `/api/samples/<i>.png` (the ShapesVQA
//! generator's own renders, the same bytes on every request), 404 in words for other names,
//! nothing extra without the file, a worker that refuses a malformed file naming the file and
//! the field, and the random model's card saying its answers are noise.

mod common;

use std::path::{Path, PathBuf};

use common::http::http_get_bytes;
use common::ws::{recv, send};
use htc_shared::protocol::{ModelCard, ServerMessage};
use htc_worker::data::shapes;
use htc_worker::server::{App, ServeArgs};

fn demo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/shapes-demo")
}

async fn card(addr: std::net::SocketAddr) -> ModelCard {
    let (head, body) = http_get_bytes(addr, "/api/model").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    serde_json::from_slice(&body).unwrap()
}

/// A copy of the demo model's serving files (no `about.json`) in a scratch directory.
fn demo_copy(name: &str) -> PathBuf {
    let dir = common::tmp("samples", name);
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "model.safetensors", "preprocessor_config.json", "tokenizer.json"] {
        std::fs::copy(demo().join(f), dir.join(f)).unwrap();
    }
    dir
}

/// Starts a worker for `model`, or says why it would not start.
async fn try_serve(model: Option<&Path>) -> Result<App, String> {
    let mut args = ServeArgs::local(std::env::temp_dir());
    args.model = model.map(Path::to_path_buf);
    tokio::task::spawn_blocking(move || App::new(args)).await.unwrap().map_err(|e| format!("{e:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_card_says_what_the_model_knows_and_its_samples_are_the_generators_renders() {
    let about: serde_json::Value =
        serde_json::from_slice(&std::fs::read(demo().join("about.json")).unwrap()).unwrap();
    let spec = &about["samples"];
    assert_eq!(spec["generator"], "shapes-v1");
    let (seed, count) = (spec["seed"].as_u64().unwrap(), spec["count"].as_u64().unwrap() as usize);
    let per_image = spec["questions"].as_u64().unwrap() as usize;

    let addr = common::ws::serve(|a| a.model = Some(demo())).await;
    let card = card(addr).await;
    assert_eq!(card.about.as_deref(), about["about"].as_str().map(str::trim));
    assert!(card.about.as_deref().unwrap().contains("ShapesVQA"));
    assert_eq!(card.samples.len(), count);
    let want: Vec<_> = shapes::split_scenes(seed, "test", per_image).take(count).collect();
    for (i, (s, (_, qs))) in card.samples.iter().zip(&want).enumerate() {
        assert_eq!((s.id, s.path.as_str()), (i, format!("/api/samples/{i}.png").as_str()));
        assert_eq!(s.questions, qs.iter().map(|q| q.question.clone()).collect::<Vec<_>>());
        assert!((1..=per_image).contains(&s.questions.len()), "{:?}", s.questions);
    }

    // The `ready` message carries the same card.
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws")).await.unwrap();
    send(&mut ws, serde_json::json!({"type": "hello", "version": 1})).await;
    match recv(&mut ws).await {
        ServerMessage::Ready { model, .. } => assert_eq!(model, card),
        other => panic!("expected ready, got {other:?}"),
    }

    // Each sample is the generator's render of that scene, the same bytes every time.
    for (i, (scene, _)) in want.iter().enumerate() {
        let path = format!("/api/samples/{i}.png");
        let (head, png) = http_get_bytes(addr, &path).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(head.to_ascii_lowercase().contains("content-type: image/png"), "{head}");
        let (_, again) = http_get_bytes(addr, &path).await;
        assert_eq!(png, again, "{path} differs between two requests");
        let img = image::load_from_memory_with_format(&png, image::ImageFormat::Png).unwrap().to_rgb8();
        // The generator's size: the model's preprocessor scales it to its input, as it did
        // in training and evaluation.
        assert_eq!(img.dimensions(), (shapes::SIZE, shapes::SIZE));
        assert_eq!(img, scene.render(), "{path} is not the generator's render of scene {i}");
    }
    let first = http_get_bytes(addr, "/api/samples/0.png").await.1;
    assert_ne!(first, http_get_bytes(addr, "/api/samples/1.png").await.1);

    for bad in [format!("{count}.png"), "x.png".into(), "0.jpg".into(), "-1.png".into()] {
        let (head, body) = http_get_bytes(addr, &format!("/api/samples/{bad}")).await;
        assert!(head.starts_with("HTTP/1.1 404"), "{bad}: {head}");
        let body = String::from_utf8_lossy(&body);
        let want =
            format!("no sample image named {bad}: this model has sample images 0.png to {}.png", count - 1);
        assert_eq!(body, want);
    }
}

/// Without `about.json` the card says nothing extra and there are no samples; a malformed one
/// stops the worker with the file and the field named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_about_json_says_nothing_and_a_malformed_one_is_named() {
    let dir = demo_copy("plain");
    let app = try_serve(Some(&dir)).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { htc_worker::server::serve_on(listener, app, std::future::pending()).await });
    let card = card(addr).await;
    assert!(!card.random_init);
    assert_eq!((card.about, card.samples.len()), (None, 0));
    let (head, body) = http_get_bytes(addr, "/api/samples/0.png").await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    assert_eq!(
        String::from_utf8_lossy(&body),
        "no sample image named 0.png: this model has no sample images"
    );

    let file = dir.join("about.json");
    for (json, needle) in [
        (
            r#"{"about": "Shapes.", "samples": {"generator": "shapes-v1", "seed": 5, "count": "four"}}"#,
            "field `samples.count`: invalid type: string \"four\"",
        ),
        (
            r#"{"about": "Shapes.", "samples": {"generator": "photos", "seed": 5, "count": 4}}"#,
            "field `samples.generator`: unknown variant `photos`",
        ),
        (r#"{"about": ""}"#, "field `about`: empty"),
        (r#"{"text": "Shapes."}"#, "unknown field `text`"),
    ] {
        std::fs::write(&file, json).unwrap();
        let err = try_serve(Some(&dir)).await.err().unwrap_or_else(|| panic!("{json} was accepted"));
        assert!(err.contains(&format!("{}: ", file.display())), "the file is not named in `{err}`");
        assert!(err.contains(needle), "`{needle}` not in `{err}`");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The random model's card says its answers are noise, and it has no samples.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_random_models_card_says_its_answers_are_noise() {
    let addr = common::ws::serve(|_| {}).await;
    let card = card(addr).await;
    assert!(card.random_init);
    assert!(
        card.about.as_deref().is_some_and(|a| a.contains("random weights") && a.contains("noise")),
        "{:?}",
        card.about
    );
    assert!(card.samples.is_empty());
    let (head, _) = http_get_bytes(addr, "/api/samples/0.png").await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
}
