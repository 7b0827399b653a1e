//! The cluster service's codec: prost's encoding, but a message that does not decode is the
//! sender's error (INVALID_ARGUMENT) rather than INTERNAL, which tonic-prost answers and which
//! tells a client the server broke. Generated into the cluster service's server and client by
//! `build.rs`; a client meeting an undecodable answer sees INVALID_ARGUMENT too.

use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

#[derive(Debug, Clone)]
pub struct InvalidArgumentCodec<T, U>(ProstCodec<T, U>);

impl<T, U> Default for InvalidArgumentCodec<T, U> {
    fn default() -> Self {
        InvalidArgumentCodec(ProstCodec::default())
    }
}

impl<T, U> Codec for InvalidArgumentCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = InvalidArgumentDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.0.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        InvalidArgumentDecoder(self.0.decoder())
    }
}

/// prost's decoder with its decode errors answered as INVALID_ARGUMENT.
#[derive(Debug, Clone)]
pub struct InvalidArgumentDecoder<U>(ProstDecoder<U>);

impl<U: prost::Message + Default> Decoder for InvalidArgumentDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        // ProstDecoder fails only when the bytes are not a message of this type.
        self.0.decode(buf).map_err(|e| Status::invalid_argument(format!("{}; send a message of this RPC's type, encoded as cluster.proto says", e.message())))
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}
