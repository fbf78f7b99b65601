//! A tokio-util codec over the [framing core](crate::frame).
//!
//! Use it with `Framed`/`FramedRead` when a stream of frames is all you need.
//! The [server](crate::server) and [client](crate::client) drive the core
//! directly instead, because they choose a different timeout depending on
//! whether a frame is in progress.

use bytes::{Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::frame::{Decoded, EncodeError, Frame, FrameDecoder, FramingOptions, encode_message};

/// Decodes MLLP blocks into [`Decoded`] items and encodes [`Frame`]s or raw
/// payloads.
///
/// Framing anomalies come out of the stream as [`Decoded::Event`] items, never
/// as errors: the only decode error is an I/O error from the transport.
#[derive(Debug, Clone, Default)]
pub struct MllpCodec {
    decoder: FrameDecoder,
}

/// An error writing or reading frames through [`MllpCodec`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The underlying transport failed.
    #[error("transport error: {0}")]
    Io(#[from] std::io::Error),
    /// The payload cannot be framed.
    #[error(transparent)]
    Encode(#[from] EncodeError),
}

impl MllpCodec {
    /// A codec with the given framing options.
    pub fn new(options: FramingOptions) -> Self {
        Self {
            decoder: FrameDecoder::new(options),
        }
    }

    /// The framing core, for its [stats](FrameDecoder::stats) and state.
    pub fn decoder(&self) -> &FrameDecoder {
        &self.decoder
    }
}

impl Decoder for MllpCodec {
    type Item = Decoded;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Decoded>, CodecError> {
        Ok(self.decoder.decode(src))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Decoded>, CodecError> {
        Ok(self.decoder.decode_eof(src))
    }
}

impl Encoder<Frame> for MllpCodec {
    type Error = CodecError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        Ok(frame.encode(self.decoder.options(), dst)?)
    }
}

impl Encoder<&[u8]> for MllpCodec {
    type Error = CodecError;

    fn encode(&mut self, payload: &[u8], dst: &mut BytesMut) -> Result<(), CodecError> {
        Ok(encode_message(payload, self.decoder.options(), dst)?)
    }
}

impl Encoder<Bytes> for MllpCodec {
    type Error = CodecError;

    fn encode(&mut self, payload: Bytes, dst: &mut BytesMut) -> Result<(), CodecError> {
        Ok(encode_message(&payload, self.decoder.options(), dst)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::FramingEvent;
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::AsyncWriteExt;
    use tokio_util::codec::{FramedRead, FramedWrite};

    #[tokio::test]
    async fn frames_over_a_duplex_pipe() {
        let (client, server) = tokio::io::duplex(7);
        let mut writer = FramedWrite::new(client, MllpCodec::default());
        let mut reader = FramedRead::new(server, MllpCodec::default());
        let send = async move {
            writer.send(&b"MSH|one"[..]).await.expect("send");
            writer.send(Frame::CommitAck).await.expect("send");
            writer.get_mut().write_all(b"\r\n").await.expect("write");
            writer
                .send(Bytes::from_static(b"MSH|two"))
                .await
                .expect("send");
            writer
                .get_mut()
                .write_all(b"\x0bMSH|cut")
                .await
                .expect("write");
        };
        let recv = async {
            let mut items = Vec::new();
            while let Some(item) = reader.next().await {
                items.push(item.expect("no io error"));
            }
            items
        };
        let ((), items) = tokio::join!(send, recv);
        assert_eq!(
            items,
            vec![
                Decoded::Frame(Frame::Message(Bytes::from_static(b"MSH|one"))),
                Decoded::Frame(Frame::CommitAck),
                Decoded::Event(FramingEvent::SkippedPadding { len: 2 }),
                Decoded::Frame(Frame::Message(Bytes::from_static(b"MSH|two"))),
                Decoded::Event(FramingEvent::Truncated { len: 7 }),
            ]
        );
    }

    #[tokio::test]
    async fn refuses_to_encode_a_payload_with_the_end_byte() {
        let mut writer = FramedWrite::new(tokio::io::sink(), MllpCodec::default());
        let err = writer.send(&b"a\x1cb"[..]).await.expect_err("refused");
        assert!(matches!(
            err,
            CodecError::Encode(EncodeError::EndByteInPayload { offset: 1 })
        ));
    }
}
