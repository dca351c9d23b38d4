//! A closed-loop HTTP load generator for the benchmarks: `concurrency` workers, each sending its
//! next request as soon as the previous one answered, for `seconds`. Prints one JSON line with the
//! request rate and latency percentiles.
//!
//! cargo run --release --example loadgen -- get URL CONCURRENCY SECONDS
//! cargo run --release --example loadgen -- webhook URL CONCURRENCY SECONDS WHSEC
//!   (every request is a new, uniquely-identified Stripe event, signed like Stripe signs it)
//!
//! URL may be a comma-separated list (several instances behind no load balancer): worker `w`
//! sends to the `w % n`-th, so the load is spread evenly.
//!
//! With `LOADGEN_BEARER` set, `get` requests carry `Authorization: Bearer $LOADGEN_BEARER` (an API
//! key, say: taken from the environment so it is not on the command line).

use std::time::{Duration, Instant};

fn event_body(worker: usize, n: u64) -> Vec<u8> {
    format!(
        r#"{{"id":"evt_bench{worker:03}x{n:010}","object":"event","api_version":"2024-06-20","created":1700000000,"livemode":false,"pending_webhooks":1,"request":{{"id":null,"idempotency_key":null}},"type":"checkout.session.completed","data":{{"object":{{"id":"cs_test_bench{worker:03}x{n:010}","object":"checkout.session","amount_total":1999,"currency":"usd","client_reference_id":"ord_bench","metadata":{{}},"mode":"payment","payment_status":"paid","status":"complete"}}}}}}"#
    )
    .into_bytes()
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: loadgen get|webhook URL CONCURRENCY SECONDS [WHSEC]";
    let mode = args.get(1).expect(usage).clone();
    let urls: Vec<String> = args.get(2).expect(usage).split(',').map(str::to_owned).collect();
    let concurrency: usize = args.get(3).and_then(|s| s.parse().ok()).expect(usage);
    let seconds: u64 = args.get(4).and_then(|s| s.parse().ok()).expect(usage);
    let secret = args.get(5).cloned().unwrap_or_default();
    let bearer = std::env::var("LOADGEN_BEARER").ok().filter(|b| !b.is_empty());
    let client = reqwest::Client::builder().no_proxy().pool_max_idle_per_host(concurrency).build().unwrap();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|w| {
            let url = urls[w % urls.len()].clone();
            let (client, mode, secret, bearer) = (client.clone(), mode.clone(), secret.clone(), bearer.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut errors = 0u64;
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let request = if mode == "webhook" {
                        let body = event_body(w, n);
                        let signature = tollgate::stripe::webhook::sign(&body, &secret, chrono::Utc::now().timestamp());
                        client
                            .post(&url)
                            .header("content-type", "application/json")
                            .header("stripe-signature", signature)
                            .body(body)
                    } else {
                        match &bearer {
                            Some(b) => client.get(&url).bearer_auth(b),
                            None => client.get(&url),
                        }
                    };
                    n += 1;
                    let t = Instant::now();
                    match request.send().await {
                        Ok(r) if r.status().is_success() => {
                            let _ = r.bytes().await;
                            latencies.push(t.elapsed());
                        }
                        _ => errors += 1,
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut errors = 0;
    for w in workers {
        let (l, e) = w.await.unwrap();
        all.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort();
    let pct =
        |p: f64| all.get(((all.len() as f64 - 1.0) * p).round() as usize).map(|d| d.as_secs_f64() * 1000.0).unwrap_or(f64::NAN);
    println!(
        "{{\"mode\":\"{mode}\",\"ok\":{},\"errors\":{errors},\"seconds\":{elapsed:.2},\"rate\":{:.1},\"p50_ms\":{:.3},\"p99_ms\":{:.3}}}",
        all.len(),
        all.len() as f64 / elapsed,
        pct(0.50),
        pct(0.99)
    );
}
