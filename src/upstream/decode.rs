//! An upstream stream as classified events: SSE parsing, the one classification of each
//! event ([`crate::api::chat::classify`]), and for a provider that speaks another API
//! (Anthropic) either each event converted to OpenAI chunks the moment it is parsed
//! (`crate::translate`), or — when the client speaks that API too — each event passed on as
//! the provider sent it, classified through the same conversion. Never buffered to the end.

use crate::api::chat::{classify, Chunk, StreamEvent};
use crate::api::sse::{SseItem, SseParser};
use crate::translate::anthropic::StreamConverter;
use crate::translate::TranslateError;

/// Why a stream cannot be read on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamBroken {
    /// Not SSE, an event over the cap, or an event its protocol does not allow there.
    Malformed,
    /// The upstream reported an error in the stream (Anthropic's `error` event).
    UpstreamError,
}

/// One event as failover and the relay see it: what to send the client, and what it means.
#[derive(Debug)]
pub struct Decoded {
    /// The event to forward: an OpenAI chunk event, or for a native stream the provider's own
    /// event; comments (keep-alives) as they came.
    pub item: SseItem,
    /// Its classification; `None` for a comment.
    pub class: Option<StreamEvent>,
}

impl Decoded {
    fn comment(text: String) -> Self {
        Decoded { item: SseItem::Comment(text), class: None }
    }

    fn chunk(data: String) -> Self {
        let class = Some(classify(&data));
        Decoded { item: SseItem::Event { event: None, data }, class }
    }

    /// Size held in memory (for the bound on events held back before the first token).
    pub fn len(&self) -> usize {
        match &self.item {
            SseItem::Event { data, .. } => data.len(),
            SseItem::Comment(c) => c.len(),
        }
    }

    /// True for an empty comment.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug)]
enum Mode {
    /// An OpenAI-compatible stream: events pass as parsed.
    OpenAi,
    /// An Anthropic stream converted to OpenAI chunks.
    Converted(StreamConverter),
    /// An Anthropic stream passed on as sent (the client speaks Anthropic); the converter
    /// only classifies.
    Native(StreamConverter),
}

/// Parses, classifies and (for another API) converts one upstream stream.
#[derive(Debug)]
pub struct StreamDecoder {
    parser: SseParser,
    mode: Mode,
    raw: Vec<SseItem>,
}

impl StreamDecoder {
    /// An OpenAI-compatible stream: events pass as parsed.
    pub fn openai() -> Self {
        Self::with(Mode::OpenAi)
    }

    /// An Anthropic Messages stream, converted event by event.
    pub fn anthropic(converter: StreamConverter) -> Self {
        Self::with(Mode::Converted(converter))
    }

    /// An Anthropic Messages stream for an Anthropic client: events pass as sent, each
    /// classified by what `converter` makes of it (content, usage, end, error), and checked
    /// by it as strictly as a converted stream.
    pub fn anthropic_native(converter: StreamConverter) -> Self {
        Self::with(Mode::Native(converter))
    }

    fn with(mode: Mode) -> Self {
        StreamDecoder { parser: SseParser::default(), mode, raw: Vec::new() }
    }

    /// Feeds bytes; complete events are appended to `out`.
    ///
    /// # Errors
    /// See [`StreamBroken`]; the stream should be abandoned after one. Events decoded
    /// before it are in `out`. A native stream's `error` event is not an error here: it is
    /// passed on (classified as an error chunk), since it is already in the client's API.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<Decoded>) -> Result<(), StreamBroken> {
        self.raw.clear();
        let parsed = self.parser.feed(chunk, &mut self.raw).map_err(|_| StreamBroken::Malformed);
        self.decode(out)?;
        parsed
    }

    /// Ends the input (a trailing lone `\r` completes a line).
    ///
    /// # Errors
    /// As [`StreamDecoder::feed`].
    pub fn finish(&mut self, out: &mut Vec<Decoded>) -> Result<(), StreamBroken> {
        self.raw.clear();
        self.parser.finish(&mut self.raw);
        self.decode(out)
    }

    fn decode(&mut self, out: &mut Vec<Decoded>) -> Result<(), StreamBroken> {
        for item in self.raw.drain(..) {
            let (event, data) = match item {
                SseItem::Comment(c) => {
                    out.push(Decoded::comment(c));
                    continue;
                }
                SseItem::Event { event, data } => (event, data),
            };
            match &mut self.mode {
                Mode::OpenAi => {
                    let class = Some(classify(&data));
                    out.push(Decoded { item: SseItem::Event { event, data }, class });
                }
                Mode::Converted(conv) => {
                    // Keep-alives stay keep-alives: a client behind an idle stream needs them too.
                    if event.as_deref() == Some("ping") {
                        out.push(Decoded::comment(" ping".into()));
                    }
                    let chunks = conv.event(event.as_deref(), &data).map_err(broken)?;
                    out.extend(chunks.into_iter().map(Decoded::chunk));
                }
                Mode::Native(conv) => {
                    let class = match conv.event(event.as_deref(), &data) {
                        Ok(chunks) => merge(chunks.iter().map(|c| classify(c))),
                        Err(TranslateError::UpstreamStream { .. }) => {
                            StreamEvent::Chunk(Chunk::plain(false, true, None))
                        }
                        Err(e) => return Err(broken(e)),
                    };
                    out.push(Decoded { item: SseItem::Event { event, data }, class: Some(class) });
                }
            }
        }
        Ok(())
    }
}

fn broken(e: TranslateError) -> StreamBroken {
    match e {
        TranslateError::UpstreamStream { .. } => StreamBroken::UpstreamError,
        _ => StreamBroken::Malformed,
    }
}

/// One classification for the chunks one native event converts to: the end if any is the
/// end, otherwise a chunk with content if any has it and the last usage reported.
fn merge(classes: impl Iterator<Item = StreamEvent>) -> StreamEvent {
    let mut merged = Chunk::plain(false, false, None);
    for class in classes {
        match class {
            StreamEvent::Done => return StreamEvent::Done,
            StreamEvent::Malformed => return StreamEvent::Malformed,
            StreamEvent::Chunk(c) => {
                merged.content |= c.content;
                merged.error |= c.error;
                merged.usage = c.usage.or(merged.usage);
            }
        }
    }
    StreamEvent::Chunk(merged)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::chat::Usage;

    const NATIVE: &str = concat!(
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"model\":\"claude\",\"usage\":{\"input_tokens\":12,\"output_tokens\":1}}}\n\n",
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
        "event: ping\ndata: {\"type\":\"ping\"}\n\n",
        ": keep-alive\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"h\u{e9}\"}}\n\n",
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
        "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":7}}\n\n",
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    );

    /// (event name or comment, content, usage, done) per decoded event.
    fn summary(out: &[Decoded]) -> Vec<(String, bool, Option<Usage>, bool)> {
        out.iter()
            .map(|d| {
                let name = match &d.item {
                    SseItem::Event { event, .. } => event.clone().unwrap_or_default(),
                    SseItem::Comment(c) => format!(":{c}"),
                };
                match &d.class {
                    Some(StreamEvent::Chunk(c)) => (name, c.content, c.usage, false),
                    Some(StreamEvent::Done) => (name, false, None, true),
                    _ => (name, false, None, false),
                }
            })
            .collect()
    }

    #[test]
    fn a_native_stream_passes_as_sent_and_is_classified_at_every_split() {
        let bytes = NATIVE.as_bytes();
        let mut first = None;
        for at in 0..bytes.len() {
            let mut d = StreamDecoder::anthropic_native(StreamConverter::new(0, None));
            let mut out = Vec::new();
            d.feed(&bytes[..at], &mut out).unwrap();
            d.feed(&bytes[at..], &mut out).unwrap();
            d.finish(&mut out).unwrap();
            let encoded: String = out.iter().map(|x| String::from_utf8(crate::api::sse::encode(&x.item)).unwrap()).collect();
            assert_eq!(encoded, NATIVE, "events pass as sent (split {at})");
            let s = summary(&out);
            match &first {
                None => first = Some(s),
                Some(f) => assert_eq!(&s, f, "split {at}"),
            }
        }
        let s = first.unwrap();
        assert_eq!(s[4], ("content_block_delta".into(), true, None, false));
        assert_eq!(s[6], ("message_delta".into(), false, Some(Usage::Tokens(crate::api::chat::TokenCounts { prompt: 12, completion: 7, cache_read: 0, cache_write: 0 })), false));
        assert_eq!(s[7], ("message_stop".into(), false, None, true));
    }

    #[test]
    fn a_native_error_event_is_passed_on_and_garbage_breaks() {
        let mut d = StreamDecoder::anthropic_native(StreamConverter::new(0, None));
        let mut out = Vec::new();
        let err = "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"busy\"}}\n\n";
        d.feed(err.as_bytes(), &mut out).unwrap();
        assert!(matches!(out[0].class, Some(StreamEvent::Chunk(Chunk { error: true, .. }))));
        let mut d = StreamDecoder::anthropic_native(StreamConverter::new(0, None));
        assert_eq!(d.feed(b"event: content_block_delta\ndata: {{{garbage\n\n", &mut out), Err(StreamBroken::Malformed));
        // Events out of order are as broken natively as converted.
        let mut d = StreamDecoder::anthropic_native(StreamConverter::new(0, None));
        assert_eq!(d.feed(b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n", &mut out), Err(StreamBroken::Malformed));
    }
}
