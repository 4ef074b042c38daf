//! A real server process on a free port, and images to send it.
#![allow(dead_code)]

pub mod held;

use std::io::{BufRead, BufReader, Cursor};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use image::{ImageFormat, RgbImage};

pub const BIN: &str = env!("CARGO_BIN_EXE_gradcam-serve");

/// A `gradcam-serve serve` process with demo weights on 127.0.0.1:0; killed on drop.
pub struct Server {
    pub child: Child,
    pub url: String,
}

impl Server {
    /// With the demo weights (a seeded random ResNet-50).
    pub fn start(extra: &[&str]) -> Server {
        let mut args = vec!["--demo-weights"];
        args.extend_from_slice(extra);
        Self::start_with_weights(
            std::path::Path::new("/nonexistent/weights.safetensors"),
            &args,
        )
    }

    pub fn start_with_weights(weights: &std::path::Path, extra: &[&str]) -> Server {
        let mut child = Command::new(BIN)
            .args(["serve", "--bind", "127.0.0.1:0", "--weights"])
            .arg(weights)
            .args(extra)
            .env("GRADCAM_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("server starts");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
            .to_string();
        let server = Server { child, url };
        server.wait_ready();
        server
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(r) = client().get(format!("{}/ready", self.url)).send() {
                if r.status() == 200 {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("server not ready within 60 s");
    }

    pub fn explain(
        &self,
        query: &str,
        image: Vec<u8>,
        file_name: &str,
    ) -> reqwest::blocking::Response {
        upload(&self.url, query, image, file_name).expect("request completes")
    }

    /// `POST /explain{query}` with `image` and the option `fields` as form fields.
    pub fn explain_form(
        &self,
        query: &str,
        image: Vec<u8>,
        fields: &[(&str, &str)],
    ) -> reqwest::blocking::Response {
        let mut form = reqwest::blocking::multipart::Form::new().part(
            "image",
            reqwest::blocking::multipart::Part::bytes(image).file_name("a.png"),
        );
        for (name, value) in fields {
            form = form.text(name.to_string(), value.to_string());
        }
        client()
            .post(format!("{}/explain{query}", self.url))
            .multipart(form)
            .send()
            .expect("request completes")
    }

    /// `GET {path}` as JSON (an unprotected endpoint).
    pub fn get_json(&self, path: &str) -> serde_json::Value {
        client()
            .get(format!("{}{path}", self.url))
            .send()
            .and_then(|r| r.json())
            .expect("a JSON answer")
    }

    /// The Prometheus text of `/metrics` (unprotected).
    pub fn metrics(&self) -> String {
        client()
            .get(format!("{}/metrics", self.url))
            .send()
            .and_then(|r| r.text())
            .expect("metrics answer")
    }

    pub fn signal(&self, signal: &str) {
        Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `POST {url}/explain{query}` with `image` as the multipart part `image`. Needs only the
/// URL, so a test can send from another thread.
pub fn upload(
    url: &str,
    query: &str,
    image: Vec<u8>,
    file_name: &str,
) -> reqwest::Result<reqwest::blocking::Response> {
    let form = reqwest::blocking::multipart::Form::new().part(
        "image",
        reqwest::blocking::multipart::Part::bytes(image).file_name(file_name.to_string()),
    );
    client()
        .post(format!("{url}/explain{query}"))
        .multipart(form)
        .send()
}

pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

/// A picture with structure: colour gradients and a bright disc.
pub fn picture(width: u32, height: u32) -> RgbImage {
    RgbImage::from_fn(width, height, |x, y| {
        let (fx, fy) = (x as f32 / width as f32, y as f32 / height as f32);
        let disc = (fx - 0.6).powi(2) + (fy - 0.4).powi(2) < 0.03;
        if disc {
            image::Rgb([250, 220, 40])
        } else {
            image::Rgb([(fx * 200.0) as u8, (fy * 180.0) as u8, 90])
        }
    })
}

pub fn encode(image: &RgbImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    image.write_to(&mut out, format).unwrap();
    out.into_inner()
}

pub fn png(width: u32, height: u32) -> Vec<u8> {
    encode(&picture(width, height), ImageFormat::Png)
}

pub fn jpeg(width: u32, height: u32) -> Vec<u8> {
    encode(&picture(width, height), ImageFormat::Jpeg)
}

/// A PNG whose header claims `width` x `height` RGB pixels, with a few bytes of data: a
/// decompression bomb's shape, without the bomb.
pub fn png_claiming(width: u32, height: u32) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend((data.len() as u32).to_be_bytes());
        let start = out.len();
        out.extend(kind);
        out.extend(data);
        let crc = crc32(&out[start..]);
        out.extend(crc.to_be_bytes());
    }
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend(width.to_be_bytes());
    ihdr.extend(height.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(
        &mut out,
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    );
    chunk(&mut out, b"IEND", &[]);
    out
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Sends `head` then `body` over a plain TCP connection, ignoring write errors (the server
/// may answer and close before the body is through), and returns (status, response text).
pub fn raw_request(url: &str, head: &str, body: &[u8]) -> (u16, String) {
    let (status, text) = send_raw(url, &[head.as_bytes(), body].concat());
    assert_ne!(status, 0, "no HTTP status in {text:?}");
    (status, text)
}

/// Sends raw bytes and reads the answer until the server closes: (status or 0 when there is
/// none, response text).
pub fn send_raw(url: &str, request: &[u8]) -> (u16, String) {
    use std::io::{Read, Write};
    let address = url.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let _ = stream.write_all(request);
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// What a `gradcam-serve` command did: whether it succeeded, what it wrote.
pub struct Ran {
    pub ok: bool,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Ran {
    /// Its standard output as JSON (`explain --json`, `model`), after it succeeded.
    pub fn json(&self) -> serde_json::Value {
        assert!(self.ok, "the command failed: {}", self.stderr);
        serde_json::from_slice(&self.stdout).expect("JSON on standard output")
    }
}

/// Runs `gradcam-serve ARGS` to its end.
pub fn cli<S: AsRef<std::ffi::OsStr>>(args: impl IntoIterator<Item = S>) -> Ran {
    let out = Command::new(BIN).args(args).output().expect("the CLI runs");
    Ran {
        ok: out.status.success(),
        stdout: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}
