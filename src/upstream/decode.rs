//! An upstream stream as the OpenAI chunk events the relay forwards: SSE parsing, and for a
//! provider that speaks another API (Anthropic), each event converted the moment it is
//! parsed (`crate::translate`), never buffered to the end.

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

/// Parses (and, for another API, converts) one upstream stream.
#[derive(Debug)]
pub struct StreamDecoder {
    parser: SseParser,
    converter: Option<StreamConverter>,
    raw: Vec<SseItem>,
}

impl StreamDecoder {
    /// An OpenAI-compatible stream: events pass as parsed.
    pub fn openai() -> Self {
        StreamDecoder { parser: SseParser::default(), converter: None, raw: Vec::new() }
    }

    /// An Anthropic Messages stream, converted event by event.
    pub fn anthropic(converter: StreamConverter) -> Self {
        StreamDecoder { parser: SseParser::default(), converter: Some(converter), raw: Vec::new() }
    }

    /// Feeds bytes; complete events are appended to `out` as OpenAI chunk events.
    ///
    /// # Errors
    /// See [`StreamBroken`]; the stream should be abandoned after one.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<SseItem>) -> Result<(), StreamBroken> {
        match &mut self.converter {
            None => self.parser.feed(chunk, out).map_err(|_| StreamBroken::Malformed),
            Some(conv) => {
                self.raw.clear();
                self.parser.feed(chunk, &mut self.raw).map_err(|_| StreamBroken::Malformed)?;
                convert(conv, &self.raw, out)
            }
        }
    }

    /// Ends the input (a trailing lone `\r` completes a line).
    ///
    /// # Errors
    /// As [`StreamDecoder::feed`].
    pub fn finish(&mut self, out: &mut Vec<SseItem>) -> Result<(), StreamBroken> {
        match &mut self.converter {
            None => {
                self.parser.finish(out);
                Ok(())
            }
            Some(conv) => {
                self.raw.clear();
                self.parser.finish(&mut self.raw);
                convert(conv, &self.raw, out)
            }
        }
    }
}

fn convert(conv: &mut StreamConverter, raw: &[SseItem], out: &mut Vec<SseItem>) -> Result<(), StreamBroken> {
    for item in raw {
        match item {
            // Keep-alives stay keep-alives: a client behind an idle stream needs them too.
            SseItem::Comment(c) => out.push(SseItem::Comment(c.clone())),
            SseItem::Event { event, data } => {
                if event.as_deref() == Some("ping") {
                    out.push(SseItem::Comment(" ping".into()));
                }
                let chunks = conv.event(event.as_deref(), data).map_err(|e| match e {
                    TranslateError::UpstreamStream { .. } => StreamBroken::UpstreamError,
                    _ => StreamBroken::Malformed,
                })?;
                out.extend(chunks.into_iter().map(|data| SseItem::Event { event: None, data }));
            }
        }
    }
    Ok(())
}
