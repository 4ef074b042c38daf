//! Black-box tests of the HTTP API: a real server process on port 0, spoken to over HTTP.

use crate::helpers;
use crate::helpers::{client, encode, jpeg, png, png_claiming, Server, BIN};
use base64::Engine as _;
use gradcam_serve::explanation::Explanation;
use serde_json::Value;

pub(crate) fn problem(response: reqwest::blocking::Response, status: u16) -> Value {
    assert_eq!(response.status().as_u16(), status);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let body: Value = response.json().unwrap();
    assert_eq!(body["status"], status);
    for field in ["type", "title", "detail"] {
        assert!(
            body[field].as_str().is_some_and(|s| !s.is_empty()),
            "{body}"
        );
    }
    body
}

fn check_explanation(e: &Explanation, width: u32, height: u32, top_k: usize) {
    assert_eq!(e.top_k.len(), top_k);
    assert_eq!(e.prediction, e.top_k[0]);
    assert!(e.top_k.windows(2).all(|w| w[0].score >= w[1].score));
    let total: f32 = e.top_k.iter().map(|c| c.score).sum();
    assert!(total <= 1.0 + 1e-4 && total > 0.0);
    for c in &e.top_k {
        assert!(c.class_index < 1000);
        assert_eq!(
            c.label,
            gradcam_serve::labels::Labels::default_for(1000).get(c.class_index)
        );
    }
    assert_eq!((e.saliency.width, e.saliency.height), (7, 7));
    assert_eq!(e.saliency.data.len(), 7);
    assert!(e.saliency.data.iter().all(|row| row.len() == 7));
    assert!(e
        .saliency
        .data
        .concat()
        .iter()
        .all(|v| *v >= 0.0 && v.is_finite()));
    assert_eq!((e.image.width, e.image.height), (width, height));
    assert_eq!(e.model.name, "resnet50");
    assert_eq!(e.model.target_layer, "layer4");
    assert_eq!(e.model.weights, "demo-random");
    let t = &e.timing_ms;
    assert!(t.forward > 0.0 && t.total >= t.forward + t.backward);
    let png = base64::engine::general_purpose::STANDARD
        .decode(e.overlay_png.as_ref().expect("overlay by default"))
        .unwrap();
    let overlay = image::load_from_memory_with_format(&png, image::ImageFormat::Png).unwrap();
    assert_eq!((overlay.width(), overlay.height()), (width, height));
}

#[test]
fn explains_a_png_and_a_jpeg() {
    let server = Server::start(&[]);
    let r = server.explain("", png(640, 480), "cat.png");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    assert!(r.headers().contains_key("x-request-id"));
    assert!(r.headers()["server-timing"]
        .to_str()
        .unwrap()
        .contains("forward;dur="));
    let e: Explanation = r.json().unwrap();
    check_explanation(&e, 640, 480, 5);
    assert_eq!(e.target, e.prediction, "default target is the top-1 class");

    let e: Explanation = server
        .explain("", jpeg(300, 500), "dog.jpg")
        .json()
        .unwrap();
    check_explanation(&e, 300, 500, 5);
}

#[test]
fn target_top_k_alpha_and_overlay_options() {
    let server = Server::start(&[]);
    let e: Explanation = server
        .explain("?target=5&top_k=12&alpha=0.3", png(224, 224), "a.png")
        .json()
        .unwrap();
    check_explanation(&e, 224, 224, 12);
    assert_eq!(e.target.class_index, 5);
    assert_eq!(e.target.label, "electric ray");

    // The same options as form fields.
    let via_form: Explanation = server
        .explain_form(
            "",
            png(224, 224),
            &[("target", "5"), ("top_k", "12"), ("alpha", "0.3")],
        )
        .json()
        .unwrap();
    assert_eq!(via_form.saliency, e.saliency);
    assert_eq!(via_form.overlay_png, e.overlay_png);

    // Both ways at once: accepted when they agree, refused by name when they do not.
    let both = |alpha: &str| {
        let form = reqwest::blocking::multipart::Form::new()
            .part(
                "image",
                reqwest::blocking::multipart::Part::bytes(png(224, 224)).file_name("a.png"),
            )
            .text("alpha", alpha.to_string());
        client()
            .post(format!(
                "{}/explain?target=5&top_k=12&alpha=0.3",
                server.url
            ))
            .multipart(form)
            .send()
            .unwrap()
    };
    let agreeing: Explanation = both("0.30").json().unwrap();
    assert_eq!(agreeing.overlay_png, e.overlay_png);
    // When they disagree, the form field wins (the spec says so of every option).
    let form_wins: Explanation = both("0.4").json().unwrap();
    let query_04: Explanation = server
        .explain("?target=5&top_k=12&alpha=0.4", png(224, 224), "a.png")
        .json()
        .unwrap();
    assert_eq!(form_wins.overlay_png, query_04.overlay_png);
    assert_ne!(form_wins.overlay_png, e.overlay_png);
    // Twice in the same place with different values: neither can win.
    let p = problem(
        server.explain("?alpha=0.1&alpha=0.2", png(32, 32), "a.png"),
        422,
    );
    assert!(
        p["detail"].as_str().unwrap().contains("different values"),
        "{p}"
    );

    // A different target explains something else; alpha changes the picture only.
    let other: Explanation = server
        .explain("?target=900&alpha=0.3", png(224, 224), "a.png")
        .json()
        .unwrap();
    assert_ne!(other.saliency, e.saliency);
    let opaque: Explanation = server
        .explain("?target=5&top_k=12&alpha=0.9", png(224, 224), "a.png")
        .json()
        .unwrap();
    assert_eq!(opaque.saliency, e.saliency);
    assert_ne!(opaque.overlay_png, e.overlay_png);

    let bare: Value = server
        .explain("?overlay=false", png(224, 224), "a.png")
        .json()
        .unwrap();
    assert!(bare.get("overlay_png").is_none());
    assert!(bare["saliency"]["data"].is_array());
}

#[test]
fn accept_png_returns_the_overlay_itself() {
    let server = Server::start(&[]);
    let form = reqwest::blocking::multipart::Form::new().part(
        "image",
        reqwest::blocking::multipart::Part::bytes(jpeg(320, 200)).file_name("x.jpg"),
    );
    let r = client()
        .post(format!("{}/explain?target=7", server.url))
        .header("accept", "image/png")
        .multipart(form)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "image/png");
    assert_eq!(r.headers()["x-target-class"], "7");
    assert_eq!(r.headers()["x-model-weights"], "demo-random");
    let class: usize = r.headers()["x-prediction-class"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(class < 1000);
    let overlay = image::load_from_memory(&r.bytes().unwrap()).unwrap();
    assert_eq!((overlay.width(), overlay.height()), (320, 200));
}

/// The overlay as the answer describes it: (description, decoded image), from the field
/// the description names, which must be the only overlay field.
fn overlay_of(answer: &Value) -> (Value, image::DynamicImage) {
    let described = answer["overlay_image"].clone();
    let field = described["field"].as_str().expect("overlay_image.field");
    for other in ["overlay_png", "overlay_jpeg", "overlay_webp"] {
        assert_eq!(answer.get(other).is_some(), other == field, "{other}");
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(answer[field].as_str().unwrap())
        .unwrap();
    let format = image::guess_format(&bytes).unwrap();
    assert_eq!(format.to_mime_type(), described["media_type"]);
    let decoded = image::load_from_memory(&bytes).unwrap();
    assert_eq!(
        (decoded.width(), decoded.height()),
        (
            described["width"].as_u64().unwrap() as u32,
            described["height"].as_u64().unwrap() as u32
        )
    );
    (described, decoded)
}

#[test]
fn overlay_size_format_and_heatmap_options() {
    let server = Server::start(&[]);
    let photo = jpeg(1600, 1200);
    // Shipped defaults: a PNG blend, its longer side capped at 960; the answer still gives
    // the upload's own size.
    let answer: Value = server.explain("", photo.clone(), "p.jpg").json().unwrap();
    assert_eq!(
        answer["image"],
        serde_json::json!({"width": 1600, "height": 1200})
    );
    let (d, _) = overlay_of(&answer);
    assert_eq!(
        d,
        serde_json::json!({"kind": "blend", "media_type": "image/png", "field": "overlay_png",
                           "width": 960, "height": 720})
    );
    let default_top: Vec<Value> = answer["top_k"].as_array().unwrap().clone();

    // Another cap and JPEG, in the query.
    let answer: Value = server
        .explain(
            "?overlay_max_side=400&overlay_format=jpeg",
            photo.clone(),
            "p.jpg",
        )
        .json()
        .unwrap();
    let (d, _) = overlay_of(&answer);
    assert_eq!(
        (&d["field"], &d["width"], &d["height"]),
        (&"overlay_jpeg".into(), &400.into(), &300.into())
    );

    // Lossless WebP as a form field; a picture under the cap keeps its size.
    let answer: Value = server
        .explain_form("", png(320, 200), &[("overlay_format", "webp")])
        .json()
        .unwrap();
    let (d, webp) = overlay_of(&answer);
    assert_eq!(
        (&d["media_type"], &d["width"]),
        (&"image/webp".into(), &320.into())
    );
    let png_answer: Value = server.explain("", png(320, 200), "a.png").json().unwrap();
    let (_, png_overlay) = overlay_of(&png_answer);
    assert_eq!(webp.to_rgb8(), png_overlay.to_rgb8(), "both lossless");

    // The heat map alone: JET colours only, the same classes as the blend.
    let answer: Value = server
        .explain("?overlay=heatmap", photo.clone(), "p.jpg")
        .json()
        .unwrap();
    let (d, heat) = overlay_of(&answer);
    assert_eq!(d["kind"], "heatmap");
    assert_eq!(answer["top_k"].as_array().unwrap(), &default_top);
    let jet = &gradcam_serve::colormap::JET;
    assert!(heat.to_rgb8().pixels().all(|p| jet.contains(&p.0)));

    // Accept: image/jpeg gives the JPEG itself; a contrary overlay_format is refused.
    let image_answer = |accept: &str, query: &str| {
        let form = reqwest::blocking::multipart::Form::new().part(
            "image",
            reqwest::blocking::multipart::Part::bytes(photo.clone()).file_name("p.jpg"),
        );
        client()
            .post(format!("{}/explain{query}", server.url))
            .header("accept", accept)
            .multipart(form)
            .send()
            .unwrap()
    };
    let r = image_answer("image/jpeg", "?overlay=heatmap");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "image/jpeg");
    assert_eq!(r.headers()["x-overlay-kind"], "heatmap");
    assert_eq!(r.headers()["x-overlay-size"], "960x720");
    assert_eq!(r.headers()["x-image-size"], "1600x1200");
    let bytes = r.bytes().unwrap();
    assert_eq!(
        image::guess_format(&bytes).unwrap(),
        image::ImageFormat::Jpeg
    );
    let r = image_answer("image/webp", "?overlay_format=webp&overlay_max_side=100");
    assert_eq!(r.headers()["content-type"], "image/webp");
    let webp = image::load_from_memory(&r.bytes().unwrap()).unwrap();
    assert_eq!((webp.width(), webp.height()), (100, 75));
    let body = problem(image_answer("image/webp", "?overlay_format=png"), 422);
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .starts_with("overlay_format"),
        "{body}"
    );
}

#[test]
fn http_and_cli_give_the_same_numbers() {
    let server = Server::start(&[]);
    let bytes = png(400, 300);
    let http: Explanation = server
        .explain("?top_k=5", bytes.clone(), "x.png")
        .json()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.png");
    std::fs::write(&path, &bytes).unwrap();
    let ran = helpers::cli([
        "explain".as_ref(),
        "--json".as_ref(),
        "--demo-weights".as_ref(),
        "--weights".as_ref(),
        "/nonexistent.safetensors".as_ref(),
        path.as_os_str(),
    ]);
    assert!(ran.stderr.contains("RANDOM demo weights"), "{}", ran.stderr);
    let cli: Explanation = serde_json::from_value(ran.json()).unwrap();
    assert_eq!(cli.top_k, http.top_k);
    assert_eq!(cli.saliency, http.saliency);
    assert_eq!(cli.overlay_png, http.overlay_png);
}

#[test]
fn bad_requests_get_problem_json_with_the_right_status() {
    let server = Server::start(&["--max-upload-bytes", "300000", "--max-pixels", "5000000"]);
    let url = format!("{}/explain", server.url);

    // 415: not multipart.
    let r = client()
        .post(&url)
        .header("content-type", "image/png")
        .body(png(8, 8))
        .send()
        .unwrap();
    problem(r, 415);
    let r = client().post(&url).send().unwrap();
    problem(r, 415);

    // 400: no image part; two image parts; not an image.
    let form = reqwest::blocking::multipart::Form::new().text("target", "3");
    problem(client().post(&url).multipart(form).send().unwrap(), 400);
    let form = reqwest::blocking::multipart::Form::new()
        .part(
            "image",
            reqwest::blocking::multipart::Part::bytes(png(8, 8)),
        )
        .part(
            "image",
            reqwest::blocking::multipart::Part::bytes(png(8, 8)),
        );
    let body = problem(client().post(&url).multipart(form).send().unwrap(), 400);
    assert!(body["detail"].as_str().unwrap().contains("more than one"));
    let body = problem(
        server.explain("", b"hello, world".to_vec(), "notes.txt"),
        400,
    );
    assert!(
        body["detail"].as_str().unwrap().contains("not an image"),
        "{body}"
    );
    let mut truncated = jpeg(64, 64);
    truncated.truncate(truncated.len() / 2);
    problem(server.explain("", truncated, "half.jpg"), 400);

    // 413: over the byte limit; over the pixel limit (refused from the header alone).
    // By Content-Length, answered before the body is read (then read and thrown away, so
    // that the client, which sends it all, reads the answer); streamed (chunked), cut off
    // at the limit (and the rest read and thrown away likewise).
    let boundary = "XyZ";
    let head = |length: &str| {
        format!(
            "POST /explain HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
             Content-Type: multipart/form-data; boundary={boundary}\r\n{length}\r\n"
        )
    };
    let part = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.jpg\"\r\n\r\n"
    );
    let mut body = part.clone().into_bytes();
    body.resize(400_000, b'x');
    let (status, text) =
        helpers::raw_request(&server.url, &head("Content-Length: 400000\r\n"), &body);
    assert_eq!(status, 413, "{text}");
    assert!(
        text.contains("application/problem+json") && text.contains("300000 bytes"),
        "{text}"
    );
    let mut chunked = Vec::new();
    let chunk = vec![b'x'; 50_000];
    chunked.extend(format!("{:x}\r\n{part}\r\n", part.len()).as_bytes());
    for _ in 0..10 {
        chunked.extend(format!("{:x}\r\n", chunk.len()).as_bytes());
        chunked.extend(&chunk);
        chunked.extend(b"\r\n");
    }
    chunked.extend(b"0\r\n\r\n");
    let (status, text) = helpers::raw_request(
        &server.url,
        &head("Transfer-Encoding: chunked\r\n"),
        &chunked,
    );
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("over the limit of 300000 bytes"), "{text}");
    let body = problem(
        server.explain("", png_claiming(100_000, 100_000), "bomb.png"),
        413,
    );
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("10000000000 pixels"),
        "{body}"
    );

    // 422: each bad option, named.
    for (query, option) in [
        ("target=-1", "target"),
        ("target=1000", "target"),
        ("target=abc", "target"),
        ("top_k=0", "top_k"),
        ("top_k=1001", "top_k"),
        ("alpha=2", "alpha"),
        ("alpha=NaN", "alpha"),
        ("overlay=maybe", "overlay"),
        ("overlay=Heatmap", "overlay"),
        ("overlay_max_side=63", "overlay_max_side"),
        ("overlay_max_side=16384", "overlay_max_side"),
        ("overlay_max_side=big", "overlay_max_side"),
        ("overlay_format=gif", "overlay_format"),
        ("overlay_format=", "overlay_format"),
        ("resize=squash", "resize"),
        ("seed=-1", "seed"),
        ("seed=4294967296", "seed"),
        ("comparison_categories=1000", "comparison_categories"),
        ("comparison_categories=1,b", "comparison_categories"),
        ("finer_alpha=11", "finer_alpha"),
        ("finer_alpha=NaN", "finer_alpha"),
        ("base_method=refinecam", "base_method"),
        ("kernel=gaussian", "kernel"),
        ("gamma=0", "gamma"),
        ("gamma=1001", "gamma"),
        ("tagret=3", "tagret"),
    ] {
        let body = problem(
            server.explain(&format!("?{query}"), png(8, 8), "a.png"),
            422,
        );
        let detail = body["detail"].as_str().unwrap();
        assert!(detail.starts_with(option), "{query}: {detail}");
    }

    // 404 and 405 in the same shape.
    problem(
        client().get(format!("{}/nope", server.url)).send().unwrap(),
        404,
    );
    problem(client().get(&url).send().unwrap(), 405);

    // And the server is still fine.
    assert_eq!(server.explain("", png(64, 64), "ok.png").status(), 200);
}

#[test]
fn bearer_tokens_guard_explain_but_not_health() {
    let server = Server::start(&["--api-keys", "s3cret,other", "--protect-metrics"]);
    let url = format!("{}/explain", server.url);
    let form = || {
        reqwest::blocking::multipart::Form::new().part(
            "image",
            reqwest::blocking::multipart::Part::bytes(png(32, 32)).file_name("a.png"),
        )
    };
    let r = client().post(&url).multipart(form()).send().unwrap();
    assert!(r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Bearer"));
    problem(r, 401);
    problem(
        client()
            .post(&url)
            .bearer_auth("wrong")
            .multipart(form())
            .send()
            .unwrap(),
        401,
    );
    let ok = client()
        .post(&url)
        .bearer_auth("s3cret")
        .multipart(form())
        .send()
        .unwrap();
    assert_eq!(ok.status(), 200);
    let ok = client()
        .post(&url)
        .bearer_auth("other")
        .multipart(form())
        .send()
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(
        client()
            .get(format!("{}/health", server.url))
            .send()
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        client()
            .get(format!("{}/ready", server.url))
            .send()
            .unwrap()
            .status(),
        200
    );
    problem(
        client()
            .get(format!("{}/metrics", server.url))
            .send()
            .unwrap(),
        401,
    );
    let docs = client()
        .get(format!("{}/openapi.json", server.url))
        .send()
        .unwrap();
    assert_eq!(docs.status(), 200, "docs stay open unless protect_docs");

    // A refused upload is read before the 401, so a client (or a proxy such as nginx)
    // still sending it is not cut off with a reset and takes the answer, not a broken
    // pipe (which nginx turns into a 502 and counts against the replica).
    let body = vec![b'x'; 8 << 20];
    let head = format!(
        "POST /explain HTTP/1.1\r\nHost: t\r\nContent-Type: multipart/form-data; boundary=b\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let answer = send_all_then_read(&server.url, &head, &body);
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
}

/// Sends `head` and `body` over a raw socket; the whole body must be taken before
/// the answer (no reset under a client or proxy still sending). Returns the answer.
fn send_all_then_read(url: &str, head: &str, body: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(url.trim_start_matches("http://")).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    stream
        .write_all(body)
        .expect("the whole upload is taken before the refusal");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

#[test]
fn refusals_before_the_upload_is_read_still_take_it_whole() {
    let server = Server::start(&[]);
    let big = vec![b'x'; 8 << 20];
    let head = |path: &str, content_type: &str, length: usize| {
        format!(
            "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: {content_type}\r\n\
             Content-Length: {length}\r\nConnection: close\r\n\r\n"
        )
    };
    let multipart = "multipart/form-data; boundary=b";
    // Refused before any part: a bad query option, a wrong content type, no boundary, a
    // boundary the multipart parser refuses, a path that does not exist, a wrong method.
    for (method, path, content_type, status) in [
        ("POST", "/explain?top_k=0", multipart, "422"),
        ("POST", "/explain", "application/octet-stream", "415"),
        ("POST", "/explain", "multipart/form-data", "400"),
        ("POST", "/explain", "multipart/form-data; boundary=", "400"),
        ("POST", "/explian", multipart, "404"),
        ("PUT", "/explain", multipart, "405"),
        ("POST", "/health", multipart, "405"),
    ] {
        let request = head(path, content_type, big.len()).replacen("POST", method, 1);
        let answer = send_all_then_read(&server.url, &request, &big);
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{method} {path} {content_type}: {answer}"
        );
        assert!(answer.contains("application/problem+json"), "{answer}");
    }
    // A bad option field first, then a large part: refused after the first part.
    let mut body = b"--b\r\nContent-Disposition: form-data; name=\"alpha\"\r\n\r\n7\r\n\
        --b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n\r\n"
        .to_vec();
    body.extend(&big);
    body.extend(b"\r\n--b--\r\n");
    let answer = send_all_then_read(&server.url, &head("/explain", multipart, body.len()), &body);
    assert!(answer.starts_with("HTTP/1.1 422"), "{answer}");
    assert!(answer.contains("alpha"), "{answer}");
}

#[test]
fn a_client_waiting_for_100_continue_gets_the_refusal_without_sending() {
    // curl asks `Expect: 100-continue` for bodies over 1 MB. Refused before its body is
    // needed, it must get the final answer (no 100 Continue first), without uploading.
    let server = Server::start(&["--api-keys", "k1"]);
    let auth = "Authorization: Bearer k1\r\n";
    for (path, headers, status) in [
        ("/explian", auth, "404"),
        ("/explain?top_k=0", auth, "422"),
        ("/explain", "", "401"),
    ] {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: t\r\n{headers}Content-Type: multipart/form-data; \
             boundary=b\r\nContent-Length: 8000000\r\nExpect: 100-continue\r\n\
             Connection: close\r\n\r\n"
        );
        let (_, answer) = helpers::send_raw(&server.url, head.as_bytes());
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{path}: {answer}"
        );
    }
}

#[test]
fn health_ready_metrics_and_request_ids() {
    let server = Server::start(&[]);
    let health: Value = client()
        .get(format!("{}/health", server.url))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["model"]["weights"], "demo-random");
    assert_eq!(server.explain("", png(50, 50), "a.png").status(), 200);
    let r = client()
        .get(format!("{}/ready", server.url))
        .header("x-request-id", "trace-me-42")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-request-id"], "trace-me-42");
    let metrics = server.metrics();
    for needle in [
        "gradcam_requests_total{endpoint=\"/explain\",status=\"200\"} 1",
        "gradcam_stage_duration_seconds_count{stage=\"forward\"} 1",
        "gradcam_queue_depth 0",
        "gradcam_jobs_waiting 0",
        "gradcam_jobs_running 0",
        "gradcam_batch_size_count 1",
        "gradcam_batch_size_bucket{le=\"1\"} 1",
        "gradcam_ready 1",
        "gradcam_model_info{name=\"resnet50\",classes=\"1000\",weights=\"demo-random\"} 1",
    ] {
        assert!(metrics.contains(needle), "missing {needle}:\n{metrics}");
    }
}

#[test]
fn served_openapi_spec_is_the_committed_one() {
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.json"))
            .unwrap();
    assert_eq!(
        committed,
        gradcam_serve::http::openapi_json(),
        "openapi/openapi.json is stale: run `gradcam-serve openapi > openapi/openapi.json`"
    );
    let server = Server::start(&[]);
    let served: Value = client()
        .get(format!("{}/openapi.json", server.url))
        .send()
        .unwrap()
        .json()
        .unwrap();
    // The demo model is an ImageNet ResNet-50, the model the committed spec describes.
    assert_eq!(served, serde_json::from_str::<Value>(&committed).unwrap());
    assert_eq!(
        served["openapi"].as_str().unwrap().chars().next(),
        Some('3')
    );
    for path in ["/explain", "/model", "/health", "/ready", "/metrics"] {
        assert!(
            served["paths"].get(path).is_some(),
            "{path} missing from the spec"
        );
    }
    let docs = client()
        .get(format!("{}/docs/", server.url))
        .send()
        .unwrap();
    assert_eq!(docs.status(), 200);
    assert!(docs.text().unwrap().contains("swagger"));
}

#[test]
fn sigterm_stops_an_idle_server_with_exit_zero() {
    // (Shutdown with work in flight is tested in process, with a held explainer:
    // tests/api/queue.rs.)
    let mut server = Server::start(&[]);
    server.signal("TERM");
    let status = server.child.wait().unwrap();
    assert!(status.success(), "exit status {status:?}");
    assert!(
        client()
            .get(format!("{}/health", server.url))
            .send()
            .is_err(),
        "no longer listening"
    );
}

#[test]
fn the_model_endpoint_and_any_layer() {
    let server = Server::start(&[]);
    let model = server.get_json("/model");
    assert_eq!(model["architecture"], "resnet50");
    assert_eq!(model["num_classes"], 1000);
    assert_eq!(model["labels"][281], "tabby");
    assert_eq!(model["labels_source"], "imagenet");
    assert_eq!(model["default_layer"], "layer4");
    assert_eq!(model["input_size"], 224);
    assert_eq!(model["weights"], "demo-random");
    let layers: Vec<&str> = model["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert_eq!(layers[..4], ["layer1", "layer2", "layer3", "layer4"]);
    assert!(layers.contains(&"layer3.5") && !layers.contains(&"layer3.6"));

    for (layer, side) in [
        ("layer3", 14),
        ("layer2", 28),
        ("layer3.1", 14),
        ("layer4", 7),
    ] {
        // As a query parameter and as a form field.
        let e: Explanation = server
            .explain(&format!("?layer={layer}"), png(224, 224), "a.png")
            .json()
            .unwrap();
        assert_eq!(
            (e.saliency.width, e.saliency.height),
            (side, side),
            "{layer}"
        );
        assert_eq!(e.model.target_layer, layer);
        let via_form: Explanation = server
            .explain_form("", png(224, 224), &[("layer", layer)])
            .json()
            .unwrap();
        assert_eq!(via_form.saliency, e.saliency);
    }
    for bad in ["layer5", "layer4.3", "fc", "layer3.x"] {
        let p = problem(
            server.explain(&format!("?layer={bad}"), png(32, 32), "a.png"),
            422,
        );
        let detail = p["detail"].as_str().unwrap();
        assert!(detail.contains("layer") && detail.contains(bad), "{detail}");
    }
}

/// GET /model's entry for method `name`.
fn method_info<'a>(model: &'a Value, name: &str) -> &'a Value {
    model["methods"]
        .as_array()
        .expect("GET /model lists the methods")
        .iter()
        .find(|m| m["name"] == name)
        .unwrap_or_else(|| panic!("{name} is listed"))
}

fn method_names(model: &Value) -> Vec<String> {
    model["methods"]
        .as_array()
        .expect("GET /model lists the methods")
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect()
}

/// GET /model lists each method the server runs on the model, its default first (the page
/// offers exactly these), and each one listed is one POST /explain takes.
#[test]
fn the_model_endpoint_lists_every_method_the_server_runs() {
    use gradcam_serve::cam::Method;
    // A 64-pixel input: SESS explains 122 windows, which at 224 pixels takes longer than
    // the request timeout on a busy two-core machine.
    let server = Server::start(&["--input-size", "64", "--request-timeout-secs", "3600"]);
    let model = server.get_json("/model");
    let names = method_names(&model);
    let expected: Vec<String> = Method::ALL
        .iter()
        .filter(|m| **m != Method::ScoreCam)
        .map(|m| m.name().to_string())
        .collect();
    assert_eq!(
        names, expected,
        "all but ScoreCAM, which this server does not allow"
    );
    for m in model["methods"].as_array().unwrap() {
        let name = m["name"].as_str().unwrap();
        let method: Method = name.parse().unwrap();
        assert_eq!(m["reference"], method.reference_class(), "{m}");
        assert_eq!(m["gradient"], method.uses_gradients(), "{m}");
        assert_eq!(m["takes_layer"], method.takes_layer(), "{m}");
        assert!(!m["cost"].as_str().unwrap().is_empty(), "{m}");
        let smooth = m["options"]
            .as_array()
            .unwrap()
            .contains(&"eigen_smooth".into());
        assert_eq!(smooth, method.smoothable(), "{m}");
        let options: Vec<&str> = m["options"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o.as_str().unwrap())
            .collect();
        for option in &options {
            assert!(
                gradcam_serve::options::NAMES.contains(option),
                "{name} lists `{option}`, which is no request option"
            );
        }
        assert_eq!(options.contains(&"aug_smooth"), method.augmentable(), "{m}");
        let e: Explanation = server
            .explain(
                &format!("?method={name}&overlay=false"),
                png(64, 64),
                "a.png",
            )
            .json()
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        if name == "auto" {
            // The answer names the method it chose.
            assert_eq!(e.candidates.unwrap()[0].method, e.method);
        } else {
            assert_eq!(e.method, name);
        }
    }
    problem(
        server.explain("?method=scorecam", png(64, 64), "a.png"),
        422,
    );

    let allowing = Server::start(&["--allow-scorecam", "--default-method", "eigencam"]);
    let names = method_names(&allowing.get_json("/model"));
    assert_eq!(names[0], "eigencam", "the default first: {names:?}");
    assert_eq!(names.len(), Method::ALL.len(), "{names:?}");
    assert!(names.contains(&"scorecam".to_string()), "{names:?}");
}

/// Writes a seeded random resnet18 with `classes` outputs, and a labels file.
fn resnet18_files(
    dir: &std::path::Path,
    classes: usize,
) -> (std::path::PathBuf, std::path::PathBuf) {
    use gradcam_serve::model::resnet::{self as model, Architecture};
    let weights = dir.join("xray-resnet18.safetensors");
    let architecture = Architecture::named("resnet18", classes).unwrap();
    tch::Tensor::write_safetensors(&model::random_tensors(&architecture, 5), &weights).unwrap();
    let labels = dir.join("labels.json");
    let names: Vec<String> = (0..classes).map(|i| format!("finding-{i}")).collect();
    std::fs::write(&labels, serde_json::to_string(&names).unwrap()).unwrap();
    (weights, labels)
}

#[test]
fn a_fine_tuned_resnet18_with_ten_classes_and_labels() {
    let dir = tempfile::tempdir().unwrap();
    let (weights, labels) = resnet18_files(dir.path(), 10);
    let server = Server::start_with_weights(
        &weights,
        // A default top_k over the class count lists every class.
        &["--labels", labels.to_str().unwrap(), "--top-k", "30"],
    );
    let e: Explanation = server
        .explain("?layer=layer3&target=9", jpeg(300, 200), "x.jpg")
        .json()
        .unwrap();
    assert_eq!(e.model.name, "resnet18");
    assert_eq!(e.model.target_layer, "layer3");
    assert_eq!(e.top_k.len(), 10);
    assert_eq!(e.target.class_index, 9);
    assert_eq!(e.target.label, "finding-9");
    assert!(e
        .top_k
        .iter()
        .all(|c| c.label == format!("finding-{}", c.class_index)));
    assert_eq!((e.saliency.width, e.saliency.height), (14, 14));
    assert_eq!(e.model.weights.len(), 64, "the file's SHA-256");

    // Every range follows the class count.
    let p = problem(server.explain("?target=10", png(32, 32), "a.png"), 422);
    assert!(p["detail"].as_str().unwrap().contains("0..=9"), "{p}");
    let p = problem(server.explain("?top_k=11", png(32, 32), "a.png"), 422);
    assert!(p["detail"].as_str().unwrap().contains("1..=10"), "{p}");
    let p = problem(server.explain("?layer=layer3.2", png(32, 32), "a.png"), 422);
    assert!(p["detail"].as_str().unwrap().contains("layer4.1"), "{p}");
    let spec = server.get_json("/openapi.json");
    let params = spec["paths"]["/explain"]["post"]["parameters"]
        .as_array()
        .unwrap();
    let param = |name: &str| params.iter().find(|p| p["name"] == name).unwrap().clone();
    // `target` is a comma-separated list (a string): its range is in the description.
    assert!(param("target")["description"]
        .as_str()
        .unwrap()
        .contains("0..=9"));
    assert_eq!(param("top_k")["schema"]["maximum"], 10);
    assert_eq!(param("top_k_maps")["schema"]["maximum"], 10);
    // `layer` takes this model's 12 layer names, one or several comma-separated.
    let pattern = param("layer")["schema"]["pattern"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        pattern.contains("layer4\\.1") && !pattern.contains("layer4\\.2"),
        "{pattern}"
    );
    let form = &spec["components"]["schemas"]["ExplainUpload"]["properties"];
    assert!(form["target"]["description"]
        .as_str()
        .unwrap()
        .contains("0..=9"));
    assert_eq!(form["layer"]["pattern"], pattern.as_str());

    // The CLI says the same.
    let model = helpers::cli([
        "model".as_ref(),
        "--weights".as_ref(),
        weights.as_os_str(),
        "--labels".as_ref(),
        labels.as_os_str(),
    ])
    .json();
    assert_eq!(model["architecture"], "resnet18");
    assert_eq!(model["labels"][9], "finding-9");
    let image = dir.path().join("x.png");
    std::fs::write(&image, png(40, 30)).unwrap();
    let out = std::process::Command::new(BIN)
        .args(["explain", "--target", "10", "--weights"])
        .arg(&weights)
        .arg(&image)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--target") && stderr.contains("0..=9"),
        "{stderr}"
    );
}

#[test]
fn bad_model_files_are_refused_at_start_naming_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let (weights, labels) = resnet18_files(dir.path(), 10);
    // A refused start ends the process before its first line; a server that wrongly starts
    // prints "listening on" (it is then stopped, and the test fails), never hanging here.
    let start = |args: &[&str]| {
        use std::io::{BufRead, Read};
        let mut child = std::process::Command::new(BIN)
            .args(["serve", "--bind", "127.0.0.1:0", "--weights"])
            .arg(&weights)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        if first.starts_with("listening on") {
            let _ = child.kill();
            let _ = child.wait();
            panic!("started with {args:?}");
        }
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        assert!(!child.wait().unwrap().success(), "exit 0 with {args:?}");
        err
    };
    let err = start(&["--architecture", "resnet50"]);
    assert!(
        err.contains("resnet18") && err.contains("resnet50"),
        "{err}"
    );
    std::fs::write(&labels, "one\ntwo\n").unwrap();
    let err = start(&["--labels", labels.to_str().unwrap()]);
    assert!(
        err.contains("2 labels") && err.contains("10 classes"),
        "{err}"
    );
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() - 1000]).unwrap();
    let err = start(&[]);
    assert!(err.contains("xray-resnet18.safetensors"), "{err}");
}

/// The CAM methods, several targets and several layers, through query and form.
#[test]
fn methods_targets_and_layers_through_query_and_form() {
    let server = Server::start(&[]);
    let e: Explanation = server
        .explain("?method=hirescam&layer=layer3", png(224, 224), "a.png")
        .json()
        .unwrap();
    assert_eq!(e.method, "hirescam");
    assert_eq!(e.model.target_layer, "layer3");
    assert_eq!((e.saliency.width, e.saliency.height), (14, 14));
    assert!(!e.saliency.scaled);
    assert!(e.maps.is_none(), "one target: no list");
    let via_form: Explanation = server
        .explain_form(
            "",
            png(224, 224),
            &[("method", "hirescam"), ("layer", "layer3")],
        )
        .json()
        .unwrap();
    assert_eq!(via_form.saliency, e.saliency);
    // HiResCAM differs from Grad-CAM at layer3 (at layer4 they are equal for a ResNet).
    let gradcam: Explanation = server
        .explain("?layer=layer3", png(224, 224), "a.png")
        .json()
        .unwrap();
    assert_eq!(gradcam.method, "gradcam");
    assert_ne!(gradcam.saliency, e.saliency);
    let plus: Explanation = server
        .explain(
            "?method=gradcam%2B%2B&eigen_smooth=true",
            png(64, 64),
            "a.png",
        )
        .json()
        .unwrap();
    assert_eq!(plus.method, "gradcam-plusplus");

    // Several targets: the first in the usual fields, all in `maps`, each with an overlay.
    let r = server.explain("?target=281,285,3", png(160, 120), "a.png");
    assert_eq!(r.status(), 200);
    let body: Value = r.json().unwrap();
    let e: Explanation = serde_json::from_value(body.clone()).unwrap();
    let maps = e.maps.as_ref().expect("a list for several targets");
    let classes: Vec<usize> = maps.iter().map(|m| m.target.class_index).collect();
    assert_eq!(classes, [281, 285, 3]);
    assert_eq!(e.target, maps[0].target);
    assert_eq!(e.saliency, maps[0].saliency);
    assert_ne!(maps[0].saliency, maps[1].saliency);
    for m in maps {
        let png = base64::engine::general_purpose::STANDARD
            .decode(m.overlay_png.as_ref().expect("an overlay per target"))
            .unwrap();
        let overlay = image::load_from_memory(&png).unwrap();
        assert_eq!((overlay.width(), overlay.height()), (160, 120));
    }
    let top: Explanation = server
        .explain_form("", png(64, 64), &[("top_k_maps", "2")])
        .json()
        .unwrap();
    let classes: Vec<usize> = top
        .maps
        .unwrap()
        .iter()
        .map(|m| m.target.class_index)
        .collect();
    assert_eq!(
        classes,
        [top.top_k[0].class_index, top.top_k[1].class_index]
    );
    // With `target`: the listed classes first, then the most probable others.
    let listed = top.top_k[1].class_index;
    let mixed: Explanation = server
        .explain(
            &format!("?target={listed}&top_k_maps=3"),
            png(64, 64),
            "a.png",
        )
        .json()
        .unwrap();
    let classes: Vec<usize> = mixed
        .maps
        .unwrap()
        .iter()
        .map(|m| m.target.class_index)
        .collect();
    let others: Vec<usize> = top
        .top_k
        .iter()
        .map(|c| c.class_index)
        .filter(|&c| c != listed)
        .take(2)
        .collect();
    assert_eq!(classes, [vec![listed], others].concat());

    // Several layers: pytorch-grad-cam's aggregated map, at the input's size.
    let e: Explanation = server
        .explain(
            "?layer=layer3,layer4&method=layercam",
            png(100, 80),
            "a.png",
        )
        .json()
        .unwrap();
    assert_eq!(e.model.target_layer, "layer3,layer4");
    assert!(e.saliency.scaled);
    assert_eq!((e.saliency.width, e.saliency.height), (224, 224));
    let all = e.saliency.data.concat();
    assert!(all.iter().all(|v| (0.0..=1.0).contains(v)));

    // aug_smooth: six passes, the scaled map.
    let e: Explanation = server
        .explain("?aug_smooth=true&method=eigencam", png(64, 64), "a.png")
        .json()
        .unwrap();
    assert_eq!(e.method, "eigencam");
    assert!(e.saliency.scaled);
}

/// RandomCAM's seed, FinerCAM's comparisons and strength change their maps, and only
/// theirs; ShapleyCAM is Grad-CAM on a ReLU network (its Hessian there is zero).
#[test]
fn the_methods_own_options_change_their_maps() {
    let server = Server::start(&[]);
    let image = png(224, 224);
    let map = |query: &str| -> Vec<f32> {
        let e: Explanation = server
            .explain(query, image.clone(), "a.png")
            .json()
            .unwrap();
        e.saliency.data.concat()
    };
    let random = map("?method=randomcam");
    assert_eq!(
        random,
        map("?method=randomcam&seed=0"),
        "seed 0 is the default"
    );
    assert_ne!(random, map("?method=randomcam&seed=1"));
    assert_eq!(
        map("?method=randomcam&seed=1"),
        map("?method=randomcam&seed=1"),
        "a seed gives the same map every time"
    );
    assert_eq!(map("?method=gradcam"), map("?method=gradcam&seed=5"));

    let finer = map("?method=finercam&layer=layer3");
    assert_eq!(
        finer,
        map("?method=finercam&layer=layer3&comparison_categories=1,2,3&finer_alpha=1")
    );
    assert_ne!(
        finer,
        map("?method=finercam&layer=layer3&comparison_categories=4")
    );
    assert_ne!(finer, map("?method=finercam&layer=layer3&finer_alpha=0.25"));
    assert_eq!(
        finer,
        map("?method=finercam&layer=layer3&aug_smooth=true"),
        "FinerCAM has no aug_smooth in pytorch-grad-cam: ignored, as GET /model says"
    );
    let gradcam = map("?layer=layer3");
    assert_eq!(gradcam, map("?layer=layer3&finer_alpha=0.25"));
    assert_ne!(finer, gradcam);

    // RefineCAM: the product of its base method's maps, at the input's size, scaled.
    let e: Explanation = server
        .explain(
            "?method=refinecam&layer=layer3,layer4",
            image.clone(),
            "a.png",
        )
        .json()
        .unwrap();
    assert!(e.saliency.scaled);
    assert_eq!((e.saliency.width, e.saliency.height), (224, 224));
    let refined = e.saliency.data.concat();
    let top = refined.iter().cloned().fold(0f32, f32::max);
    assert!(top > 0.999 && top <= 1.0, "scaled: {top}");
    assert_ne!(
        refined,
        map("?method=refinecam&layer=layer3,layer4&base_method=gradcam")
    );
    for (query, says) in [
        ("?method=refinecam&base_method=finercam", "must be one of"),
        ("?method=refinecam&base_method=scorecam", "allow_scorecam"),
    ] {
        let body = problem(server.explain(query, image.clone(), "a.png"), 422);
        let detail = body["detail"].as_str().unwrap();
        assert!(
            detail.starts_with("base_method") && detail.contains(says),
            "{detail}"
        );
    }

    // KPCA-CAM: its kernel and gamma change its map, and only its.
    let kpca = map("?method=kpcacam");
    assert_eq!(kpca, map("?method=kpcacam&kernel=sigmoid"));
    assert_ne!(kpca, map("?method=kpcacam&kernel=linear"));
    assert_ne!(kpca, map("?method=kpcacam&gamma=0.00001"));
    assert_eq!(
        map("?method=eigencam"),
        map("?method=eigencam&kernel=linear")
    );
    // Any positive gamma the spec allows is taken (the contract test once sent 5e-324,
    // which a float32 option read as 0 and refused).
    assert_eq!(map("?method=kpcacam&gamma=5e-324").len(), 49);

    let shapley = map("?method=shapleycam&layer=layer3");
    let top = gradcam.iter().cloned().fold(0f32, f32::max);
    assert!(top > 0.0);
    for (s, g) in shapley.iter().zip(&gradcam) {
        assert!((s - g).abs() <= 1e-5 * top, "{s} against Grad-CAM's {g}");
    }
}

/// FullGrad and SobelCAM take no layer: `layer` changes nothing, the answer names none,
/// and the map is the scaled one at the input's size. FullGrad's map follows the class,
/// SobelCAM's follows only the image.
#[test]
fn fullgrad_and_sobelcam_take_no_layer() {
    let server = Server::start(&[]);
    let image = png(224, 224);
    let answer = |query: &str, image: &[u8]| -> Explanation {
        server
            .explain(query, image.to_vec(), "a.png")
            .json()
            .unwrap()
    };
    for method in ["fullgrad", "sobelcam"] {
        let e = answer(&format!("?method={method}"), &image);
        assert_eq!(e.method, method);
        assert_eq!(e.model.target_layer, "", "{method} names no layer");
        assert!(e.saliency.scaled, "{method}");
        assert_eq!((e.saliency.width, e.saliency.height), (224, 224));
        let map = e.saliency.data.concat();
        let top = map.iter().cloned().fold(f32::MIN, f32::max);
        assert!(top > 0.999 && top <= 1.0, "{method}: scaled, max {top}");
        assert!(map.iter().all(|&v| v >= 0.0), "{method}");
        let at_layer3 = answer(&format!("?method={method}&layer=layer3"), &image);
        assert_eq!(at_layer3.saliency, e.saliency, "{method}: layer is ignored");
        assert_eq!(at_layer3.model.target_layer, "");
    }
    let full = |target: usize| {
        answer(&format!("?method=fullgrad&target={target}"), &image)
            .saliency
            .data
    };
    assert_ne!(full(1), full(2), "FullGrad explains the class asked for");
    let e = answer("?method=sobelcam&target=1,2", &image);
    let maps = e.maps.expect("two targets");
    assert_eq!(
        maps[0].saliency, maps[1].saliency,
        "edges whatever the class"
    );
    assert_ne!(
        e.saliency,
        answer("?method=sobelcam", &png(200, 224)).saliency,
        "another image, other edges"
    );
    // A flat image has no edges: an all-zero map, not NaN.
    let flat = encode(
        &image::RgbImage::from_pixel(64, 64, image::Rgb([90, 120, 200])),
        image::ImageFormat::Png,
    );
    let e = answer("?method=sobelcam", &flat);
    assert!(e.saliency.data.concat().iter().all(|&v| v == 0.0));
}

/// SESS: its base method's maps of windows at 12 scales fused into one scaled map at the
/// input's size; `base_method` changes it, a base without a layer map is refused, and
/// `GET /model` says what it takes. (A 64-pixel input keeps its 122 windows cheap.)
#[test]
fn sess_fuses_its_base_methods_windows() {
    // Its windows take seconds on a busy machine: no request timeout to race.
    let server = Server::start(&["--input-size", "64", "--request-timeout-secs", "3600"]);
    let image = png(90, 70);
    let answer = |query: &str| -> Explanation {
        server
            .explain(query, image.clone(), "a.png")
            .json()
            .unwrap()
    };
    let e = answer("?method=sess");
    assert_eq!(e.method, "sess");
    assert_eq!(e.model.target_layer, "layer4");
    assert!(e.saliency.scaled);
    assert_eq!((e.saliency.width, e.saliency.height), (64, 64));
    let map = e.saliency.data.concat();
    let top = map.iter().cloned().fold(f32::MIN, f32::max);
    assert!(top > 0.999 && top <= 1.0, "scaled, max {top}");
    assert!(map.iter().all(|&v| v >= 0.0));
    assert_eq!(
        answer("?method=sess&base_method=gradcam").saliency,
        e.saliency,
        "Grad-CAM is its default base"
    );
    assert_ne!(
        answer("?method=sess&base_method=layercam").saliency,
        e.saliency
    );
    assert_ne!(answer("?method=sess&layer=layer3").saliency, e.saliency);
    for base in ["sess", "fullgrad", "refinecam"] {
        let query = format!("?method=sess&base_method={base}");
        let body = problem(server.explain(&query, image.clone(), "a.png"), 422);
        let detail = body["detail"].as_str().unwrap();
        assert!(detail.starts_with("base_method"), "{detail}");
    }
    let model = server.get_json("/model");
    let sess = method_info(&model, "sess");
    assert_eq!(sess["reference"], "SESS");
    assert_eq!(
        sess["options"],
        serde_json::json!(["eigen_smooth", "base_method"])
    );
}

/// Deep Feature Factorization: `n_components` concepts, each with its map, its colour and
/// the classes it votes for (none at a layer the classifier does not read); `saliency` is
/// each pixel's strongest concept; the overlay is the concepts over the image the model
/// saw with a legend beside it.
#[test]
fn dff_answers_concepts_with_their_classes_and_a_legend() {
    let server = Server::start(&[]);
    let image = png(300, 200);
    let answer = |query: &str| -> Explanation {
        server
            .explain(query, image.clone(), "a.png")
            .json()
            .unwrap()
    };
    let e = answer("?method=dff");
    assert_eq!(e.method, "dff");
    let concepts = e.concepts.as_ref().expect("concepts");
    assert_eq!(concepts.len(), 5, "five by default");
    assert_eq!(concepts[0].colour, "#ff0028", "gist_rainbow's first");
    for c in concepts {
        assert_eq!(c.classes.len(), 2, "two classes each by default");
        assert!(c.classes[0].score >= c.classes[1].score && !c.classes[0].label.is_empty());
        assert!(c.saliency.scaled && (c.saliency.width, c.saliency.height) == (224, 224));
    }
    // saliency: each pixel's strongest concept.
    let strongest: Vec<f32> = (0..224 * 224)
        .map(|i| {
            concepts
                .iter()
                .map(|c| c.saliency.data[i / 224][i % 224])
                .fold(f32::MIN, f32::max)
        })
        .collect();
    assert_eq!(e.saliency.data.concat(), strongest);
    let overlay = e.overlay_image.as_ref().expect("an overlay");
    assert_eq!(overlay.kind, "concepts");
    assert_eq!(
        (overlay.width, overlay.height),
        (448, 224),
        "picture and legend"
    );
    let png_bytes = base64::engine::general_purpose::STANDARD
        .decode(e.overlay_png.as_ref().unwrap())
        .unwrap();
    let picture = image::load_from_memory(&png_bytes).unwrap().to_rgb8();
    let legend_has =
        |c: [u8; 3]| (224..448).any(|x| (0..224).any(|y| picture.get_pixel(x, y).0 == c));
    assert!(
        legend_has([255, 0, 40]) && legend_has([0, 0, 0]),
        "coloured lines and text"
    );

    let fewer = answer("?method=dff&n_components=3&concept_top_k=1");
    let concepts = fewer.concepts.unwrap();
    assert_eq!(concepts.len(), 3);
    assert!(concepts.iter().all(|c| c.classes.len() == 1));
    let at_layer3 = answer("?method=dff&layer=layer3").concepts.unwrap();
    assert!(
        at_layer3.iter().all(|c| c.classes.is_empty()),
        "fc reads layer4 only"
    );
    assert!(answer("?method=gradcam").concepts.is_none());
    for (query, name) in [
        ("?method=dff&n_components=0", "n_components"),
        ("?method=dff&n_components=17", "n_components"),
        ("?method=dff&concept_top_k=6", "concept_top_k"),
        ("?method=dff&layer=layer3,layer4", "layer"),
    ] {
        let body = problem(server.explain(query, image.clone(), "a.png"), 422);
        let detail = body["detail"].as_str().unwrap();
        assert!(detail.contains(name), "{query}: {detail}");
    }
    let model = server.get_json("/model");
    let dff = method_info(&model, "dff");
    assert_eq!(
        dff["options"],
        serde_json::json!(["n_components", "concept_top_k"])
    );
}

/// Guided backpropagation and Guided Grad-CAM: three signed channels at the input's size
/// (rows of r, g, b per pixel), and as overlay the deprocessed picture of that map.
#[test]
fn guided_methods_answer_three_channels_and_their_picture() {
    let server = Server::start(&[]);
    let image = png(300, 200);
    let answer = |query: &str| -> Explanation {
        server
            .explain(query, image.clone(), "a.png")
            .json()
            .unwrap()
    };
    let backprop = answer("?method=guided-backprop&target=3");
    let s = &backprop.saliency;
    assert_eq!(
        (s.width, s.height, s.channels, s.scaled),
        (224, 224, 3, false)
    );
    assert_eq!(s.data.len(), 224);
    assert!(s.data.iter().all(|row| row.len() == 224 * 3));
    let values = s.data.concat();
    assert!(values.iter().any(|&v| v > 0.0) && values.iter().any(|&v| v < 0.0));
    assert_eq!(backprop.model.target_layer, "", "no layer");
    let picture = backprop.overlay_image.as_ref().unwrap();
    assert_eq!(
        (picture.kind.as_str(), picture.width, picture.height),
        ("deprocessed", 224, 224)
    );
    let png_bytes = base64::engine::general_purpose::STANDARD
        .decode(backprop.overlay_png.as_ref().unwrap())
        .unwrap();
    let decoded = image::load_from_memory(&png_bytes).unwrap().to_rgb8();
    assert_eq!(
        decoded.as_raw(),
        &gradcam_serve::render::deprocess_image(&values),
        "the picture is deprocess_image of the map"
    );
    assert_eq!(
        answer("?method=guided-backprop&target=3&layer=layer3").saliency,
        backprop.saliency,
        "layer does not apply"
    );
    assert_ne!(
        answer("?method=guided-backprop&target=4").saliency,
        backprop.saliency
    );

    // Guided Grad-CAM: the same gradients times a map in [0, 1]: zero where they are,
    // never larger, and not everywhere the same.
    let guided_cam = answer("?method=guided-gradcam&target=3&layer=layer3");
    assert_eq!(guided_cam.model.target_layer, "layer3");
    assert_eq!(guided_cam.saliency.channels, 3);
    let product = guided_cam.saliency.data.concat();
    assert_ne!(product, values);
    for (p, g) in product.iter().zip(&values) {
        assert!(
            p.abs() <= g.abs() && (*g != 0.0 || *p == 0.0),
            "{p} from {g}"
        );
    }
    let r = client()
        .post(format!("{}/explain?method=guided-gradcam", server.url))
        .header("accept", "image/png")
        .multipart(reqwest::blocking::multipart::Form::new().part(
            "image",
            reqwest::blocking::multipart::Part::bytes(image.clone()).file_name("a.png"),
        ))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let picture = image::load_from_memory(&r.bytes().unwrap()).unwrap();
    assert_eq!((picture.width(), picture.height()), (224, 224));
    assert!(answer("?method=guided-backprop&overlay=false")
        .overlay_png
        .is_none());
}

#[test]
fn method_refusals_say_what_is_allowed() {
    let server = Server::start(&[]);
    let body = problem(
        server.explain("?method=gradcam3", png(64, 64), "a.png"),
        422,
    );
    let detail = body["detail"].as_str().unwrap();
    for name in [
        "gradcam",
        "hirescam",
        "gradcam++",
        "eigencam",
        "ablationcam",
        "fem",
    ] {
        assert!(detail.contains(name), "{detail}");
    }
    let body = problem(
        server.explain_form("", png(64, 64), &[("method", "scorecam")]),
        422,
    );
    assert!(
        body["detail"].as_str().unwrap().contains("allow_scorecam"),
        "{body}"
    );
    // The served spec says so: its method pattern has no scorecam here.
    let spec = server.get_json("/openapi.json");
    let pattern = spec["paths"]["/explain"]["post"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "method")
        .unwrap()["schema"]["pattern"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        pattern.contains("ablationcam") && !pattern.contains("scorecam"),
        "{pattern}"
    );
    for query in [
        "?target=1,2,3,4,5,6,7,8,9,10,11",
        "?target=1,x",
        "?top_k_maps=11",
        "?layer=layer3,fc",
        "?eigen_smooth=1",
    ] {
        problem(server.explain(query, png(64, 64), "a.png"), 422);
    }
    // One PNG holds one map.
    let form = reqwest::blocking::multipart::Form::new().part(
        "image",
        reqwest::blocking::multipart::Part::bytes(png(64, 64)).file_name("x.png"),
    );
    let r = client()
        .post(format!("{}/explain?target=1,2", server.url))
        .header("accept", "image/png")
        .multipart(form)
        .send()
        .unwrap();
    let body = problem(r, 406);
    assert!(body["detail"]
        .as_str()
        .unwrap()
        .contains("application/json"));
}
