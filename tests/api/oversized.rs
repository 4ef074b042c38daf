//! Uploads over the byte limit from clients that send their whole body before they read
//! the answer (issue 15): Python's urllib and `requests`, curl with `Expect:` emptied (as Go,
//! Node and Java clients send no `100-continue`), and curl as it comes. Each must read the
//! 413 and its problem+json detail, not a reset or a broken pipe; the server reads and
//! throws the body away chunk by chunk (a lingering close), so its memory stays flat, and
//! it goes on answering good requests meanwhile.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::helpers;
use crate::helpers::{png, Server};
use serde_json::Value;

const MIB: usize = 1 << 20;
/// Just over the 20 MiB default limit, twice it, ten times it.
const SIZES: [usize; 3] = [21 * MIB, 40 * MIB, 200 * MIB];

/// Posts a multipart body whose `image` part is `size` zero bytes; prints what came back as
/// one JSON line: {"status", "content_type", "body"}, or {"error"} when no answer was read.
const PYTHON_CLIENT: &str = r#"
import json, sys, urllib.error, urllib.request
mode, url, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
try:
    if mode == "urllib":
        b = "oversized-upload"
        body = (f'--{b}\r\nContent-Disposition: form-data; name="image"; filename="big.png"\r\n'
                f'Content-Type: image/png\r\n\r\n').encode() + bytes(size) + f"\r\n--{b}--\r\n".encode()
        request = urllib.request.Request(url + "/explain", data=body,
            headers={"Content-Type": f"multipart/form-data; boundary={b}"})
        try:
            with urllib.request.urlopen(request, timeout=120) as r:
                status, headers, text = r.status, r.headers, r.read()
        except urllib.error.HTTPError as e:
            status, headers, text = e.code, e.headers, e.read()
    else:
        import requests
        r = requests.post(url + "/explain", files={"image": ("big.png", bytes(size), "image/png")},
                          timeout=120)
        status, headers, text = r.status_code, r.headers, r.content
    print(json.dumps({"status": status, "content_type": headers.get("Content-Type"),
                      "body": text.decode()}))
except Exception as e:
    print(json.dumps({"error": repr(e)}))
"#;

/// (status, Content-Type, body) from Python's `mode` ("urllib" or "requests").
fn python(mode: &str, url: &str, size: usize) -> (u16, String, String) {
    let out = Command::new("python3")
        .args(["-c", PYTHON_CLIENT, mode, url, &size.to_string()])
        .output()
        .expect("python3 runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let answer: Value = serde_json::from_str(text.trim())
        .unwrap_or_else(|_| panic!("{mode}: {text} {}", String::from_utf8_lossy(&out.stderr)));
    assert!(
        answer.get("error").is_none(),
        "{mode}, {size} bytes: no answer read: {answer}"
    );
    (
        answer["status"].as_u64().unwrap() as u16,
        answer["content_type"].as_str().unwrap_or("").to_string(),
        answer["body"].as_str().unwrap().to_string(),
    )
}

/// (status, Content-Type, body) from curl `-F image=@file`, with `Expect: 100-continue`
/// (curl's own choice for bodies over 1 MB) or with it emptied.
fn curl(url: &str, file: &std::path::Path, expect: bool) -> (u16, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("answer");
    let mut command = Command::new("curl");
    command.args(["-sS", "--max-time", "120", "-o"]).arg(&body);
    command.args(["-w", "%{http_code} %{content_type}"]);
    if !expect {
        command.args(["-H", "Expect:"]);
    }
    let out = command
        .arg("-F")
        .arg(format!("image=@{}", file.display()))
        .arg(format!("{url}/explain"))
        .output()
        .expect("curl runs");
    let written = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "curl (expect {expect}): {written} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, content_type) = written.split_once(' ').unwrap_or((&written, ""));
    (
        status.parse().unwrap_or(0),
        content_type.to_string(),
        std::fs::read_to_string(&body).unwrap_or_default(),
    )
}

fn python_has_requests() -> bool {
    Command::new("python3")
        .args(["-c", "import requests"])
        .status()
        .is_ok_and(|s| s.success())
}

/// A line of /proc/PID/status, in kB (VmRSS, VmHWM).
fn memory_kb(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
}

fn assert_413(who: &str, size: usize, (status, content_type, body): (u16, String, String)) {
    assert_eq!(status, 413, "{who}, {size} bytes: {body}");
    assert!(
        content_type.starts_with("application/problem+json"),
        "{who}, {size} bytes: {content_type}"
    );
    let problem: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(problem["status"], 413, "{who}: {problem}");
    assert_eq!(
        problem["type"], "urn:gradcam-serve:problem:payload-too-large",
        "{who}: {problem}"
    );
    assert!(
        problem["detail"].as_str().unwrap().contains("20971520"),
        "{who}: {problem}"
    );
}

#[test]
fn plain_clients_read_the_413_for_uploads_over_the_limit() {
    let server = Server::start(&[]);
    let pid = server.child.id();
    let good = || {
        let r = server.explain("?top_k=1", png(64, 48), "good.png");
        assert_eq!(r.status(), 200, "a good request meanwhile");
    };
    good();
    let rss_before = memory_kb(pid, "VmRSS");
    // Reset the peak (VmHWM) to now, so that it shows the peak during the uploads.
    let peak_reset = std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok();

    let with_requests = python_has_requests();
    if !with_requests {
        eprintln!(
            "SKIPPED the `requests` client: python3 cannot import requests (pip install requests)"
        );
    }
    let files = tempfile::tempdir().unwrap();
    let done = AtomicBool::new(false);
    let good_ones = std::thread::scope(|scope| {
        let clients = scope.spawn(|| {
            let mut table = Vec::new();
            for size in SIZES {
                // Sparse: no disk written, curl reads zeros.
                let file = files.path().join(format!("big-{size}.png"));
                std::fs::File::create(&file)
                    .unwrap()
                    .set_len(size as u64)
                    .unwrap();
                assert_413("urllib", size, python("urllib", &server.url, size));
                table.push(("python urllib", size));
                if with_requests {
                    assert_413("requests", size, python("requests", &server.url, size));
                    table.push(("python requests", size));
                }
                assert_413("curl -H 'Expect:'", size, curl(&server.url, &file, false));
                table.push(("curl -H 'Expect:'", size));
                assert_413("curl", size, curl(&server.url, &file, true));
                table.push(("curl (Expect: 100-continue)", size));
                std::fs::remove_file(&file).unwrap();
            }
            done.store(true, Ordering::SeqCst);
            table
        });
        // Good requests all along, each answered.
        let mut good_ones = 0;
        while !done.load(Ordering::SeqCst) {
            good();
            good_ones += 1;
        }
        for (who, size) in clients.join().unwrap() {
            eprintln!("{who:30} {:>4} MiB: 413 problem+json", size / MIB);
        }
        good_ones
    });
    good();

    let rss_after = memory_kb(pid, "VmRSS");
    let peak = memory_kb(pid, "VmHWM");
    eprintln!(
        "server VmRSS {} MB before, {} MB after; peak during the uploads {}; {good_ones} good \
         requests answered meanwhile",
        rss_before / 1024,
        rss_after / 1024,
        if peak_reset {
            format!("{} MB", peak / 1024)
        } else {
            "unknown (clear_refs refused)".into()
        }
    );
    // No upload was kept: 200 MiB of it would show many times over.
    assert!(
        rss_after < rss_before + 50 * 1024,
        "VmRSS {rss_before} kB before, {rss_after} kB after"
    );
    if peak_reset {
        assert!(
            peak < rss_before + 100 * 1024,
            "peak VmRSS {peak} kB during the uploads, {rss_before} kB before"
        );
    }
}

/// Reads one HTTP response (head and Content-Length body) without waiting for the close.
fn read_response(stream: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&got).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let length: usize = text[..end]
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().ok())?
                })
                .expect("a Content-Length");
            if got.len() >= end + 4 + length {
                return text;
            }
        }
        let n = stream.read(&mut buf).expect("the answer, not a reset");
        assert!(n > 0, "closed before a whole answer: {text}");
        got.extend_from_slice(&buf[..n]);
    }
}

fn upload_head(length: usize) -> String {
    format!(
        "POST /explain HTTP/1.1\r\nHost: t\r\nContent-Type: multipart/form-data; boundary=b\r\n\
         Content-Length: {length}\r\n\r\n--b\r\nContent-Disposition: form-data; name=\"image\"; \
         filename=\"a.png\"\r\n\r\n"
    )
}

#[test]
fn the_413_comes_at_once_and_the_connection_lingers_until_the_body_is_in() {
    let server = Server::start(&[]);
    let length = 40 * MIB;
    let head = upload_head(length);
    let mut stream = TcpStream::connect(server.url.trim_start_matches("http://")).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    let chunk = vec![0u8; MIB];
    stream.write_all(&chunk).unwrap();
    // The answer comes while the upload is under way ...
    let answer = read_response(&mut stream);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("application/problem+json"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    // ... the server goes on answering others while it reads this one's body ...
    let r = helpers::upload(&server.url, "?top_k=1", png(64, 48), "good.png").unwrap();
    assert_eq!(r.status(), 200);
    // ... takes all of it, then closes cleanly: an end of stream, not a reset.
    let mut sent = head.len() + chunk.len();
    while sent < head.len() + length {
        let n = chunk.len().min(head.len() + length - sent);
        stream
            .write_all(&chunk[..n])
            .expect("the server reads the whole body");
        sent += n;
    }
    let mut rest = Vec::new();
    stream
        .read_to_end(&mut rest)
        .expect("a clean close after the body");
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
}

#[test]
fn lingering_is_bounded_by_its_settings() {
    let server = Server::start(&["--linger-bytes", "31457280", "--linger-secs", "1"]);
    let address = server.url.trim_start_matches("http://").to_string();
    // Announced over linger_bytes (30 MiB): answered and closed at once, nothing read.
    let mut stream = TcpStream::connect(&address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    stream.write_all(upload_head(40 * MIB).as_bytes()).unwrap();
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .expect("the answer, then the close");
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    // Within linger_bytes, from a client that stops sending: closed after linger_secs.
    let mut stream = TcpStream::connect(&address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    stream.write_all(upload_head(25 * MIB).as_bytes()).unwrap();
    let answer = read_response(&mut stream);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    let mut rest = Vec::new();
    stream
        .read_to_end(&mut rest)
        .expect("closed when linger_secs ran out");
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    // Lingering off: the old way, answered and closed at once.
    drop(server);
    let server = Server::start(&["--linger-secs", "0"]);
    let mut stream = TcpStream::connect(server.url.trim_start_matches("http://")).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    stream.write_all(upload_head(25 * MIB).as_bytes()).unwrap();
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .expect("the answer, then the close");
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
}
