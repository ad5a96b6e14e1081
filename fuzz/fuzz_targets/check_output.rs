// Shared by the stream fuzz targets (c2s, c2s_all, s2s), which include it: the output checks.
/// Every stream the server opened parses: split at each XML declaration (the server writes one
/// at the start of every stream header and nowhere else — text and attributes are escaped).
fn check_output(out: &[u8]) {
    const DECL: &[u8] = b"<?xml";
    let mut starts: Vec<usize> = out
        .windows(DECL.len())
        .enumerate()
        .filter(|(_, w)| *w == DECL)
        .map(|(i, _)| i)
        .collect();
    assert!(
        out.is_empty() || starts.first() == Some(&0),
        "output before the first stream header: {:?}",
        String::from_utf8_lossy(&out[..out.len().min(200)])
    );
    starts.push(out.len());
    for w in starts.windows(2) {
        let stream = &out[w[0]..w[1]];
        let mut p = StreamParser::new(Limits {
            max_stanza_bytes: usize::MAX,
            max_depth: usize::MAX,
            max_elements: usize::MAX,
            max_attrs: usize::MAX,
        });
        let mut events = Vec::new();
        if let Err(e) = p.feed(stream, &mut events) {
            panic!(
                "the server wrote bad XML ({e}): {:?}",
                String::from_utf8_lossy(stream)
            );
        }
    }
}
