//! The bad-input corpus: whatever arrives, the server answers with the right status and a
//! problem+json body, keeps its model work for live clients, and still answers a good
//! request correctly afterwards.

use std::io::{Cursor, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::helpers;
use crate::helpers::{jpeg, png, png_claiming, send_raw, Server};
use gradcam_serve::explanation::Explanation;
use image::{DynamicImage, ImageFormat, RgbImage};

fn encode(image: DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    image.write_to(&mut out, format).unwrap();
    out.into_inner()
}

fn animated_gif() -> Vec<u8> {
    let mut bytes = Vec::new();
    {
        let mut encoder = image::codecs::gif::GifEncoder::new(&mut bytes);
        let frames = [[255, 0, 0], [0, 255, 0], [0, 0, 255]].map(|c| {
            image::Frame::new(
                DynamicImage::ImageRgb8(RgbImage::from_pixel(48, 32, image::Rgb(c))).to_rgba8(),
            )
        });
        encoder.encode_frames(frames).unwrap();
    }
    bytes
}

fn jpeg_with_broken_exif() -> Vec<u8> {
    let plain = jpeg(64, 48);
    let segment = b"Exif\0\0MM\0\x2a\xff\xff\xff\xffgarbage";
    let mut out = plain[..2].to_vec();
    out.extend([0xFF, 0xE1]);
    out.extend(((segment.len() + 2) as u16).to_be_bytes());
    out.extend(segment);
    out.extend(&plain[2..]);
    out
}

fn zero_sized_bmp() -> Vec<u8> {
    let mut bmp = encode(
        DynamicImage::ImageRgb8(RgbImage::new(1, 1)),
        ImageFormat::Bmp,
    );
    bmp[18..26].fill(0);
    bmp
}

/// (what, bytes, file name, query, expected status)
fn upload_corpus() -> Vec<(&'static str, Vec<u8>, &'static str, &'static str, u16)> {
    let rgb = helpers::picture(96, 64);
    let truncated = |mut b: Vec<u8>| {
        b.truncate(b.len() / 2);
        b
    };
    let noise: Vec<u8> = (0..20_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    vec![
        ("empty file", vec![], "empty.jpg", "", 400),
        (
            "text file",
            b"Dear diary, today I uploaded a text file.".to_vec(),
            "notes.txt",
            "",
            400,
        ),
        ("random bytes named .jpg", noise, "photo.jpg", "", 400),
        (
            "truncated JPEG",
            truncated(jpeg(96, 64)),
            "cut.jpg",
            "",
            400,
        ),
        ("truncated PNG", truncated(png(96, 64)), "cut.png", "", 400),
        ("0x0 image (BMP)", zero_sized_bmp(), "zero.bmp", "", 400),
        (
            "PNG claiming 100000x100000 pixels",
            png_claiming(100_000, 100_000),
            "bomb.png",
            "",
            413,
        ),
        ("1x1 PNG", png(1, 1), "dot.png", "", 200),
        (
            "animated GIF (first frame)",
            animated_gif(),
            "anim.gif",
            "",
            200,
        ),
        (
            "16-bit PNG",
            encode(
                DynamicImage::ImageRgb16(DynamicImage::ImageRgb8(rgb.clone()).to_rgb16()),
                ImageFormat::Png,
            ),
            "deep.png",
            "",
            200,
        ),
        (
            "grey+alpha PNG",
            encode(
                DynamicImage::ImageLumaA8(DynamicImage::ImageRgb8(rgb.clone()).to_luma_alpha8()),
                ImageFormat::Png,
            ),
            "ga.png",
            "",
            200,
        ),
        (
            "CMYK JPEG",
            std::fs::read(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/cmyk.jpg"
            ))
            .unwrap(),
            "cmyk.jpg",
            "",
            200,
        ),
        (
            "JPEG with a broken EXIF block",
            jpeg_with_broken_exif(),
            "exif.jpg",
            "",
            200,
        ),
        (
            "WebP",
            encode(DynamicImage::ImageRgb8(rgb.clone()), ImageFormat::WebP),
            "x.webp",
            "",
            200,
        ),
        ("target=-1", png(32, 32), "a.png", "?target=-1", 422),
        ("target=1000", png(32, 32), "a.png", "?target=1000", 422),
        ("target=abc", png(32, 32), "a.png", "?target=abc", 422),
        ("top_k=0", png(32, 32), "a.png", "?top_k=0", 422),
        ("alpha=2", png(32, 32), "a.png", "?alpha=2", 422),
        ("alpha=-0.1", png(32, 32), "a.png", "?alpha=-0.1", 422),
        ("top_k=1e3", png(32, 32), "a.png", "?top_k=1e3", 422),
    ]
}

fn multipart_head(length: usize, boundary: &str) -> String {
    format!(
        "POST /explain HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {length}\r\n\r\n"
    )
}

fn metric(server: &Server, name: &str) -> f64 {
    server
        .metrics()
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no metric {name}"))
}

#[test]
fn every_bad_input_gets_its_status_and_the_server_stays_correct() {
    let server = Server::start(&[
        "--max-upload-bytes",
        "2000000",
        "--request-timeout-secs",
        "5",
    ]);
    let reference: Explanation = server
        .explain("?target=3", png(120, 90), "good.png")
        .json()
        .unwrap();

    let mut table = Vec::new();
    for (what, bytes, name, query, expected) in upload_corpus() {
        let r = server.explain(query, bytes, name);
        let status = r.status().as_u16();
        let kind = r
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string());
        let body = r.text().unwrap();
        assert_eq!(status, expected, "{what}: {body}");
        if status != 200 {
            assert_eq!(kind.as_deref(), Some("application/problem+json"), "{what}");
            let problem: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert!(!problem["detail"].as_str().unwrap().is_empty(), "{what}");
        }
        table.push((what.to_string(), status));
    }

    // Bodies that are not a single well-formed upload.
    let b = "BoUnDaRy";
    let part = |name: &str, content: &[u8]| {
        let mut p = format!(
            "--{b}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"x.png\"\r\n\r\n"
        )
        .into_bytes();
        p.extend(content);
        p.extend(b"\r\n");
        p
    };
    let finish = |mut body: Vec<u8>| {
        body.extend(format!("--{b}--\r\n").as_bytes());
        body
    };
    let cases: Vec<(&str, Vec<u8>, &str, u16)> = vec![
        ("empty body", vec![], "multipart/form-data", 400),
        (
            "multipart without an image part",
            finish(part("picture", &png(8, 8))),
            "multipart/form-data",
            400,
        ),
        (
            "two image parts",
            finish([part("image", &png(8, 8)), part("image", &png(8, 8))].concat()),
            "multipart/form-data",
            400,
        ),
        (
            "multipart with no closing boundary",
            part("image", &png(8, 8)),
            "multipart/form-data",
            400,
        ),
        (
            "JSON body",
            br#"{"image": "aGVsbG8="}"#.to_vec(),
            "application/json",
            415,
        ),
        ("raw PNG body", png(8, 8), "image/png", 415),
    ];
    for (what, body, content_type, expected) in cases {
        let content_type = if content_type.starts_with("multipart") {
            format!("{content_type}; boundary={b}")
        } else {
            content_type.to_string()
        };
        let head = format!(
            "POST /explain HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let (status, text) = send_raw(&server.url, &[head.as_bytes(), &body].concat());
        assert_eq!(status, expected, "{what}: {text}");
        assert!(text.contains("application/problem+json"), "{what}: {text}");
        table.push((what.to_string(), status));
    }

    // Over the byte limit: answered 413 at once, and the body read and thrown away after
    // it (a lingering close), so that a client that sends it all still reads the answer.
    let mut request = multipart_head(3_000_000, b).into_bytes();
    request.resize(request.len() + 3_000_000, b'x');
    let (status, _) = send_raw(&server.url, &request);
    assert_eq!(status, 413);
    table.push((
        "body over the limit (Content-Length 3 MB, limit 2 MB)".into(),
        status,
    ));

    // A client that uploads too slowly: 408 when the timeout (5 s) passes.
    let started = Instant::now();
    let address = server.url.trim_start_matches("http://").to_string();
    let mut slow = TcpStream::connect(&address).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    slow.write_all(multipart_head(100_000, b).as_bytes())
        .unwrap();
    slow.write_all(&part("image", &[0u8; 100])).unwrap();
    let mut response = String::new();
    let _ = slow.read_to_string(&mut response);
    let waited = started.elapsed();
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert!(
        waited >= Duration::from_secs(4) && waited < Duration::from_secs(15),
        "{waited:?}"
    );
    table.push(("upload slower than the request timeout".into(), 408));

    // A client that disconnects mid-upload.
    let mut gone = TcpStream::connect(&address).unwrap();
    gone.write_all(multipart_head(500_000, b).as_bytes())
        .unwrap();
    gone.write_all(&part("image", &png(50, 50))[..200]).unwrap();
    drop(gone);

    // After all of it, a good request gets the same answer as before.
    let again: Explanation = server
        .explain("?target=3", png(120, 90), "good.png")
        .json()
        .unwrap();
    assert_eq!(again.saliency, reference.saliency);
    assert_eq!(again.top_k, reference.top_k);
    assert_eq!(again.overlay_png, reference.overlay_png);
    assert_eq!(metric(&server, "gradcam_worker_panics_total"), 0.0);

    eprintln!("\n| input | status |\n| --- | --- |");
    for (what, status) in &table {
        eprintln!("| {what} | {status} |");
    }
}
