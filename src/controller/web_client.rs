//! `GET /`: the web client, one self-contained page, with a policy that
//! lets it load nothing from elsewhere and no other site frame it.

use std::sync::OnceLock;

use base64::Engine;
use poem::{handler, Response};
use sha2::{Digest, Sha256};

const PAGE: &str = include_str!("../../static/index.html");

#[handler]
pub fn page() -> Response {
    Response::builder()
        .content_type("text/html; charset=utf-8")
        .header("Content-Security-Policy", policy())
        .header("X-Frame-Options", "DENY")
        .header("Referrer-Policy", "no-referrer")
        .body(PAGE)
}

/// The page's Content-Security-Policy: its own inline scripts by hash (so
/// an injected script would not run), inline styles, images from its own
/// origin, `data:` and https, and connections (REST and WebSocket) to its
/// own origin only.
fn policy() -> &'static str {
    static POLICY: OnceLock<String> = OnceLock::new();
    POLICY.get_or_init(|| {
        let scripts: Vec<String> = inline_scripts(PAGE)
            .map(|s| {
                let digest = Sha256::digest(s.as_bytes());
                format!(
                    "'sha256-{}'",
                    base64::engine::general_purpose::STANDARD.encode(digest)
                )
            })
            .collect();
        format!(
            "default-src 'none'; script-src {}; style-src 'unsafe-inline'; \
             img-src 'self' data: https:; connect-src 'self'; base-uri 'none'; \
             form-action 'none'; frame-ancestors 'none'",
            if scripts.is_empty() {
                "'none'".to_string()
            } else {
                scripts.join(" ")
            }
        )
    })
}

/// The text of each `<script>` element without a `src`.
fn inline_scripts(html: &str) -> impl Iterator<Item = &str> {
    html.split("<script").skip(1).filter_map(|rest| {
        let (attrs, body) = rest.split_once('>')?;
        if attrs.contains("src=") {
            return None;
        }
        body.split_once("</script>").map(|(script, _)| script)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_inline_script_is_hashed() {
        let html = "<p><script>a()</script><script src=x></script><script type=module>b()</script>";
        let found: Vec<&str> = inline_scripts(html).collect();
        assert_eq!(found, ["a()", "b()"]);
        assert_eq!(
            inline_scripts(PAGE).count(),
            PAGE.matches("<script").count()
        );
        assert!(policy().contains("'sha256-"));
        assert!(policy().contains("frame-ancestors 'none'"));
    }
}
