//! The docs, served to the demo's readers: `GET /docs/{name}` renders `docs/{name}.md` as a page with
//! GitHub-style heading anchors, so the comparison view can link a figure to the section that explains it
//! (`/docs/techniques#2-long-polling`) and a learner reads it offline, from the same server.
//!
//! The Markdown is embedded in the binary like the demo's files and rendered on each request (a few hundred
//! microseconds for the longest doc; nobody reads docs at a rate where caching would matter). Links between
//! docs (`protocol.md#errors`) are rewritten to their served form; images under `docs/screenshots/` are served
//! beside them.

use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use pulldown_cmark::{CowStr, Event, HeadingLevel, Options, Parser, Tag, TagEnd};
use rust_embed::Embed;

/// `docs/*.md` and the screenshots they show.
#[derive(Embed)]
#[folder = "docs/"]
#[include = "*.md"]
#[include = "screenshots/*.png"]
struct Docs;

/// `GET /docs/{*path}`: a rendered doc (`techniques` or `techniques.md`), or one of its images; `404` with a JSON
/// body for anything else.
pub async fn handler(Path(path): Path<String>) -> Response {
    if path.starts_with("screenshots/") {
        if let Some(file) = Docs::get(&path) {
            let mime = file.metadata.mimetype().to_owned();
            return ([(header::CONTENT_TYPE, mime), (header::CACHE_CONTROL, "no-cache".to_owned())], file.data)
                .into_response();
        }
    }
    let name = path.strip_suffix(".md").unwrap_or(&path);
    // Only plain names: the embedded set has no other folders of Markdown, and a name never climbs out.
    let known = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    match Docs::get(&format!("{name}.md")).filter(|_| known) {
        Some(file) => {
            let markdown = String::from_utf8_lossy(&file.data);
            let headers = [
                (header::CACHE_CONTROL, "no-cache"),
                (header::CONTENT_SECURITY_POLICY, super::assets::CONTENT_SECURITY_POLICY),
            ];
            (headers, Html(page(&markdown))).into_response()
        }
        None => (
            StatusCode::NOT_FOUND,
            axum::Json(serde_json::json!({"error": format!("no such doc: /docs/{path}"), "code": "not_found"})),
        )
            .into_response(),
    }
}

/// The whole HTML page of one doc: its Markdown rendered, inside the site's frame.
fn page(markdown: &str) -> String {
    let (body, title) = render(markdown);
    let title = title.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>{title} · chatlab</title>\n\
         <link rel=\"icon\" href=\"data:,\">\n<link rel=\"stylesheet\" href=\"/css/site.css\">\n\
         <link rel=\"stylesheet\" href=\"/css/docs.css\">\n</head>\n<body>\n\
         <nav class=\"doc-nav\" aria-label=\"chatlab\"><a href=\"/\">chatlab</a> <a href=\"/compare.html\">Compare</a> \
         <a href=\"/docs/techniques\">Techniques</a> <a href=\"/docs/protocol\">Protocol</a> \
         <a href=\"/docs/architecture\">Architecture</a> <a href=\"/docs/benchmarks\">Benchmarks</a> \
         <a href=\"/docs/deployment\">Deployment</a></nav>\n<main class=\"doc\">\n{body}</main>\n</body>\n</html>\n"
    )
}

/// Renders Markdown (GitHub's dialect as far as these docs use it: tables, strikethrough) to HTML, giving every
/// heading GitHub's anchor and pointing links between docs at their served form. Returns the HTML and the text of
/// the first heading.
fn render(markdown: &str) -> (String, String) {
    let options = Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH;
    let mut events: Vec<Event<'_>> = Parser::new_ext(markdown, options).collect();
    let mut title = String::new();
    let mut used = std::collections::HashMap::<String, usize>::new();
    let mut i = 0;
    while i < events.len() {
        match &events[i] {
            Event::Start(Tag::Heading { level, .. }) => {
                let level: HeadingLevel = *level;
                let mut text = String::new();
                for event in &events[i + 1..] {
                    match event {
                        Event::End(TagEnd::Heading(_)) => break,
                        Event::Text(t) | Event::Code(t) => text.push_str(t),
                        _ => {}
                    }
                }
                if title.is_empty() {
                    title.clone_from(&text);
                }
                let base = slug(&text);
                let seen = used.entry(base.clone()).or_insert(0);
                let id = if *seen == 0 { base } else { format!("{base}-{seen}") };
                *seen += 1;
                events[i] = Event::Start(Tag::Heading {
                    level,
                    id: Some(CowStr::from(id)),
                    classes: Vec::new(),
                    attrs: Vec::new(),
                });
            }
            Event::Start(Tag::Link { link_type, dest_url, title, id }) => {
                if let Some(served) = served_link(dest_url) {
                    events[i] = Event::Start(Tag::Link {
                        link_type: *link_type,
                        dest_url: CowStr::from(served),
                        title: title.clone(),
                        id: id.clone(),
                    });
                }
            }
            _ => {}
        }
        i += 1;
    }
    let mut html = String::with_capacity(markdown.len() * 3 / 2);
    pulldown_cmark::html::push_html(&mut html, events.into_iter());
    (html, title)
}

/// A heading's anchor as GitHub makes it: lower case, letters, digits, `-` and `_` kept, spaces to `-`,
/// everything else dropped (`## 1. Short (interval) polling` -> `1-short-interval-polling`).
fn slug(text: &str) -> String {
    text.trim()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .flat_map(char::to_lowercase)
        .collect()
}

/// Where a link between docs points once they are served: `protocol.md#errors` -> `/docs/protocol#errors`. Links to
/// anything else (the web, the source tree) stay as written.
fn served_link(dest: &str) -> Option<String> {
    if dest.contains("://") || dest.starts_with('#') || dest.starts_with('/') {
        return None;
    }
    let (file, fragment) = dest.split_once('#').map_or((dest, None), |(f, frag)| (f, Some(frag)));
    let name = file.strip_prefix("docs/").unwrap_or(file).strip_suffix(".md")?;
    if name.contains('/') || Docs::get(&format!("{name}.md")).is_none() {
        return None;
    }
    Some(match fragment {
        Some(fragment) => format!("/docs/{name}#{fragment}"),
        None => format!("/docs/{name}"),
    })
}

#[cfg(test)]
mod tests {
    use super::{render, served_link, slug};

    /// Anchors are GitHub's, so links written for the repository's rendering work here too.
    #[test]
    fn slugs_match_githubs() {
        assert_eq!(slug("1. Short (interval) polling"), "1-short-interval-polling");
        assert_eq!(slug("3. Server-Sent Events (SSE)"), "3-server-sent-events-sse");
        assert_eq!(slug("`GET /api/stats`, `GET /metrics`"), "get-apistats-get-metrics");
    }

    /// Repeated headings get `-1`, `-2` like on GitHub, and the first heading is the title.
    #[test]
    fn repeated_headings_are_numbered() {
        let (html, title) = render("# Top\n## Same\n## Same\n");
        assert_eq!(title, "Top");
        assert!(html.contains(r#"<h2 id="same">"#), "{html}");
        assert!(html.contains(r#"<h2 id="same-1">"#), "{html}");
    }

    /// Links between docs point at the served docs; others are left alone.
    #[test]
    fn links_between_docs_are_served() {
        assert_eq!(served_link("techniques.md#2-long-polling").as_deref(), Some("/docs/techniques#2-long-polling"));
        assert_eq!(served_link("docs/protocol.md").as_deref(), Some("/docs/protocol"));
        assert_eq!(served_link("https://example.com/a.md"), None);
        assert_eq!(served_link("../src/lib.rs"), None);
        assert_eq!(served_link("nosuchdoc.md"), None);
    }
}
