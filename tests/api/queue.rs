//! The queue, batching, cancellation, timeouts, overload and shutdown, with the service in
//! process and a held explainer (tests/api/helpers/held.rs): every test decides when the model
//! work finishes, so none depends on the machine's speed.

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::Ordering;

use crate::helpers::held::{App, CamEvent, Gate, PANIC_TARGET};
use crate::helpers::{client, png, upload};
use gradcam_serve::cam::Method;
use gradcam_serve::config::Config;
use gradcam_serve::explanation::Explanation;
use serde_json::Value;

fn config(edit: impl FnOnce(&mut Config)) -> Config {
    let mut c = Config::default();
    edit(&mut c);
    c
}

/// Sends one explanation from another thread; its status comes back on join.
fn send(app: &App, query: &str) -> std::thread::JoinHandle<(u16, Option<String>, String)> {
    let (url, query) = (app.url.clone(), query.to_string());
    std::thread::spawn(move || {
        let r = upload(&url, &query, png(64, 64), "a.png").expect("an answer");
        let status = r.status().as_u16();
        let retry = r
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_string());
        (status, retry, r.text().unwrap())
    })
}

/// A plain request goes through the worker and is answered 200.
fn the_next_request_is_served(app: &App, gate: &Gate) {
    let next = send(app, "");
    gate.next_batch();
    gate.release();
    assert_eq!(next.join().unwrap().0, 200);
}

fn metric(app: &App, name: &str) -> f64 {
    let text = client()
        .get(format!("{}/metrics", app.url))
        .send()
        .unwrap()
        .text()
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
        .parse()
        .unwrap()
}

#[test]
fn a_full_queue_answers_503_with_retry_after_at_once() {
    let (app, gate) = App::start(config(|c| c.server.queue_capacity = 1));
    let first = send(&app, "");
    gate.next_batch(); // the first holds the only place
    for _ in 0..3 {
        let (status, retry, body) = send(&app, "").join().unwrap();
        assert_eq!(status, 503, "{body}");
        assert_eq!(retry.as_deref(), Some("1"));
        assert!(body.contains("overloaded"), "{body}");
    }
    gate.release();
    assert_eq!(first.join().unwrap().0, 200);
    // The place is free again.
    the_next_request_is_served(&app, &gate);
}

/// A scored request takes as many places as the passes its scores cost (ROAD at four
/// percentiles and confidence_change, two maps: twice nine images, a batch of eight and one
/// alone, plus the explanation: five): where fewer are free it is refused at once, while a
/// plain request still gets in.
#[test]
fn a_scored_request_counts_as_its_passes_in_the_queue() {
    let (app, gate) = App::start(config(|c| c.server.queue_capacity = 6));
    let first = send(&app, "");
    gate.next_batch();
    let second = send(&app, "");
    app.wait_for("the second request queued", |s| {
        s.workers.stats.waiting.load(Ordering::SeqCst) == 1
    });
    // Four places free.
    let (status, retry, body) = send(&app, "?scores=road,confidence_change&target=1,2")
        .join()
        .unwrap();
    assert_eq!(status, 503, "five passes do not fit in four places: {body}");
    assert_eq!(retry.as_deref(), Some("1"));
    let third = send(&app, "");
    app.wait_for("the third request queued", |s| {
        s.workers.stats.waiting.load(Ordering::SeqCst) == 2
    });
    gate.release();
    assert_eq!(first.join().unwrap().0, 200);
    assert_eq!(gate.next_batch().len(), 2, "the plain two, batched");
    gate.release();
    assert_eq!(second.join().unwrap().0, 200);
    assert_eq!(third.join().unwrap().0, 200);
}

#[test]
fn queued_requests_are_batched_with_their_own_layers_and_targets() {
    let (app, gate) = App::start(config(|c| {
        c.server.max_batch = 4;
        c.server.batch_wait_ms = 0;
    }));
    let first = send(&app, "?layer=layer2");
    assert_eq!(gate.next_batch().len(), 1);
    // While the worker is held, three more arrive and wait.
    let queries = ["?target=1&layer=layer3.1", "?target=2", "?layer=layer1"];
    let waiting: Vec<_> = queries.iter().map(|q| send(&app, q)).collect();
    app.wait_for("three jobs waiting", |s| {
        s.workers.stats.waiting.load(Ordering::SeqCst) == 3
    });
    assert_eq!(metric(&app, "gradcam_jobs_waiting"), 3.0);
    assert_eq!(metric(&app, "gradcam_jobs_running"), 1.0);
    gate.release();
    let batch = gate.next_batch();
    assert_eq!(batch.len(), 3, "the waiting three in one batch");
    let mut asked: Vec<String> = batch
        .iter()
        .map(|a| format!("{:?} {}", a.target, a.layer))
        .collect();
    asked.sort();
    assert_eq!(asked, ["None layer1", "Some(1) layer3.1", "Some(2) layer4"]);
    gate.release();
    assert_eq!(first.join().unwrap().0, 200);
    for (query, handle) in queries.iter().zip(waiting) {
        let (status, _, body) = handle.join().unwrap();
        assert_eq!(status, 200, "{query}: {body}");
        let e: Explanation = serde_json::from_str(&body).unwrap();
        let layer = query.split("layer=").nth(1).unwrap_or("layer4");
        assert_eq!(e.model.target_layer, layer);
        assert_eq!(e.model.name, "resnet18");
    }
    assert_eq!(metric(&app, "gradcam_batch_size_bucket{le=\"1\"}"), 1.0);
    assert_eq!(metric(&app, "gradcam_batch_size_bucket{le=\"3\"}"), 2.0);
    assert_eq!(metric(&app, "gradcam_batch_size_sum"), 4.0);
    assert_eq!(metric(&app, "gradcam_jobs_waiting"), 0.0);
    assert_eq!(metric(&app, "gradcam_jobs_running"), 0.0);
}

#[test]
fn a_lone_request_does_not_wait_to_fill_a_batch() {
    // An hour of batch_wait: the batch is handed over only because nobody else is coming.
    let (app, gate) = App::start(config(|c| {
        c.server.max_batch = 4;
        c.server.batch_wait_ms = 3_600_000;
    }));
    let lone = send(&app, "");
    assert_eq!(gate.next_batch().len(), 1);
    gate.release();
    assert_eq!(lone.join().unwrap().0, 200);
    assert_eq!(app.state.workers.stats.arriving.load(Ordering::SeqCst), 0);
}

#[test]
fn a_client_that_leaves_while_queued_costs_no_model_time() {
    let (app, gate) = App::start(config(|c| c.server.max_batch = 1));
    let first = send(&app, "");
    gate.next_batch();
    // A second request waits behind it, then its client goes away.
    let address = app.url.trim_start_matches("http://").to_string();
    let body = {
        let mut p =
            b"--B\r\nContent-Disposition: form-data; name=\"image\"; filename=\"b.png\"\r\n\r\n"
                .to_vec();
        p.extend(png(64, 64));
        p.extend(b"\r\n--B--\r\n");
        p
    };
    let head = format!(
        "POST /explain HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=B\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut leaver = TcpStream::connect(&address).unwrap();
    leaver.write_all(head.as_bytes()).unwrap();
    leaver.write_all(&body).unwrap();
    app.wait_for("the second job waiting", |s| {
        s.workers.stats.waiting.load(Ordering::SeqCst) == 1
    });
    assert_eq!(app.state.workers.in_flight(), 2, "both admitted");
    drop(leaver);
    // The server notices the closed connection and frees the place at once.
    app.wait_for("the leaver's place freed", |s| s.workers.in_flight() == 1);
    gate.release();
    assert_eq!(first.join().unwrap().0, 200);
    app.wait_for("the abandoned job dropped", |s| {
        s.workers.stats.cancelled.load(Ordering::SeqCst) == 1
    });
    assert_eq!(
        app.state
            .workers
            .stats
            .batched_images
            .load(Ordering::SeqCst),
        1,
        "only the first was computed"
    );
    gate.no_more_batches();
    assert_eq!(app.state.workers.in_flight(), 0);
}

#[test]
fn an_explanation_over_the_timeout_answers_504_and_the_server_goes_on() {
    let (app, gate) = App::start(config(|c| c.server.request_timeout_secs = 1));
    // Held until the request has timed out: the answer cannot come from the model.
    let slow = send(&app, "");
    gate.next_batch();
    let (status, _, body) = slow.join().unwrap();
    assert_eq!(status, 504, "{body}");
    let problem: Value = serde_json::from_str(&body).unwrap();
    assert!(
        problem["detail"].as_str().unwrap().contains("1 s"),
        "{problem}"
    );
    // Its place is free, and the worker, once let go, serves the next request.
    assert_eq!(app.state.workers.in_flight(), 0);
    gate.release();
    the_next_request_is_served(&app, &gate);
}

#[test]
fn a_scorecam_job_over_the_timeout_answers_504_and_stops_between_its_chunks() {
    let (app, gate) = App::start(config(|c| {
        c.server.request_timeout_secs = 1;
        c.explain.allow_scorecam = true;
    }));
    // ScoreCAM runs alone, a pass per channel; this one never finishes on its own.
    let slow = send(&app, "?method=scorecam");
    assert_eq!(gate.next_cam_event(), CamEvent::Started(Method::ScoreCam));
    let (status, _, body) = slow.join().unwrap();
    assert_eq!(status, 504, "{body}");
    // Nobody waits for the answer any more: the job stops at its next chunk, and the
    // worker is free without the test letting the job go.
    assert_eq!(gate.next_cam_event(), CamEvent::Abandoned(Method::ScoreCam));
    app.wait_for("the worker free", |s| {
        s.workers.stats.running.load(Ordering::SeqCst) == 0
    });
    assert_eq!(app.state.workers.stats.cancelled.load(Ordering::SeqCst), 1);
    the_next_request_is_served(&app, &gate);
}

#[test]
fn a_scorecam_job_in_time_answers_with_its_method() {
    let (app, gate) = App::start(config(|c| c.explain.allow_scorecam = true));
    let job = send(&app, "?method=scorecam");
    assert_eq!(gate.next_cam_event(), CamEvent::Started(Method::ScoreCam));
    gate.release();
    let (status, _, body) = job.join().unwrap();
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["method"], "scorecam", "{answer}");
    assert_eq!(app.state.workers.stats.cancelled.load(Ordering::SeqCst), 0);
}

#[test]
fn a_panicking_model_answers_500_and_the_worker_goes_on() {
    let (app, gate) = App::start(Config::default());
    let bad = send(&app, &format!("?target={PANIC_TARGET}"));
    gate.next_batch();
    gate.release();
    let (status, _, body) = bad.join().unwrap();
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("panicked"), "{body}");
    let good = send(&app, "?target=2");
    gate.next_batch();
    gate.release();
    assert_eq!(good.join().unwrap().0, 200);
    assert_eq!(metric(&app, "gradcam_worker_panics_total"), 1.0);
}

#[test]
fn shutdown_answers_the_requests_in_flight_then_stops() {
    let (app, gate) = App::start(Config::default());
    let url = app.url.clone();
    let in_flight = send(&app, "");
    gate.next_batch();
    let stopping = std::thread::spawn(move || app.shut_down());
    // The listener closes: new connections are refused once the shutdown has begun.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while client().get(format!("{url}/health")).send().is_ok() {
        assert!(std::time::Instant::now() < deadline, "still accepting");
        std::thread::yield_now();
    }
    // The request that was in flight still gets its answer.
    gate.release();
    let (status, _, body) = in_flight.join().unwrap();
    assert_eq!(status, 200, "{body}");
    stopping.join().unwrap().expect("a clean stop");
}
