//! The command line's client of a running server: `troupe actors list`.
//!
//! It speaks the public API like any other client (the listing route,
//! with a bearer token when auth is on), so it needs no access to the
//! store and works against any instance, over HTTP or HTTPS.

use std::io::Write;
use std::time::Duration;

use anyhow::Context as _;
use serde::Deserialize;

/// Where the server is and how to reach it.
pub struct Target {
    /// `http://host:port` or `https://host:port`.
    pub url: String,
    /// A bearer token (API key or JWT) with `actors:send`.
    pub token: Option<String>,
    /// A PEM file of the certificate authority a private server's
    /// certificate is signed by, beside the system's roots.
    pub ca_file: Option<std::path::PathBuf>,
    pub timeout: Duration,
    /// Ids per request (1 to 1000).
    pub page_size: u32,
}

#[derive(Deserialize)]
struct Page {
    ids: Vec<String>,
    next: Option<String>,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    code: String,
    message: String,
}

impl Target {
    fn client(&self) -> anyhow::Result<reqwest::Client> {
        // One crypto library in the binary: rustls on aws-lc-rs. An error
        // means a provider is installed already, which is as good.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let mut builder = reqwest::Client::builder().timeout(self.timeout);
        if let Some(path) = &self.ca_file {
            let pem = std::fs::read(path)
                .with_context(|| format!("reading --ca-file {}", path.display()))?;
            let ca = reqwest::Certificate::from_pem(&pem)
                .with_context(|| format!("--ca-file {}", path.display()))?;
            builder = builder.add_root_certificate(ca);
        }
        builder.build().context("building the HTTP client")
    }

    /// Prints every id of `kind` starting with `prefix`, one per line, in
    /// ascending order, following the pages to the end.
    ///
    /// # Errors
    /// When the server cannot be reached or answers an error (its code and
    /// message are shown).
    pub async fn list_actors(
        &self,
        kind: &str,
        prefix: Option<&str>,
        out: &mut impl Write,
    ) -> anyhow::Result<u64> {
        if kind.is_empty() || !kind.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
            anyhow::bail!("--kind {kind:?}: a kind is lower-case letters (account, transfer)");
        }
        if self.token.is_some() && self.url.starts_with("http://") && !is_loopback(&self.url) {
            eprintln!("warning: sending the token over plain HTTP to {}", self.url);
        }
        let client = self.client()?;
        let url = format!("{}/v1/actors/{kind}", self.url.trim_end_matches('/'));
        let mut after: Option<String> = None;
        let mut listed = 0;
        let limit = self.page_size.to_string();
        loop {
            let mut query: Vec<(&str, &str)> = vec![("limit", &limit)];
            if let Some(prefix) = prefix {
                query.push(("prefix", prefix));
            }
            if let Some(after) = &after {
                query.push(("after", after));
            }
            let mut request = client.get(&url).query(&query);
            if let Some(token) = &self.token {
                request = request.bearer_auth(token);
            }
            let response = request.send().await.with_context(|| format!("GET {url}"))?;
            let status = response.status();
            if !status.is_success() {
                let text = response.text().await.unwrap_or_default();
                let why = serde_json::from_str::<ErrorBody>(&text)
                    .map(|b| format!("{}: {}", b.error.code, b.error.message))
                    .unwrap_or(text);
                anyhow::bail!("GET {url}: {status}: {why}");
            }
            let page: Page = response.json().await.context("reading a page")?;
            for id in &page.ids {
                writeln!(out, "{id}")?;
            }
            listed += page.ids.len() as u64;
            match page.next {
                // Ids ascend: a `next` that does not would page forever.
                Some(next) if after.as_ref().is_some_and(|a| next.as_str() <= a.as_str()) => {
                    anyhow::bail!("GET {url}: the server's next ({next}) does not advance");
                }
                Some(next) => after = Some(next),
                None => return Ok(listed),
            }
        }
    }
}
/// Whether `url`'s host is this machine.
fn is_loopback(url: &str) -> bool {
    let Ok(url) = reqwest::Url::parse(url) else {
        return false;
    };
    let host = url.host_str().unwrap_or_default().trim_matches(['[', ']']);
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}
