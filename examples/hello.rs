//! A bare axum hello-world, the yardstick `bench/webhook_ingest.py` measures tollgate against on the
//! same machine in the same run. `cargo run --release --example hello -- 127.0.0.1:9000`

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:9000".to_owned());
    let app = axum::Router::new().route("/", axum::routing::get(|| async { "Hello, world!" }));
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    axum::serve(listener, app).await
}
