//! Downloads of checkpoints against a tiny HTTP server on 127.0.0.1 that each test runs on a
//! thread of its own: it serves a bounded number of connections and stops by itself.

use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use headclip::weights::{self, FetchOptions, WeightsError};

/// What the server sends back for one request.
struct Reply {
    status: u16,
    /// Content-Length header; `None` sends the body's real length.
    content_length: Option<usize>,
    body: Vec<u8>,
}

impl Reply {
    fn ok(body: &[u8]) -> Self {
        Reply {
            status: 200,
            content_length: None,
            body: body.to_vec(),
        }
    }
}

struct Server {
    base: String,
    hits: Arc<AtomicUsize>,
    paths: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Serves at most `max_connections`, for at most 20 s, then stops.
    fn start(max_connections: usize, reply: impl Fn(&str) -> Reply + Send + 'static) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let hits = Arc::new(AtomicUsize::new(0));
        let paths = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (h, p, s) = (hits.clone(), paths.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(20);
            while !s.load(Ordering::SeqCst)
                && h.load(Ordering::SeqCst) < max_connections
                && Instant::now() < deadline
            {
                match listener.accept() {
                    Ok((stream, _)) => {
                        h.fetch_add(1, Ordering::SeqCst);
                        if let Some(path) = answer(stream, &reply) {
                            p.lock().unwrap().push(path);
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Server {
            base,
            hits,
            paths,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads one request head, writes the reply, closes. Returns the requested path.
fn answer(stream: TcpStream, reply: &impl Fn(&str) -> Reply) -> Option<String> {
    stream.set_nonblocking(false).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream
        .set_write_timeout(Some(Duration::from_secs(5)))
        .ok()?;
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line).ok()?;
    let path = request_line.split_whitespace().nth(1)?.to_string();
    for _ in 0..100 {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
    }
    let r = reply(&path);
    let reason = if r.status == 200 { "OK" } else { "Not Found" };
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        r.status,
        reason,
        r.content_length.unwrap_or(r.body.len())
    );
    let mut stream = stream;
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(&r.body);
    let _ = stream.flush();
    let _ = stream.shutdown(Shutdown::Both);
    Some(path)
}

/// A few MiB of deterministic bytes, so the download takes several reads.
fn payload() -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    (0..3 * 1024 * 1024 + 17)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn sha(bytes: &[u8]) -> String {
    weights::sha256_reader(bytes).unwrap()
}

/// Names of everything in a folder (the cache must hold no leftovers after a failure).
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

/// A verified download and the folder where its checksum is remembered, nothing else.
fn verified_download(name: &str) -> Vec<String> {
    vec![name.to_string(), weights::SHA256_SUBDIR.to_string()]
}

/// A loopback port with nothing listening on it.
fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    port
}

#[test]
fn complete_download_is_cached_and_reused_without_network() {
    let body = payload();
    let expected = sha(&body);
    let served = body.clone();
    let server = Server::start(4, move |_| Reply::ok(&served));
    let cache = tempfile::tempdir().unwrap();

    let mut calls = 0usize;
    let mut last = (0u64, None);
    let path = weights::fetch_url(
        &server.url("/x/model.pt"),
        &expected,
        "model.pt",
        FetchOptions::new()
            .cache_dir(cache.path())
            .progress(|done, total| {
                calls += 1;
                last = (done, total);
            }),
    )
    .unwrap();
    assert_eq!(path, cache.path().join("model.pt"));
    assert_eq!(std::fs::read(&path).unwrap(), body);
    assert_eq!(listing(cache.path()), verified_download("model.pt"));
    assert!(calls >= 2, "progress called {calls} times");
    assert_eq!(last, (body.len() as u64, Some(body.len() as u64)));
    assert_eq!(server.hits(), 1);

    // Second call: served from the cache, the server is not asked.
    let again = weights::fetch_url(
        &server.url("/x/model.pt"),
        &expected,
        "model.pt",
        FetchOptions::new().cache_dir(cache.path()),
    )
    .unwrap();
    assert_eq!(again, path);
    assert_eq!(server.hits(), 1);

    // Even with nothing listening at the URL.
    let offline = format!("http://127.0.0.1:{}/x/model.pt", closed_port());
    let again = weights::fetch_url(
        &offline,
        &expected.to_uppercase(),
        "model.pt",
        FetchOptions::new().cache_dir(cache.path()),
    )
    .unwrap();
    assert_eq!(again, path);
}

#[test]
fn cached_file_with_wrong_checksum_is_downloaded_again() {
    let body = payload();
    let expected = sha(&body);
    let served = body.clone();
    let server = Server::start(2, move |_| Reply::ok(&served));
    let cache = tempfile::tempdir().unwrap();
    std::fs::write(cache.path().join("model.pt"), b"stale partial bytes").unwrap();

    let path = weights::fetch_url(
        &server.url("/model.pt"),
        &expected,
        "model.pt",
        FetchOptions::new().cache_dir(cache.path()),
    )
    .unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), body);
    assert_eq!(server.hits(), 1);
    assert_eq!(listing(cache.path()), verified_download("model.pt"));
}

#[test]
fn truncated_body_fails_and_leaves_nothing() {
    let body = payload();
    let expected = sha(&body);
    let half = body[..body.len() / 2].to_vec();
    let full_len = body.len();
    let server = Server::start(2, move |_| Reply {
        status: 200,
        content_length: Some(full_len),
        body: half.clone(),
    });
    let cache = tempfile::tempdir().unwrap();

    let err = weights::fetch_url(
        &server.url("/model.pt"),
        &expected,
        "model.pt",
        FetchOptions::new().cache_dir(cache.path()),
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, WeightsError::Incomplete { expected: Some(n), received, .. }
            if n == full_len as u64 && received < n),
        "{err:?}"
    );
    assert!(msg.contains(&full_len.to_string()), "{msg}");
    assert!(
        listing(cache.path()).is_empty(),
        "{:?}",
        listing(cache.path())
    );
}

#[test]
fn corrupted_body_fails_checksum_and_leaves_nothing() {
    let body = payload();
    let expected = sha(&body);
    let mut bad = body.clone();
    bad[1000] ^= 0xff;
    let actual = sha(&bad);
    let server = Server::start(2, move |_| Reply::ok(&bad));
    let cache = tempfile::tempdir().unwrap();

    let err = weights::fetch_url(
        &server.url("/model.pt"),
        &expected,
        "model.pt",
        FetchOptions::new().cache_dir(cache.path()),
    )
    .unwrap_err();
    assert!(
        matches!(err, WeightsError::ChecksumMismatch { .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains(&expected) && msg.contains(&actual), "{msg}");
    assert!(
        listing(cache.path()).is_empty(),
        "{:?}",
        listing(cache.path())
    );
}

#[test]
fn http_404_is_an_error() {
    let server = Server::start(2, |_| Reply {
        status: 404,
        content_length: None,
        body: b"no such file".to_vec(),
    });
    let cache = tempfile::tempdir().unwrap();
    let err = weights::fetch_url(
        &server.url("/missing.pt"),
        &sha(b"whatever"),
        "missing.pt",
        FetchOptions::new().cache_dir(cache.path()),
    )
    .unwrap_err();
    assert!(
        matches!(err, WeightsError::HttpStatus { status: 404, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("404"));
    assert!(listing(cache.path()).is_empty());
}

#[test]
fn connection_refused_fails_fast_and_says_how_to_pass_a_file() {
    let cache = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{}/clip/ViT-B-16.pt", closed_port());
    let start = Instant::now();
    let err = weights::fetch_url(
        &url,
        &sha(b"whatever"),
        "ViT-B-16.pt",
        FetchOptions::new().cache_dir(cache.path()),
    )
    .unwrap_err();
    let elapsed = start.elapsed();
    assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}");
    assert!(matches!(err, WeightsError::Unreachable { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("--weights"), "{msg}");
    assert!(msg.contains("HEADCLIP_WEIGHTS"), "{msg}");
    assert!(msg.contains(&url), "{msg}");
    assert!(listing(cache.path()).is_empty());
}

#[test]
fn fetch_by_name_uses_the_openai_layout_under_the_base_url() {
    let server = Server::start(2, |_| Reply::ok(b"not really a checkpoint"));
    let cache = tempfile::tempdir().unwrap();
    let err = weights::fetch(
        "ViT-B-16",
        FetchOptions::new()
            .base_url(server.url("/mirror/"))
            .cache_dir(cache.path()),
    )
    .unwrap_err();
    // The bytes are not the official ones, so the download is refused...
    assert!(
        matches!(err, WeightsError::ChecksumMismatch { .. }),
        "{err:?}"
    );
    assert!(listing(cache.path()).is_empty());
    // ...but it was asked for at <base>/<sha256>/<file name>.
    // The server records a request's path after answering it: wait for that.
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.paths.lock().unwrap().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let paths = server.paths.lock().unwrap().clone();
    assert_eq!(
        paths,
        vec![
            "/mirror/5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt"
                .to_string()
        ]
    );
}

#[test]
fn unknown_name_lists_valid_names() {
    let cache = tempfile::tempdir().unwrap();
    let err = weights::fetch("ViT-Z-99", FetchOptions::new().cache_dir(cache.path())).unwrap_err();
    assert!(matches!(err, WeightsError::UnknownName { .. }), "{err:?}");
    let msg = err.to_string();
    for name in ["ViT-L-14-336", "ViT-L-14", "ViT-B-16", "ViT-B-32"] {
        assert!(msg.contains(name), "{msg}");
    }
    assert!(weights::lookup("vit-b/16").is_ok());
}

#[test]
fn verify_official_rejects_a_wrong_file_with_an_official_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ViT-B-16.pt");
    std::fs::write(&path, b"half a download").unwrap();
    let err = weights::verify_official(&path).unwrap_err();
    assert!(matches!(err, WeightsError::Corrupt { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("corrupt or a partial download"), "{msg}");
    assert!(msg.contains("headclip weights fetch ViT-B-16"), "{msg}");
    assert!(
        msg.contains("5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f"),
        "{msg}"
    );
    assert!(msg.contains(&sha(b"half a download")), "{msg}");

    // Other names are not checked.
    let other = dir.path().join("my-finetuned-clip.safetensors");
    std::fs::write(&other, b"anything").unwrap();
    assert_eq!(weights::verify_official(&other).unwrap(), None);
}
