//! A small HTTP/1.1 client for the admin API and the demo's self-check
//! (one request per connection, `Connection: close`, the answer read to
//! its end, bounded).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The largest answer read (1 MiB).
const MAX_ANSWER: u64 = 1 << 20;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL is not `http://host:port[/...]`.
    #[error("{0}: expected http://HOST:PORT")]
    Url(String),
    /// Connecting, writing or reading failed.
    #[error("{url}: {source}")]
    Io {
        /// The server.
        url: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// No answer in time.
    #[error("{url}: no answer within {timeout:?}")]
    Timeout {
        /// The server.
        url: String,
        /// The limit.
        timeout: Duration,
    },
    /// The answer is not HTTP.
    #[error("{url}: not an HTTP answer: {why}")]
    Answer {
        /// The server.
        url: String,
        /// What was wrong.
        why: String,
    },
}

/// `host:port` of `http://host:port[/...]` (or of a bare `host:port`).
pub fn authority(url: &str) -> Result<String, ClientError> {
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() || !host.contains(':') || url.starts_with("https://") {
        return Err(ClientError::Url(url.to_owned()));
    }
    Ok(host.to_owned())
}

/// Sends `method path` with an optional JSON `body` (and bearer `token`)
/// to the server at `url`; answers the status and the body.
pub async fn request(
    url: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    token: Option<&str>,
    timeout: Duration,
) -> Result<(u16, String), ClientError> {
    let host = authority(url)?;
    let io = |source| ClientError::Io {
        url: url.to_owned(),
        source,
    };
    let work = async {
        let mut stream = tokio::net::TcpStream::connect(&host).await.map_err(io)?;
        let body = body.unwrap_or("");
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        if !body.is_empty() {
            head.push_str("Content-Type: application/json\r\n");
        }
        if let Some(t) = token {
            head.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).await.map_err(io)?;
        stream.write_all(body.as_bytes()).await.map_err(io)?;
        let mut raw = Vec::new();
        stream
            .take(MAX_ANSWER)
            .read_to_end(&mut raw)
            .await
            .map_err(io)?;
        parse(url, &raw)
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(ClientError::Timeout {
            url: url.to_owned(),
            timeout,
        }),
    }
}

fn parse(url: &str, raw: &[u8]) -> Result<(u16, String), ClientError> {
    let bad = |why: &str| ClientError::Answer {
        url: url.to_owned(),
        why: why.to_owned(),
    };
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let head = std::str::from_utf8(&raw[..split]).map_err(|_| bad("headers not UTF-8"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| bad("no status"))?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let mut body = raw[split + 4..].to_vec();
    if chunked {
        body = dechunk(&body).ok_or_else(|| bad("bad chunked body"))?;
    }
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line = b.windows(2).position(|w| w == b"\r\n")?;
        let size = std::str::from_utf8(&b[..line]).ok()?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        b = &b[line + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}
