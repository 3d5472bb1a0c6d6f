//! The official OpenAI CLIP checkpoints: their names, file names and sha256 checksums, checking a
//! file on disk against them, and downloading them into a local cache.
//!
//! OpenAI publishes each checkpoint at `<base>/<sha256>/<file name>`, with base
//! [`OPENAI_BASE_URL`]. [`fetch`] downloads one by name into the cache folder (by default the
//! user's cache folder + `headclip`, i.e. `~/.cache/headclip` on Linux), streaming it into a
//! temporary file in that folder while hashing it, and renames it into place only once its size
//! and sha256 are right: a partial or corrupted download is deleted and never passes for a
//! complete one. A file already in the cache with the right checksum is returned without any
//! network access.
//!
//! Nothing here prints: progress goes through a callback in [`FetchOptions`].

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

/// Where OpenAI publishes the CLIP checkpoints: a file is at `<base>/<sha256>/<file name>`.
pub const OPENAI_BASE_URL: &str = "https://openaipublic.azureedge.net/clip/models";

/// Environment variable that overrides the base URL of downloads (a mirror).
pub const ENV_BASE_URL: &str = "HEADCLIP_WEIGHTS_BASE_URL";

/// Environment variable that overrides the cache folder.
pub const ENV_CACHE: &str = "HEADCLIP_CACHE";

/// Environment variable through which the command-line tool takes a checkpoint file directly,
/// like its `--weights PATH` option. Named in error messages; read by the CLI, not here.
pub const ENV_WEIGHTS: &str = "HEADCLIP_WEIGHTS";

/// Name of the folder inside the platform's user cache folder.
pub const CACHE_SUBDIR: &str = "headclip";

/// Default limit for resolving a host name and for opening a connection (each).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(8);

/// Default limit for any single read from the network (headers or a body chunk) to make
/// progress. The whole body has no time limit, so big files on slow links still arrive.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// One official OpenAI CLIP checkpoint (TorchScript archive, as `clip.load` downloads it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Official {
    /// headclip's name, usable on the command line and in file names: `ViT-B-16`.
    pub name: &'static str,
    /// The name OpenAI's `clip` package uses: `ViT-B/16`.
    pub openai_name: &'static str,
    /// The file name OpenAI publishes it under: `ViT-B-16.pt`.
    pub file_name: &'static str,
    /// sha256 of the file, lowercase hex.
    pub sha256: &'static str,
}

impl Official {
    /// The download URL under OpenAI's base URL.
    pub fn url(&self) -> String {
        self.url_with_base(OPENAI_BASE_URL)
    }

    /// The download URL under another base URL (a mirror laid out like OpenAI's).
    pub fn url_with_base(&self, base: &str) -> String {
        format!(
            "{}/{}/{}",
            base.trim_end_matches('/'),
            self.sha256,
            self.file_name
        )
    }
}

/// The catalogue of official checkpoints, the one HeadCLIP uses first.
pub const OFFICIAL: &[Official] = &[
    Official {
        name: "ViT-L-14-336",
        openai_name: "ViT-L/14@336px",
        file_name: "ViT-L-14-336px.pt",
        sha256: "3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02",
    },
    Official {
        name: "ViT-L-14",
        openai_name: "ViT-L/14",
        file_name: "ViT-L-14.pt",
        sha256: "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836",
    },
    Official {
        name: "ViT-B-16",
        openai_name: "ViT-B/16",
        file_name: "ViT-B-16.pt",
        sha256: "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f",
    },
    Official {
        name: "ViT-B-32",
        openai_name: "ViT-B/32",
        file_name: "ViT-B-32.pt",
        sha256: "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af",
    },
];

/// The official checkpoint with this headclip name (`ViT-B-16`), exactly.
pub fn official_by_name(name: &str) -> Option<&'static Official> {
    OFFICIAL.iter().find(|o| o.name == name)
}

/// The official checkpoint published under this file name (`ViT-B-16.pt`), exactly.
pub fn official_by_file_name(file_name: &str) -> Option<&'static Official> {
    OFFICIAL.iter().find(|o| o.file_name == file_name)
}

/// The official checkpoint whose file has this sha256 (hex, any case).
pub fn official_by_sha256(sha256: &str) -> Option<&'static Official> {
    OFFICIAL
        .iter()
        .find(|o| o.sha256.eq_ignore_ascii_case(sha256))
}

/// Finds an official checkpoint by any of its spellings, ignoring ASCII case: headclip's name
/// (`ViT-B-16`), the file name (`ViT-B-16.pt`) or OpenAI's name (`ViT-B/16`).
/// An unknown name is an error that lists the valid ones.
pub fn lookup(name: &str) -> Result<&'static Official, WeightsError> {
    let wanted = name.trim();
    OFFICIAL
        .iter()
        .find(|o| {
            o.name.eq_ignore_ascii_case(wanted)
                || o.file_name.eq_ignore_ascii_case(wanted)
                || o.openai_name.eq_ignore_ascii_case(wanted)
        })
        .ok_or_else(|| WeightsError::UnknownName {
            name: name.to_string(),
            valid: valid_names(),
        })
}

/// The valid names, comma-separated, for messages.
pub fn valid_names() -> String {
    OFFICIAL
        .iter()
        .map(|o| o.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Everything that can go wrong here. Messages are meant for a person at a terminal.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WeightsError {
    /// A name that is not in the catalogue.
    #[error("unknown CLIP checkpoint {name:?}; valid names: {valid}")]
    UnknownName { name: String, valid: String },

    /// An argument that cannot be used (a malformed checksum, a file name with a folder in it).
    #[error("{0}")]
    InvalidArgument(String),

    /// Reading or writing a local file failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// No cache folder was given and the platform has no user cache folder.
    #[error(
        "no user cache folder is known on this platform; pass a cache folder (--cache DIR) \
         or set the {ENV_CACHE} environment variable"
    )]
    NoCacheDir,

    /// A file with an official name whose content is not the official one.
    #[error(
        "{} is named like the official {name} checkpoint but its sha256 is {actual}, \
         not {expected} ({size} bytes on disk): the file is corrupt or a partial download. \
         Delete it and fetch it again with `headclip weights fetch {name}`, \
         or download it from {url}",
        path.display()
    )]
    Corrupt {
        path: PathBuf,
        name: &'static str,
        expected: String,
        actual: String,
        size: u64,
        url: String,
    },

    /// The server could not be reached or did not answer (offline, DNS failure, connection
    /// refused, timeout, TLS failure).
    #[error(
        "could not download {url}: {reason}. Without network access, pass the checkpoint file \
         itself with `--weights PATH` or the {ENV_WEIGHTS} environment variable; \
         the file can be downloaded from {url}"
    )]
    Unreachable { url: String, reason: String },

    /// The server answered with an HTTP status other than 200.
    #[error(
        "could not download {url}: the server answered HTTP {status}. Check the name and the \
         base URL ({ENV_BASE_URL}), or pass the checkpoint file itself with `--weights PATH` \
         or the {ENV_WEIGHTS} environment variable"
    )]
    HttpStatus { url: String, status: u16 },

    /// The transfer stopped before the whole file arrived. Nothing was kept.
    #[error(
        "incomplete download of {url}: received {received} of {} bytes{}; \
         the partial file was deleted, try again",
        expected.map_or_else(|| "an unknown number of".to_string(), |n| n.to_string()),
        reason.as_ref().map_or_else(String::new, |r| format!(" ({r})"))
    )]
    Incomplete {
        url: String,
        expected: Option<u64>,
        received: u64,
        reason: Option<String>,
    },

    /// The whole file arrived but its checksum is wrong. Nothing was kept.
    #[error(
        "corrupted download of {url}: sha256 is {actual}, expected {expected} \
         ({size} bytes received); the file was deleted, try again"
    )]
    ChecksumMismatch {
        url: String,
        expected: String,
        actual: String,
        size: u64,
    },
}

impl WeightsError {
    fn io(what: &'static str, path: &Path, source: io::Error) -> Self {
        WeightsError::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The sha256 of a file, lowercase hex, read in a stream (big files are not held in memory).
pub fn sha256_file(path: &Path) -> Result<String, WeightsError> {
    let file = File::open(path).map_err(|e| WeightsError::io("cannot open", path, e))?;
    sha256_reader(file).map_err(|e| WeightsError::io("cannot read", path, e))
}

/// The sha256 of everything a reader yields, lowercase hex.
pub fn sha256_reader(mut reader: impl Read) -> io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// The sha256 of a file, computed once per version of the file (see [`remembered_fact`]):
/// reading a 1.7 GB checkpoint to hash it takes seconds; a model load should not.
pub fn sha256_file_cached(path: &Path, cache: Option<&Path>) -> Result<String, WeightsError> {
    if let Some(known) = remembered_fact(path, SHA256_SUBDIR, cache) {
        return Ok(known);
    }
    let identity = FileIdentity::of(path)?;
    let sha = sha256_file(path)?;
    identity.remember(SHA256_SUBDIR, cache, &sha);
    Ok(sha)
}

/// A fact about one version of a file (its checksum, a check it passed) remembered in the cache
/// folder (`<cache>/<fact>/`, see [`cache_dir`]) under the file's canonical path, size,
/// modification and change times, device and inode: `None` when not remembered or when any of
/// these differs (a file rewritten, replaced, touched or moved). A cache that cannot be read or
/// written only costs the work again.
pub fn remembered_fact(path: &Path, fact: &str, cache: Option<&Path>) -> Option<String> {
    let identity = FileIdentity::of(path).ok()?;
    let entry: FactEntry =
        serde_json::from_slice(&fs::read(identity.entry(fact, cache)?).ok()?).ok()?;
    (entry.file == identity).then_some(entry.value)
}

/// Remembers `value` for the file as it is now (see [`remembered_fact`]). Nothing is kept for a
/// file modified in the last two seconds: a write in the same tick of the file system's clock
/// could still change its bytes without changing its times.
pub fn remember_fact(path: &Path, fact: &str, cache: Option<&Path>, value: &str) {
    if let Ok(identity) = FileIdentity::of(path) {
        identity.remember(fact, cache, value);
    }
}

/// Folder of [`sha256_file_cached`]'s entries inside the cache folder.
pub const SHA256_SUBDIR: &str = "sha256";

/// What tells one version of a file from another without reading it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct FileIdentity {
    path: PathBuf,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    device: u64,
    inode: u64,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct FactEntry {
    file: FileIdentity,
    value: String,
}

impl FileIdentity {
    fn of(path: &Path) -> Result<Self, WeightsError> {
        use std::os::unix::fs::MetadataExt;
        let path = fs::canonicalize(path).map_err(|e| WeightsError::io("cannot open", path, e))?;
        let meta = fs::metadata(&path).map_err(|e| WeightsError::io("cannot open", &path, e))?;
        let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
        Ok(Self {
            size: meta.len(),
            mtime_ns: ns(meta.mtime(), meta.mtime_nsec()),
            ctime_ns: ns(meta.ctime(), meta.ctime_nsec()),
            device: meta.dev(),
            inode: meta.ino(),
            path,
        })
    }

    /// Modified in the last two seconds (see [`remember_fact`]).
    fn racy(&self) -> bool {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        now - self.mtime_ns < 2_000_000_000
    }

    /// One entry per path and fact: a new version of the file overwrites the old one's entry.
    fn entry(&self, fact: &str, cache: Option<&Path>) -> Option<PathBuf> {
        let digest = Sha256::digest(self.path.as_os_str().as_encoded_bytes());
        let dir = cache_dir(cache).ok()?.join(fact);
        Some(dir.join(format!("{}.json", &hex(&digest)[..32])))
    }

    fn remember(&self, fact: &str, cache: Option<&Path>, value: &str) {
        if !self.racy() {
            self.remember_written(fact, cache, value);
        }
    }

    /// Remembers even a fresh file: for bytes this process wrote and checked itself.
    fn remember_written(&self, fact: &str, cache: Option<&Path>, value: &str) {
        let Some(entry) = self.entry(fact, cache) else {
            return;
        };
        let record = FactEntry {
            file: self.clone(),
            value: value.to_string(),
        };
        let written = entry
            .parent()
            .map_or(Ok(()), fs::create_dir_all)
            .and_then(|_| serde_json::to_vec(&record).map_err(io::Error::other))
            .and_then(|bytes| crate::write_atomically(&entry, &bytes));
        if let Err(e) = written {
            tracing::debug!("cannot remember {fact} of {}: {e}", self.path.display());
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    use fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Checks a checkpoint file against the catalogue by its file name. A file named like an
/// official checkpoint (`ViT-B-16.pt`) must have that checkpoint's sha256, else it is an error
/// ([`WeightsError::Corrupt`]) that says how to fetch it again; then the entry is returned.
/// A file with any other name is not checked (other names and formats are allowed): `Ok(None)`.
pub fn verify_official(path: &Path) -> Result<Option<&'static Official>, WeightsError> {
    let Some(official) = official_for_path(path) else {
        return Ok(None);
    };
    let actual = sha256_file_cached(path, None)?;
    check_official_sha256(path, &actual).map(|_| Some(official))
}

/// Like [`verify_official`] with the sha256 of `path` already known, so that a caller who also
/// shows the checksum reads the file once.
pub fn check_official_sha256(
    path: &Path,
    actual_sha256: &str,
) -> Result<Option<&'static Official>, WeightsError> {
    let Some(official) = official_for_path(path) else {
        return Ok(None);
    };
    if official.sha256.eq_ignore_ascii_case(actual_sha256) {
        return Ok(Some(official));
    }
    let size = fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    Err(WeightsError::Corrupt {
        path: path.to_path_buf(),
        name: official.name,
        expected: official.sha256.to_string(),
        actual: actual_sha256.to_ascii_lowercase(),
        size,
        url: official.url(),
    })
}

fn official_for_path(path: &Path) -> Option<&'static Official> {
    path.file_name()
        .and_then(|n| n.to_str())
        .and_then(official_by_file_name)
}

fn non_empty_env(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.trim().is_empty())
}

/// The cache folder: `explicit` if given, else `$HEADCLIP_CACHE`, else the platform's user
/// cache folder + `headclip` (`~/.cache/headclip` on Linux). Not created here.
pub fn cache_dir(explicit: Option<&Path>) -> Result<PathBuf, WeightsError> {
    if let Some(dir) = explicit {
        return Ok(dir.to_path_buf());
    }
    if let Some(dir) = non_empty_env(ENV_CACHE) {
        return Ok(PathBuf::from(dir));
    }
    dirs::cache_dir()
        .map(|d| d.join(CACHE_SUBDIR))
        .ok_or(WeightsError::NoCacheDir)
}

/// The base URL of downloads: `explicit` if given, else `$HEADCLIP_WEIGHTS_BASE_URL`, else
/// [`OPENAI_BASE_URL`]; without a trailing slash.
pub fn base_url(explicit: Option<&str>) -> String {
    let base = explicit
        .map(str::to_string)
        .or_else(|| non_empty_env(ENV_BASE_URL))
        .unwrap_or_else(|| OPENAI_BASE_URL.to_string());
    base.trim().trim_end_matches('/').to_string()
}

/// Where an official checkpoint is (or would be) in the cache folder. Says nothing about
/// whether the file is there or complete.
pub fn cache_path(official: &Official, cache: Option<&Path>) -> Result<PathBuf, WeightsError> {
    Ok(cache_dir(cache)?.join(official.file_name))
}

/// Progress callback: bytes received so far, and the total when the server said it.
pub type ProgressFn<'a> = Box<dyn FnMut(u64, Option<u64>) + 'a>;

/// Options of [`fetch`] and [`fetch_url`]. `FetchOptions::default()` uses the environment
/// variables and defaults described on each setter.
pub struct FetchOptions<'a> {
    base_url: Option<String>,
    cache_dir: Option<PathBuf>,
    progress: Option<ProgressFn<'a>>,
    connect_timeout: Duration,
    read_timeout: Duration,
}

impl Default for FetchOptions<'_> {
    fn default() -> Self {
        FetchOptions {
            base_url: None,
            cache_dir: None,
            progress: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            read_timeout: DEFAULT_READ_TIMEOUT,
        }
    }
}

impl fmt::Debug for FetchOptions<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FetchOptions")
            .field("base_url", &self.base_url)
            .field("cache_dir", &self.cache_dir)
            .field("progress", &self.progress.is_some())
            .field("connect_timeout", &self.connect_timeout)
            .field("read_timeout", &self.read_timeout)
            .finish()
    }
}

impl<'a> FetchOptions<'a> {
    /// Same as `default()`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Base URL to download from instead of `$HEADCLIP_WEIGHTS_BASE_URL` or OpenAI's
    /// ([`fetch`] only; [`fetch_url`] takes a whole URL).
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.base_url = Some(url.into());
        self
    }

    /// Cache folder instead of `$HEADCLIP_CACHE` or the platform's default (see [`cache_dir`]).
    pub fn cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cache_dir = Some(dir.into());
        self
    }

    /// Called as bytes arrive with (received so far, total if known). Not called when the
    /// file is already in the cache.
    pub fn progress(mut self, f: impl FnMut(u64, Option<u64>) + 'a) -> Self {
        self.progress = Some(Box::new(f));
        self
    }

    /// Limit for resolving the host and for opening the connection, each
    /// (default [`DEFAULT_CONNECT_TIMEOUT`]).
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }

    /// Limit for any single read to make progress (default [`DEFAULT_READ_TIMEOUT`]); the
    /// whole transfer has no limit.
    pub fn read_timeout(mut self, t: Duration) -> Self {
        self.read_timeout = t;
        self
    }
}

/// Makes an official checkpoint available locally and returns its path in the cache folder.
///
/// `name` is any spelling [`lookup`] accepts. If the cache already holds the file with the
/// right sha256 it is returned without network access; otherwise it is downloaded from
/// `<base>/<sha256>/<file name>` as [`fetch_url`] does (a cached file with a wrong checksum is
/// replaced).
pub fn fetch(name: &str, options: FetchOptions<'_>) -> Result<PathBuf, WeightsError> {
    let official = lookup(name)?;
    let url = official.url_with_base(&base_url(options.base_url.as_deref()));
    fetch_url(&url, official.sha256, official.file_name, options)
}

/// Downloads `url` into the cache folder as `file_name`, requiring the given sha256, and
/// returns the path; a cached `file_name` with that sha256 is returned without network access.
///
/// The body streams into a temporary file in the cache folder while being hashed; only when
/// its size matches `Content-Length` (when sent) and its sha256 matches is it renamed to
/// `file_name`, atomically. On any failure the temporary file is deleted and the error names
/// the expected and actual size or checksum. The connection has short timeouts (see
/// [`FetchOptions::connect_timeout`]), so an offline machine fails within seconds with a
/// message naming `--weights PATH` / `HEADCLIP_WEIGHTS` and the URL.
pub fn fetch_url(
    url: &str,
    sha256: &str,
    file_name: &str,
    mut options: FetchOptions<'_>,
) -> Result<PathBuf, WeightsError> {
    let expected = sha256.trim().to_ascii_lowercase();
    if expected.len() != 64 || !expected.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(WeightsError::InvalidArgument(format!(
            "expected sha256 {sha256:?} is not 64 hexadecimal digits"
        )));
    }
    if file_name.is_empty()
        || file_name == "."
        || file_name == ".."
        || file_name.contains(['/', '\\'])
        || Path::new(file_name).file_name() != Some(file_name.as_ref())
    {
        return Err(WeightsError::InvalidArgument(format!(
            "cache file name {file_name:?} must be a plain file name"
        )));
    }

    let dir = cache_dir(options.cache_dir.as_deref())?;
    let target = dir.join(file_name);

    if target.is_file() {
        let actual = sha256_file_cached(&target, Some(&dir))?;
        if actual == expected {
            return Ok(target);
        }
        tracing::warn!(
            path = %target.display(),
            expected = %expected,
            actual = %actual,
            "cached file has the wrong sha256; downloading it again"
        );
    }

    fs::create_dir_all(&dir).map_err(|e| WeightsError::io("cannot create folder", &dir, e))?;
    let mut part = tempfile::Builder::new()
        .prefix(&format!(".{file_name}."))
        .suffix(".part")
        .tempfile_in(&dir)
        .map_err(|e| WeightsError::io("cannot create a temporary file in", &dir, e))?;

    // `part` is deleted when dropped, so every early return below leaves nothing behind.
    let part_path = part.path().to_path_buf();
    let (received, actual) = download_into(url, part.as_file_mut(), &part_path, &mut options)?;

    if actual != expected {
        return Err(WeightsError::ChecksumMismatch {
            url: url.to_string(),
            expected,
            actual,
            size: received,
        });
    }
    part.as_file()
        .sync_all()
        .map_err(|e| WeightsError::io("cannot write", part.path(), e))?;
    part.persist(&target)
        .map_err(|e| WeightsError::io("cannot move the download to", &target, e.error))?;
    // Verified while downloading: later loads need not read the file again to hash it (the
    // bytes were hashed as written, so a fresh modification time is no reason to doubt them).
    if let Ok(identity) = FileIdentity::of(&target) {
        identity.remember_written(SHA256_SUBDIR, Some(&dir), &actual);
    }
    Ok(target)
}

fn is_loopback_url(url: &str) -> bool {
    url.parse::<ureq::http::Uri>()
        .ok()
        .and_then(|u| u.host().map(str::to_string))
        .is_some_and(|h| {
            let h = h.trim_start_matches('[').trim_end_matches(']');
            h.eq_ignore_ascii_case("localhost")
                || h.parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        })
}

/// Streams the body of `url` into `out`; returns (bytes received, sha256). Checks the length
/// against Content-Length, not the checksum.
fn download_into(
    url: &str,
    out: &mut File,
    out_path: &Path,
    options: &mut FetchOptions<'_>,
) -> Result<(u64, String), WeightsError> {
    let mut config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .user_agent(concat!("headclip/", env!("CARGO_PKG_VERSION")))
        .timeout_resolve(Some(options.connect_timeout))
        .timeout_connect(Some(options.connect_timeout))
        .timeout_recv_response(Some(options.read_timeout))
        .timeout_per_read(Some(options.read_timeout));
    if is_loopback_url(url) {
        // A proxy from the environment cannot reach this machine's own loopback address.
        config = config.proxy(None);
    }
    let agent: ureq::Agent = config.build().into();

    let unreachable = |reason: String| WeightsError::Unreachable {
        url: url.to_string(),
        reason,
    };
    let response = agent
        .get(url)
        .call()
        .map_err(|e| unreachable(describe_ureq_error(&e)))?;
    let status = response.status().as_u16();
    if status != 200 {
        return Err(WeightsError::HttpStatus {
            url: url.to_string(),
            status,
        });
    }
    let total = response
        .headers()
        .get(ureq::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());

    let mut reader = response.into_body().into_reader();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut received: u64 = 0;
    if let Some(progress) = options.progress.as_mut() {
        progress(0, total);
    }
    let incomplete = |received: u64, reason: Option<String>| WeightsError::Incomplete {
        url: url.to_string(),
        expected: total,
        received,
        reason,
    };
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(incomplete(received, Some(e.to_string()))),
        };
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])
            .map_err(|e| WeightsError::io("cannot write", out_path, e))?;
        received += n as u64;
        if let Some(progress) = options.progress.as_mut() {
            progress(received, total);
        }
    }
    if total.is_some_and(|t| t != received) {
        return Err(incomplete(received, None));
    }
    out.flush()
        .map_err(|e| WeightsError::io("cannot write", out_path, e))?;
    Ok((received, hex(&hasher.finalize())))
}

fn describe_ureq_error(e: &ureq::Error) -> String {
    match e {
        ureq::Error::HostNotFound => "host not found (no network or DNS failure)".to_string(),
        ureq::Error::ConnectionFailed => "connection failed".to_string(),
        ureq::Error::Timeout(t) => format!("timed out ({t})"),
        ureq::Error::Io(io) if io.kind() == io::ErrorKind::ConnectionRefused => {
            "connection refused".to_string()
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogue_is_consistent() {
        for o in OFFICIAL {
            assert_eq!(o.sha256.len(), 64);
            assert!(o
                .sha256
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
            assert!(o.file_name.ends_with(".pt"));
            assert_eq!(lookup(o.name).unwrap(), o);
            assert_eq!(lookup(o.file_name).unwrap(), o);
            assert_eq!(lookup(o.openai_name).unwrap(), o);
            assert_eq!(official_by_sha256(o.sha256).unwrap(), o);
        }
        assert_eq!(
            official_by_name("ViT-B-16").unwrap().url(),
            "https://openaipublic.azureedge.net/clip/models/\
             5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt"
        );
        assert_eq!(
            lookup("vit-l/14@336PX").unwrap().file_name,
            "ViT-L-14-336px.pt"
        );
    }

    #[test]
    fn base_url_trims_slash() {
        assert_eq!(base_url(Some("http://x/y/")), "http://x/y");
        let o = official_by_name("ViT-B-32").unwrap();
        assert_eq!(
            o.url_with_base("http://m/"),
            format!("http://m/{}/ViT-B-32.pt", o.sha256)
        );
    }

    #[test]
    fn loopback_detection() {
        assert!(is_loopback_url("http://127.0.0.1:8080/a"));
        assert!(is_loopback_url("http://localhost/a"));
        assert!(is_loopback_url("http://[::1]:80/a"));
        assert!(!is_loopback_url(OPENAI_BASE_URL));
    }
}
