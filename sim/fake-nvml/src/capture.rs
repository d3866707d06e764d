//! A small tag extractor for the `nvidia-smi -q -x` captures in `captures/`
//! (no XML crate): enough to read the values the profiles rely on, so tests
//! can compare what the fake library and the agent say with the real board.

/// The directory holding the captures.
pub const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/captures");

/// The text of a capture (`qx-gb300.xml`).
pub fn read(name: &str) -> std::io::Result<String> {
    std::fs::read_to_string(format!("{DIR}/{name}"))
}

/// The text of the first `<tag>…</tag>` in `xml`, trimmed.
pub fn tag<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = start + xml[start..].find(&close)?;
    Some(xml[start..end].trim())
}

/// Nested tags, `a/b/c`.
pub fn path<'a>(xml: &'a str, p: &str) -> Option<&'a str> {
    p.split('/').try_fold(xml, tag)
}

/// Every `<gpu id="…">…</gpu>` block, in file order.
pub fn gpus(xml: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find("<gpu id=\"") {
        let block = &rest[i..];
        let Some(end) = block.find("</gpu>") else {
            break;
        };
        out.push(&block[..end]);
        rest = &block[end..];
    }
    out
}

/// A number with its unit stripped: `"180.36 W"` with `"W"` → 180.36,
/// `"-2 C"` with `"C"` → -2, `"16x"` with `"x"` → 16.
pub fn number(text: &str, unit: &str) -> Option<f64> {
    text.strip_suffix(unit)?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extracts_nested_tags_and_numbers() {
        let xml = "<a><gpu id=\"1\"><p><w>180.36 W</w></p></gpu><gpu id=\"2\"><p><w>-2 C</w></p></gpu></a>";
        let g = gpus(xml);
        assert_eq!(g.len(), 2);
        assert_eq!(path(g[0], "p/w").and_then(|t| number(t, "W")), Some(180.36));
        assert_eq!(path(g[1], "p/w").and_then(|t| number(t, "C")), Some(-2.0));
        assert_eq!(path(g[1], "p/x"), None);
        assert_eq!(number("N/A", "W"), None);
    }
}
