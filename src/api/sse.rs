//! Server-sent events: an incremental parser for upstream streams (`\n`, `\r\n` and `\r` line
//! ends, comments, multi-line `data:`, events split across reads) and the encoder for what we
//! send downstream. The parser keeps only the unfinished tail of the input, so a stream is
//! forwarded event by event as it arrives. One event — its unfinished line, its `data:` lines
//! so far, its `event:` name and comment — is capped as a whole, so an upstream that never ends
//! an event (many `data:` lines and no blank line) cannot grow memory past the cap.

/// One parsed SSE item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseItem {
    /// A dispatched event: its `event:` name, if any, and its `data:` lines joined with `\n`.
    Event { event: Option<String>, data: String },
    /// A comment block (`: keep-alive`), forwarded so idle clients stay connected.
    Comment(String),
}

/// Why a stream could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    /// One event (multi-line `data:` included) or one unfinished line is over the cap.
    #[error("upstream sent an SSE event larger than {0} bytes")]
    EventTooLarge(usize),
    #[error("upstream sent an SSE line that is not UTF-8")]
    NotUtf8,
}

/// Incremental SSE parser.
#[derive(Debug)]
pub struct SseParser {
    buf: Vec<u8>,
    data: Option<String>,
    event: Option<String>,
    comment: Option<String>,
    max_event: usize,
}

/// Default cap on one event: 8 MiB, far above any chat chunk (a tool call's arguments arrive
/// in many small deltas), small enough that 1 000 broken upstreams cannot exhaust memory.
pub const DEFAULT_MAX_EVENT: usize = 8 * 1024 * 1024;

impl Default for SseParser {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_EVENT)
    }
}

impl SseParser {
    /// A parser refusing any event (with all its lines so far, and any unfinished line) over
    /// `max_event` bytes: protects memory from a broken upstream.
    pub fn new(max_event: usize) -> Self {
        SseParser { buf: Vec::new(), data: None, event: None, comment: None, max_event }
    }

    /// Bytes held for the event being assembled.
    fn pending(&self) -> usize {
        let len = |s: &Option<String>| s.as_ref().map_or(0, String::len);
        self.buf.len() + len(&self.data) + len(&self.event) + len(&self.comment)
    }

    /// Feeds bytes; complete items are appended to `out` in order.
    ///
    /// What one call holds beyond the cap is at most `chunk.len()`: the check runs once per
    /// call, after the complete lines are consumed.
    ///
    /// # Errors
    /// An event over the cap, or a line that is not UTF-8.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<SseItem>) -> Result<(), SseError> {
        // The lines are read from the buffer while the event state changes: taken out of
        // `self` for the loop, so no line is copied into a string of its own first.
        let mut buf = std::mem::take(&mut self.buf);
        buf.extend_from_slice(chunk);
        let result = self.lines(&buf, out);
        if let Ok(start) = result {
            buf.drain(..start);
        }
        self.buf = buf;
        result?;
        if self.pending() > self.max_event {
            return Err(SseError::EventTooLarge(self.max_event));
        }
        Ok(())
    }

    /// Handles every complete line of `buf`; returns where the unfinished rest starts.
    fn lines(&mut self, buf: &[u8], out: &mut Vec<SseItem>) -> Result<usize, SseError> {
        let mut start = 0;
        while let Some(rel) = memchr::memchr2(b'\n', b'\r', &buf[start..]) {
            let end = start + rel;
            let next = if buf[end] == b'\r' {
                match buf.get(end + 1) {
                    Some(b'\n') => end + 2,
                    Some(_) => end + 1,
                    // A lone '\r' at the end may be the first half of "\r\n": wait for more.
                    None => break,
                }
            } else {
                end + 1
            };
            let line = std::str::from_utf8(&buf[start..end]).map_err(|_| SseError::NotUtf8)?;
            self.line(line, out);
            start = next;
        }
        Ok(start)
    }

    /// Ends the input: a trailing lone `\r` counts as a line end (it cannot start a `\r\n`
    /// any more), and an event completed by it is dispatched.
    pub fn finish(&mut self, out: &mut Vec<SseItem>) {
        if self.buf.last() == Some(&b'\r') {
            let line = String::from_utf8_lossy(&self.buf[..self.buf.len() - 1]).into_owned();
            self.buf.clear();
            self.line(&line, out);
        }
    }

    /// True when the input ended in the middle of an event (no blank line after it).
    pub fn has_partial(&self) -> bool {
        !self.buf.is_empty() || self.data.is_some()
    }

    fn line(&mut self, line: &str, out: &mut Vec<SseItem>) {
        if line.is_empty() {
            if let Some(data) = self.data.take() {
                out.push(SseItem::Event { event: self.event.take(), data });
            } else if let Some(c) = self.comment.take() {
                out.push(SseItem::Comment(c));
            }
            self.event = None;
            self.comment = None;
            return;
        }
        if let Some(c) = line.strip_prefix(':') {
            self.comment = Some(c.to_string());
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => match &mut self.data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => self.data = Some(value.to_string()),
            },
            "event" => self.event = Some(value.to_string()),
            _ => {} // id, retry and unknown fields carry nothing we forward
        }
    }
}

/// Encodes one item for the client with `\n` framing; multi-line data becomes several
/// `data:` lines so the client rejoins exactly what the upstream sent. Every SSE line end in
/// the data (`\n`, `\r\n`, a lone `\r`, which data joule builds from raw JSON can hold as
/// whitespace) starts a new `data:` line: written as one line, the client would end the
/// field there and read the rest as a field of its own.
pub fn encode(item: &SseItem) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(item, &mut out);
    out
}

/// [`encode`], appended to `out` (several events written to the client at once).
pub fn encode_into(item: &SseItem, out: &mut Vec<u8>) {
    match item {
        SseItem::Event { event, data } => encode_event_into(event.as_deref(), data, out),
        SseItem::Comment(c) => {
            out.reserve(c.len() + 3);
            out.push(b':');
            out.extend_from_slice(c.as_bytes());
            out.extend_from_slice(b"\n\n");
        }
    }
}

/// One event (its `event:` name, if any, and its data) encoded as [`encode`] does, appended
/// to `out`.
pub fn encode_event_into(event: Option<&str>, data: &str, out: &mut Vec<u8>) {
    // Sized once for the usual single-line event (grown only for multi-line data).
    out.reserve(event.map_or(0, |e| e.len() + 8) + data.len() + 8);
    if let Some(e) = event {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(e.as_bytes());
        out.push(b'\n');
    }
    for line in data.split('\n') {
        for part in line.strip_suffix('\r').unwrap_or(line).split('\r') {
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(part.as_bytes());
            out.push(b'\n');
        }
    }
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(chunks: &[&[u8]]) -> Vec<SseItem> {
        let mut p = SseParser::default();
        let mut out = Vec::new();
        for c in chunks {
            p.feed(c, &mut out).unwrap();
        }
        p.finish(&mut out);
        out
    }

    fn ev(data: &str) -> SseItem {
        SseItem::Event { event: None, data: data.into() }
    }

    #[test]
    fn lf_crlf_and_cr_framing() {
        assert_eq!(parse_all(&[b"data: a\n\ndata: b\n\n"]), vec![ev("a"), ev("b")]);
        assert_eq!(parse_all(&[b"data: a\r\n\r\ndata: b\r\n\r\n"]), vec![ev("a"), ev("b")]);
        assert_eq!(parse_all(&[b"data: a\r\rdata: b\r\r"]), vec![ev("a"), ev("b")]);
    }

    #[test]
    fn split_anywhere_including_between_cr_and_lf() {
        let whole = b"data: {\"x\":1}\r\n\r\n: ping\r\n\r\ndata: [DONE]\r\n\r\n";
        let expected = parse_all(&[whole]);
        assert_eq!(expected, vec![ev("{\"x\":1}"), SseItem::Comment(" ping".into()), ev("[DONE]")]);
        for cut in 0..whole.len() {
            assert_eq!(parse_all(&[&whole[..cut], &whole[cut..]]), expected, "cut at {cut}");
        }
        let bytes: Vec<&[u8]> = whole.chunks(1).collect();
        assert_eq!(parse_all(&bytes), expected);
    }

    #[test]
    fn multiline_data_and_fields() {
        let out = parse_all(&[b"event: x\nid: 7\ndata: {\"a\":\ndata: 1}\n\n"]);
        assert_eq!(out, vec![SseItem::Event { event: Some("x".into()), data: "{\"a\":\n1}".into() }]);
        assert_eq!(encode(&out[0]), b"event: x\ndata: {\"a\":\ndata: 1}\n\n".to_vec());
        assert_eq!(parse_all(&[&encode(&out[0])]), out);
        // Data built from raw JSON may hold any SSE line end as whitespace: each starts a new
        // `data:` line, so the client gets one event whose data is the JSON (ends as `\n`).
        let built = SseItem::Event { event: Some("e".into()), data: "{\"a\":\r\r1,\r\n\"b\":\n2}".into() };
        let bytes = encode(&built);
        assert_eq!(bytes, b"event: e\ndata: {\"a\":\ndata: \ndata: 1,\ndata: \"b\":\ndata: 2}\n\n".to_vec());
        let back = parse_all(&[&bytes]);
        assert_eq!(back.len(), 1);
        let SseItem::Event { data, .. } = &back[0] else { panic!("{back:?}") };
        assert_eq!(serde_json::from_str::<serde_json::Value>(data).unwrap(), serde_json::json!({"a": 1, "b": 2}));
    }

    #[test]
    fn partial_and_limits() {
        let mut p = SseParser::new(16);
        let mut out = Vec::new();
        p.feed(b"data: abc", &mut out).unwrap();
        assert!(out.is_empty() && p.has_partial());
        assert_eq!(p.feed(&[b'x'; 32], &mut out), Err(SseError::EventTooLarge(16)));
        let mut p = SseParser::default();
        assert_eq!(p.feed(b"data: \xff\n\n", &mut out), Err(SseError::NotUtf8));
    }

    #[test]
    fn an_event_of_many_short_lines_is_capped_like_one_long_line() {
        let mut p = SseParser::new(64);
        let mut out = Vec::new();
        // Each line is short; the event never ends.
        let mut fed = 0;
        let err = loop {
            match p.feed(b"data: 0123456789\n", &mut out) {
                Ok(()) => fed += 1,
                Err(e) => break e,
            }
            assert!(fed < 100, "the cap never fired");
        };
        assert_eq!(err, SseError::EventTooLarge(64));
        assert!(out.is_empty());
        // Events that end stay within the cap however many there are.
        let mut p = SseParser::new(64);
        for _ in 0..1000 {
            p.feed(b"data: 0123456789\ndata: 0123456789\n\n", &mut out).unwrap();
        }
        assert_eq!(out.len(), 1000);
        // A long event name or comment counts too.
        let mut p = SseParser::new(64);
        assert!(p.feed(&[b"event: ".as_slice(), &[b'e'; 40], b"\n", b"data: ", &[b'd'; 30], b"\n"].concat(), &mut out).is_err());
    }
}
