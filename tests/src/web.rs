//! A form-posting HTTP client for tests of the browser sign-in: it keeps cookies, never
//! follows redirects (the test reads each `Location`), and reads the forms of a page.

use std::{collections::BTreeMap, path::PathBuf};

use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode, body::Bytes, header};
use hyper_util::rt::TokioIo;

/// One answer.
#[derive(Debug)]
pub struct Page {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: hyper::HeaderMap,
    /// Body, as text.
    pub body: String,
}

impl Page {
    /// The `Location` header.
    pub fn location(&self) -> Option<&str> {
        self.headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Every `<input>` of the page with a name, in order: (name, value).
    pub fn inputs(&self) -> Vec<(String, String)> {
        let mut inputs = Vec::new();
        let mut rest = self.body.as_str();
        while let Some(start) = rest.find("<input") {
            let tag_end = rest[start..].find('>').map_or(rest.len(), |e| start + e);
            let tag = &rest[start..tag_end];
            if let Some(name) = attribute(tag, "name") {
                inputs.push((name, attribute(tag, "value").unwrap_or_default()));
            }
            rest = &rest[tag_end..];
        }
        inputs
    }

    /// The hidden inputs, which a browser posts back unchanged.
    pub fn hidden_inputs(&self) -> Vec<(String, String)> {
        let mut hidden = Vec::new();
        let mut rest = self.body.as_str();
        while let Some(start) = rest.find("<input") {
            let tag_end = rest[start..].find('>').map_or(rest.len(), |e| start + e);
            let tag = &rest[start..tag_end];
            if attribute(tag, "type").as_deref() == Some("hidden")
                && let Some(name) = attribute(tag, "name")
            {
                hidden.push((name, attribute(tag, "value").unwrap_or_default()));
            }
            rest = &rest[tag_end..];
        }
        hidden
    }
}

/// The value of `name="..."` in an HTML tag, unescaped.
fn attribute(tag: &str, name: &str) -> Option<String> {
    let needle = format!(" {name}=\"");
    let start = tag.find(&needle)? + needle.len();
    let end = tag[start..].find('"')? + start;
    Some(unescape(&tag[start..end]))
}

fn unescape(text: &str) -> String {
    text.replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&#x27;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// A browser without JavaScript: cookies, forms, no redirects followed; `https://` verified
/// against a CA file.
#[derive(Default)]
pub struct FormBrowser {
    cookies: BTreeMap<String, String>,
    ca_file: Option<PathBuf>,
}

impl FormBrowser {
    /// A browser trusting `ca_file` (PEM) for `https://`.
    pub fn trusting(ca_file: PathBuf) -> Self {
        Self {
            cookies: BTreeMap::new(),
            ca_file: Some(ca_file),
        }
    }

    /// GET `url`.
    pub async fn get(&mut self, url: &str) -> Page {
        self.send(Request::get(url), Bytes::new()).await
    }

    /// POST `fields` to `url` as a form.
    pub async fn post_form(&mut self, url: &str, fields: &[(String, String)]) -> Page {
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish();
        self.send(
            Request::post(url).header(header::CONTENT_TYPE, "application/x-www-form-urlencoded"),
            Bytes::from(body),
        )
        .await
    }

    /// Forgets every cookie (another browser, or the cookie expired).
    pub fn clear_cookies(&mut self) {
        self.cookies.clear();
    }

    async fn send(&mut self, builder: hyper::http::request::Builder, body: Bytes) -> Page {
        let mut builder = builder;
        if !self.cookies.is_empty() {
            let cookie = self
                .cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ");
            builder = builder.header(header::COOKIE, cookie);
        }
        let request = builder.body(body).expect("request");
        let response = send(request, self.ca_file.as_deref())
            .await
            .expect("HTTP request");
        let status = response.status();
        let headers = response.headers().clone();
        for set in headers.get_all(header::SET_COOKIE) {
            let text = set.to_str().expect("cookie text");
            let pair = text.split(';').next().unwrap_or_default();
            if let Some((name, value)) = pair.split_once('=') {
                let expired = text.to_ascii_lowercase().contains("max-age=0");
                if expired || value.is_empty() {
                    self.cookies.remove(name.trim());
                } else {
                    self.cookies
                        .insert(name.trim().to_owned(), value.to_owned());
                }
            }
        }
        Page {
            status,
            headers,
            body: String::from_utf8_lossy(response.body()).into_owned(),
        }
    }
}

/// Sends one request over a fresh HTTP/1.1 connection (TLS for `https://`, verified against
/// `ca_file`) and reads the whole answer.
pub async fn send(
    request: hyper::Request<Bytes>,
    ca_file: Option<&std::path::Path>,
) -> Result<hyper::Response<Vec<u8>>, String> {
    let uri = request.uri().clone();
    let host = uri.host().ok_or("no host")?.to_owned();
    let https = uri.scheme_str() == Some("https");
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp =
        tokio::net::TcpStream::connect((host.trim_start_matches('[').trim_end_matches(']'), port))
            .await
            .map_err(|e| format!("{uri}: {e}"))?;
    let (mut parts, body) = request.into_parts();
    let authority = uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .unwrap_or(host.clone());
    parts.headers.insert(
        header::HOST,
        authority.parse().map_err(|_| "bad authority")?,
    );
    // Origin-form on the wire.
    parts.uri = uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .parse()
        .map_err(|_| "bad path")?;
    let request = hyper::Request::from_parts(parts, Full::new(body));
    let response = if https {
        let tls = passage_gateway::tls::connector(ca_file)?
            .connect(passage_gateway::tls::server_name(&host)?, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?
    } else {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?
    };
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(hyper::Response::from_parts(parts, bytes.to_vec()))
}

/// The query parameters of a URL.
pub fn query(url: &str) -> BTreeMap<String, String> {
    let query = url.split_once('?').map_or("", |(_, q)| q);
    form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect()
}
