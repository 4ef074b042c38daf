//! KServe v1 and the Open Inference Protocol v2, black-box: answers equal `POST /explain`'s
//! for the same image and options, JSON and binary tensor data, each protocol's error shape
//! and status, and instances as jobs in the same queue (with the held explainer). Clients
//! nobody here wrote (tritonclient, the kserve SDK) drive them in scripts/protocol-test.sh.

use std::sync::atomic::Ordering;

use base64::Engine as _;
use serde_json::{json, Value};

use crate::helpers::held::App;
use crate::helpers::{client, encode, picture, png, Server};
use gradcam_serve::config::Config;
use gradcam_serve::explanation::Explanation;
use gradcam_serve::preprocess::{MEAN, STD};

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn post_json(url: &str, path: &str, body: &Value) -> (u16, Value) {
    let r = client()
        .post(format!("{url}{path}"))
        .json(body)
        .send()
        .expect("an answer");
    let status = r.status().as_u16();
    (status, r.json().expect("a JSON body"))
}

/// A refusal in the protocols' shape: `{"error": "..."}` and nothing else.
fn error_of(status: u16, body: &Value, want: u16, mentions: &str) {
    assert_eq!(status, want, "{body}");
    let message = body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error: {body}"));
    assert_eq!(body.as_object().unwrap().len(), 1, "{body}");
    assert!(
        message.contains(mentions),
        "`{message}` does not mention `{mentions}`"
    );
}

fn close(a: &[f32], b: &[f32], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
    let worst = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(worst <= 1e-5 * scale, "{what}: off by {worst}");
}

fn explain(server: &Server, query: &str, image: Vec<u8>) -> Explanation {
    let r = server.explain(query, image, "a.png");
    assert_eq!(r.status(), 200);
    r.json().unwrap()
}

#[test]
fn kserve_v1_predicts_and_explains_as_explain_does() {
    let server = Server::start(&[]);
    let url = &server.url;
    assert_eq!(
        server.get_json("/v1/models"),
        json!({"models": ["resnet50"]})
    );
    assert_eq!(
        server.get_json("/v1/models/resnet50"),
        json!({"name": "resnet50", "ready": true})
    );
    let image = png(300, 200);
    let reference = explain(&server, "?target=3&top_k=2", image.clone());

    // Every instance form, options as instance fields and as parameters.
    let body = json!({
        "instances": [
            {"image_bytes": {"b64": b64(&image)}, "top_k": 2},
            {"b64": b64(&image)},
            {"data": format!("data:image/png;base64,{}", b64(&image)), "top_k": 4},
            b64(&image),
        ],
        "parameters": {"top_k": 2}
    });
    let (status, answer) = post_json(url, "/v1/models/resnet50:predict", &body);
    assert_eq!(status, 200, "{answer}");
    let predictions = answer["predictions"].as_array().unwrap();
    assert_eq!(predictions.len(), 4);
    for (i, p) in predictions.iter().enumerate() {
        assert_eq!(p["class_index"], reference.prediction.class_index, "{i}");
        assert_eq!(p["label"], reference.prediction.label.as_str());
        let score = p["score"].as_f64().unwrap() as f32;
        close(&[score], &[reference.prediction.score], "score");
        let want = if i == 2 { 4 } else { 2 };
        assert_eq!(p["top_k"].as_array().unwrap().len(), want, "{p}");
    }

    let body =
        json!({"instances": [{"b64": b64(&image), "target": 3}], "parameters": {"top_k": 2}});
    let (status, answer) = post_json(url, "/v1/models/resnet50:explain", &body);
    assert_eq!(status, 200);
    let explanations = answer["explanations"].as_array().unwrap();
    let e: Explanation = serde_json::from_value(explanations[0].clone()).unwrap();
    assert_eq!(e.target, reference.target);
    assert_eq!(e.top_k.len(), 2);
    close(
        &e.saliency.data.concat(),
        &reference.saliency.data.concat(),
        "saliency",
    );
    assert_eq!(e.overlay_png.is_some(), reference.overlay_png.is_some());
}

/// The v2 request with `image` as BYTES in the binary extension: each element its 4-byte
/// length and bytes after the JSON.
fn binary_request(files: &[&[u8]], head: Value) -> (Vec<u8>, usize) {
    let mut data = Vec::new();
    for f in files {
        data.extend_from_slice(&(f.len() as u32).to_le_bytes());
        data.extend_from_slice(f);
    }
    let mut head = head;
    head["inputs"] = json!([{"name": "image", "datatype": "BYTES", "shape": [files.len()],
        "parameters": {"binary_data_size": data.len()}}]);
    let mut body = serde_json::to_vec(&head).unwrap();
    let length = body.len();
    body.extend_from_slice(&data);
    (body, length)
}

fn output<'a>(answer: &'a Value, name: &str) -> &'a Value {
    answer["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == name)
        .unwrap_or_else(|| panic!("no output {name}: {answer}"))
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

#[test]
fn open_inference_protocol_v2_answers_as_explain_does() {
    let server = Server::start(&[]);
    let url = &server.url;
    assert_eq!(server.get_json("/v2/health/live"), json!({"live": true}));
    assert_eq!(server.get_json("/v2/health/ready"), json!({"ready": true}));
    let meta = server.get_json("/v2/models/resnet50");
    assert_eq!(
        meta["inputs"][0],
        json!({"name": "image", "datatype": "BYTES", "shape": [-1]})
    );
    assert_eq!(meta["inputs"][1]["shape"], json!([-1, 3, 224, 224]));
    assert_eq!(meta["outputs"][0]["shape"], json!([-1, 1000]));
    assert_eq!(
        server.get_json("/v2/models/resnet50/versions/1")["name"],
        "resnet50"
    );
    assert!(server.get_json("/v2")["extensions"]
        .as_array()
        .unwrap()
        .contains(&json!("binary_tensor_data")));

    // A picture at the input's size: decoding it and normalising it ourselves agree.
    let rgb = picture(224, 224);
    let file = encode(&rgb, image::ImageFormat::Png);
    let reference = explain(&server, "?method=hirescam&top_k=1000", file.clone());
    let probabilities_of = |e: &Explanation| {
        let mut p = vec![0f32; 1000];
        e.top_k.iter().for_each(|c| p[c.class_index] = c.score);
        p
    };
    let want_p = probabilities_of(&reference);
    let want_map = reference.saliency.data.concat();

    // JSON data: base64 elements, two images, named outputs.
    let body = json!({
        "id": "one",
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [2],
                    "data": [b64(&file), b64(&file)]}],
        "outputs": [{"name": "saliency"}, {"name": "probabilities"}],
        "parameters": {"method": "hirescam"}
    });
    let (status, answer) = post_json(url, "/v2/models/resnet50/infer", &body);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["id"], "one");
    assert_eq!(answer["outputs"].as_array().unwrap().len(), 2);
    let map = output(&answer, "saliency");
    assert_eq!(map["shape"], json!([2, 7, 7]));
    let values = floats(&map["data"]);
    close(&values[..49], &want_map, "saliency (JSON) image 0");
    close(&values[49..], &want_map, "saliency (JSON) image 1");
    let p = output(&answer, "probabilities");
    assert_eq!(p["shape"], json!([2, 1000]));
    close(&floats(&p["data"])[..1000], &want_p, "probabilities (JSON)");

    // Binary data both ways, all outputs by default.
    let (body, length) = binary_request(
        &[&file],
        json!({"parameters": {"method": "hirescam", "binary_data_output": true}}),
    );
    let r = client()
        .post(format!("{url}/v2/models/resnet50/infer"))
        .header("Inference-Header-Content-Length", length.to_string())
        .header("Content-Type", "application/octet-stream")
        .body(body)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let json_length: usize = r.headers()["inference-header-content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let bytes = r.bytes().unwrap();
    let head: Value = serde_json::from_slice(&bytes[..json_length]).unwrap();
    let mut rest = &bytes[json_length..];
    let mut take = |name: &str| {
        let o = output(&head, name);
        assert!(o.get("data").is_none());
        let n = o["parameters"]["binary_data_size"].as_u64().unwrap() as usize;
        let (part, tail) = rest.split_at(n);
        rest = tail;
        part.to_vec()
    };
    let as_floats = |b: Vec<u8>| -> Vec<f32> {
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    close(
        &as_floats(take("probabilities")),
        &want_p,
        "probabilities (binary)",
    );
    close(&as_floats(take("saliency")), &want_map, "saliency (binary)");
    let overlay = take("overlay_png");
    assert!(rest.is_empty());
    let n = u32::from_le_bytes(overlay[..4].try_into().unwrap()) as usize;
    assert_eq!(n, overlay.len() - 4);
    let png = image::load_from_memory_with_format(&overlay[4..], image::ImageFormat::Png).unwrap();
    assert_eq!((png.width(), png.height()), (224, 224));

    // The model's input itself, normalised here: the same answer.
    let mut chw = vec![0f32; 3 * 224 * 224];
    for (i, px) in rgb.pixels().enumerate() {
        for c in 0..3 {
            chw[c * 224 * 224 + i] = (px[c] as f32 / 255.0 - MEAN[c]) / STD[c];
        }
    }
    let body = json!({
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, 224, 224], "data": chw}],
        "outputs": [{"name": "saliency"}, {"name": "probabilities"}, {"name": "overlay_png"}],
        "parameters": {"method": "hirescam"}
    });
    let (status, answer) = post_json(url, "/v2/models/resnet50/versions/1/infer", &body);
    assert_eq!(status, 200, "{answer}");
    close(
        &floats(&output(&answer, "saliency")["data"]),
        &want_map,
        "saliency (FP32 input)",
    );
    close(
        &floats(&output(&answer, "probabilities")["data"]),
        &want_p,
        "probabilities (FP32 input)",
    );
    let overlay = base64::engine::general_purpose::STANDARD
        .decode(output(&answer, "overlay_png")["data"][0].as_str().unwrap())
        .unwrap();
    assert!(image::load_from_memory_with_format(&overlay, image::ImageFormat::Png).is_ok());
}

#[test]
fn bad_requests_get_each_protocols_error_and_the_server_goes_on() {
    let server = Server::start(&["--max-upload-bytes", "65536"]);
    let url = &server.url;
    let image = png(64, 64);
    let not_an_image = b64(b"these bytes are no picture");
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        (
            "/v1/models/nope:predict",
            json!({"instances": [b64(&image)]}),
            404,
            "`nope`",
        ),
        (
            "/v1/models/resnet50:guess",
            json!({"instances": []}),
            404,
            ":predict",
        ),
        (
            "/v1/models/resnet50:predict",
            json!({"instances": []}),
            400,
            "no instances",
        ),
        (
            "/v1/models/resnet50:predict",
            json!({"inputs": []}),
            400,
            "instances",
        ),
        (
            "/v1/models/resnet50:predict",
            json!({"instances": [{"top_k": 2}]}),
            400,
            "no image",
        ),
        (
            "/v1/models/resnet50:predict",
            json!({"instances": [{"b64": "%%"}]}),
            400,
            "not base64",
        ),
        (
            "/v1/models/resnet50:predict",
            json!({"instances": [{"b64": not_an_image}]}),
            400,
            "not an image",
        ),
        (
            "/v1/models/resnet50:predict",
            json!({"instances": [{"b64": b64(&image), "target": 1000}]}),
            422,
            "target",
        ),
        (
            "/v1/models/resnet50:predict",
            json!({"instances": [{"b64": b64(&image), "colour": 1}]}),
            422,
            "colour",
        ),
        (
            "/v1/models/resnet50:explain",
            json!({"instances": [b64(&image)], "parameters": {"method": "magic"}}),
            422,
            "method",
        ),
        (
            "/v2/models/nope/infer",
            json!({"inputs": []}),
            404,
            "`nope`",
        ),
        (
            "/v2/models/resnet50/versions/2/infer",
            json!({"inputs": []}),
            404,
            "version",
        ),
        (
            "/v2/models/resnet50/infer",
            json!({"inputs": [{"name": "image", "datatype": "INT32", "shape": [1], "data": [1]}]}),
            400,
            "INT32",
        ),
        (
            "/v2/models/resnet50/infer",
            json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, 8, 8], "data": vec![0.0; 192]}]}),
            400,
            "[N, 3, 224, 224]",
        ),
        (
            "/v2/models/resnet50/infer",
            json!({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2], "data": [b64(&image)]}]}),
            400,
            "holds 2 values",
        ),
        (
            "/v2/models/resnet50/infer",
            json!({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [not_an_image]}]}),
            400,
            "not an image",
        ),
        (
            "/v2/models/resnet50/infer",
            json!({"inputs": [{"name": "pixels", "datatype": "BYTES", "shape": [1], "data": [b64(&image)]}]}),
            400,
            "`pixels`",
        ),
        (
            "/v2/models/resnet50/infer",
            json!({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [b64(&image)]}], "outputs": [{"name": "logits"}]}),
            400,
            "logits",
        ),
        (
            "/v2/models/resnet50/infer",
            json!({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [b64(&image)]}], "parameters": {"layer": "layer9"}}),
            422,
            "layer",
        ),
    ];
    for (path, body, status, mentions) in &cases {
        let (got, answer) = post_json(url, path, body);
        error_of(got, &answer, *status, mentions);
    }
    // Not JSON at all; a body over the limit (announced, and in a stream); a broken
    // binary header.
    let r = client()
        .post(format!("{url}/v2/models/resnet50/infer"))
        .body("{nope")
        .send()
        .unwrap();
    error_of(
        r.status().as_u16(),
        &r.json().unwrap(),
        400,
        "not an inference request",
    );
    let big = json!({"instances": [b64(&vec![7u8; 200_000])]});
    let (got, answer) = post_json(url, "/v1/models/resnet50:predict", &big);
    error_of(got, &answer, 413, "limit");
    let r = client()
        .post(format!("{url}/v2/models/resnet50/infer"))
        .header("Inference-Header-Content-Length", "999")
        .body("{}")
        .send()
        .unwrap();
    error_of(
        r.status().as_u16(),
        &r.json().unwrap(),
        400,
        "Inference-Header-Content-Length",
    );

    // And it still answers.
    let body = json!({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [b64(&image)]}], "outputs": [{"name": "probabilities"}]});
    let (status, answer) = post_json(url, "/v2/models/resnet50/infer", &body);
    assert_eq!(status, 200, "{answer}");
}

fn held(capacity: usize) -> (App, crate::helpers::held::Gate) {
    let mut config = Config::default();
    config.server.queue_capacity = capacity;
    config.server.max_batch = 4;
    config.server.model_name = Some("xray".into());
    App::start(config)
}

/// Several instances are several jobs: they take places in the queue, are batched as any
/// jobs are, and one request cannot hold more of them than the queue has places.
#[test]
fn instances_are_jobs_in_the_same_queue() {
    let (app, gate) = held(3);
    let url = app.url.clone();
    let image = b64(&png(64, 64));
    let (status, answer) = post_json(
        &url,
        "/v1/models/xray:predict",
        &json!({"instances": [image, image, image, image]}),
    );
    error_of(status, &answer, 400, "queue_capacity");
    let (status, answer) = post_json(
        &url,
        "/v1/models/resnet18:predict",
        &json!({"instances": [image]}),
    );
    error_of(status, &answer, 404, "`xray`");

    let body = json!({"instances": [image, image]});
    let sent = std::thread::spawn({
        let url = url.clone();
        move || post_json(&url, "/v1/models/xray:predict", &body)
    });
    // Both in the queue (one may already be in the explainer's hands).
    app.wait_for("two instances admitted", |s| s.workers.in_flight() == 2);
    // The queue has one place left: a v2 request for two images is refused at once, in
    // v2's shape, with Retry-After.
    let r = client()
        .post(format!("{url}/v2/models/xray/infer"))
        .json(&json!({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2], "data": [image, image]}]}))
        .send()
        .unwrap();
    assert_eq!(r.headers()["retry-after"], "1");
    error_of(r.status().as_u16(), &r.json().unwrap(), 503, "queue");
    let mut handed = 0;
    while handed < 2 {
        handed += gate.next_batch().len();
        gate.release();
    }
    let (status, answer) = sent.join().unwrap();
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["predictions"].as_array().unwrap().len(), 2);
    app.wait_for("the queue empty", |s| {
        s.workers.in_flight() == 0 && s.workers.stats.waiting.load(Ordering::SeqCst) == 0
    });
}

/// `GET /` is the page for a browser and KServe v1's liveness for a program (the kserve
/// SDK's `is_server_live`), with or without the page.
#[test]
fn the_root_is_kserve_liveness_for_programs() {
    let get = |url: &str, accept: &str| {
        let r = client()
            .get(format!("{url}/"))
            .header("accept", accept)
            .send()
            .unwrap();
        let status = r.status().as_u16();
        let kind = r.headers()["content-type"].to_str().unwrap().to_string();
        (status, kind, r.text().unwrap())
    };
    for ui in [true, false] {
        let mut config = Config::default();
        config.server.ui = ui;
        let (app, _gate) = App::start(config);
        let (status, kind, body) = get(&app.url, "application/json");
        assert_eq!(
            (status, kind.as_str()),
            (200, "application/json"),
            "ui {ui}"
        );
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap(),
            json!({"status": "alive"})
        );
        let (status, kind, _) = get(&app.url, "text/html,application/xhtml+xml,*/*;q=0.8");
        if ui {
            assert_eq!((status, kind.as_str()), (200, "text/html; charset=utf-8"));
        } else {
            assert_eq!((status, kind.as_str()), (404, "application/problem+json"));
        }
    }
}
