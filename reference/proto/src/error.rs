use core::fmt;

/// Why a byte string is not a valid frame or envelope.
///
/// The variants carry positions and limits, never the offending bytes, so an
/// error can be logged without leaking what a peer sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input is longer than the limit for its kind.
    #[error("input of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Length of the input.
        len: usize,
        /// The limit that applies.
        max: usize,
    },
    /// The version field names a protocol version this implementation does not speak.
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u64),
    /// The frame type number is not defined by this protocol version.
    #[error("unknown frame type {0}")]
    UnknownFrameType(u64),
    /// A field is longer than its limit.
    #[error("field `{field}` is longer than {max}")]
    FieldTooLong {
        /// The field's name as in docs/PROTOCOL.md.
        field: &'static str,
        /// The limit that applies.
        max: usize,
    },
    /// Bytes remain after a complete value.
    #[error("{0} trailing bytes after the value")]
    TrailingBytes(usize),
    /// The value decodes but is not in the canonical encoding
    /// (envelopes must re-encode to exactly the received bytes).
    #[error("value is not canonically encoded")]
    NonCanonical,
    /// The bytes are not the CBOR this protocol expects.
    #[error("malformed CBOR: {0}")]
    Malformed(MalformedCbor),
    /// The value decodes canonically but breaks a rule of its own (PROTOCOL
    /// names the rule).
    #[error("invalid value: {0}")]
    Invalid(&'static str),
}

/// A description of a CBOR decoding failure that never includes input bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MalformedCbor {
    position: Option<usize>,
    kind: &'static str,
}

impl fmt::Display for MalformedCbor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some(p) => write!(f, "{} at byte {p}", self.kind),
            None => f.write_str(self.kind),
        }
    }
}

impl From<minicbor::decode::Error> for DecodeError {
    fn from(e: minicbor::decode::Error) -> Self {
        let kind = if e.is_end_of_input() {
            "unexpected end of input"
        } else if e.is_type_mismatch() {
            "unexpected type"
        } else if e.is_unknown_variant() {
            "unknown variant"
        } else if e.is_missing_value() {
            "missing field"
        } else {
            // minicbor's message may quote decoded text; keep only a fixed word.
            "invalid value"
        };
        DecodeError::Malformed(MalformedCbor {
            position: e.position(),
            kind,
        })
    }
}

impl DecodeError {
    pub(crate) fn malformed(kind: &'static str, position: usize) -> Self {
        DecodeError::Malformed(MalformedCbor {
            position: Some(position),
            kind,
        })
    }
}

/// Error codes carried by [`frame::Error`](crate::frame::Error) frames.
///
/// Codes are stable: a new code gets a new number, and a client treats an
/// unknown code as [`ErrorCode::Internal`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// The frame could not be decoded (malformed CBOR, bad field).
    BadFrame,
    /// The frame is larger than [`MAX_FRAME_LEN`](crate::limits::MAX_FRAME_LEN).
    FrameTooLarge,
    /// The frame's version is not spoken by the server.
    UnsupportedVersion,
    /// The frame type is not defined.
    UnknownFrameType,
    /// The request needs an authenticated connection.
    Unauthenticated,
    /// The token is unknown, expired or revoked.
    InvalidToken,
    /// The user name and password do not match.
    BadCredentials,
    /// Too many failed attempts, or the server is busy with other logins;
    /// try again later.
    RateLimited,
    /// The user name is taken.
    UserExists,
    /// The named user or device does not exist.
    NoSuchUser,
    /// The caller may not touch that resource (another user's mailbox or history).
    Forbidden,
    /// The request is well formed but its content is invalid.
    InvalidRequest,
    /// The server failed; the request may be retried.
    Internal,
    /// A second factor is required or the one given is wrong.
    SecondFactorRequired,
    /// The blob is larger than the server accepts.
    TooLarge,
    /// The account's blobs would take more than its quota.
    QuotaExceeded,
    /// No such blob, or the caller may not touch it (the two are not told apart).
    NotFound,
}

impl ErrorCode {
    /// The code's number on the wire.
    pub const fn as_u16(self) -> u16 {
        match self {
            ErrorCode::BadFrame => 1,
            ErrorCode::FrameTooLarge => 2,
            ErrorCode::UnsupportedVersion => 3,
            ErrorCode::UnknownFrameType => 4,
            ErrorCode::Unauthenticated => 10,
            ErrorCode::InvalidToken => 11,
            ErrorCode::BadCredentials => 12,
            ErrorCode::RateLimited => 13,
            ErrorCode::UserExists => 14,
            ErrorCode::SecondFactorRequired => 15,
            ErrorCode::NoSuchUser => 20,
            ErrorCode::Forbidden => 21,
            ErrorCode::InvalidRequest => 22,
            ErrorCode::TooLarge => 23,
            ErrorCode::QuotaExceeded => 24,
            ErrorCode::NotFound => 25,
            ErrorCode::Internal => 50,
        }
    }

    /// The code for a wire number; unknown numbers map to [`ErrorCode::Internal`].
    pub const fn from_u16(n: u16) -> Self {
        match n {
            1 => ErrorCode::BadFrame,
            2 => ErrorCode::FrameTooLarge,
            3 => ErrorCode::UnsupportedVersion,
            4 => ErrorCode::UnknownFrameType,
            10 => ErrorCode::Unauthenticated,
            11 => ErrorCode::InvalidToken,
            12 => ErrorCode::BadCredentials,
            13 => ErrorCode::RateLimited,
            14 => ErrorCode::UserExists,
            15 => ErrorCode::SecondFactorRequired,
            20 => ErrorCode::NoSuchUser,
            21 => ErrorCode::Forbidden,
            22 => ErrorCode::InvalidRequest,
            23 => ErrorCode::TooLarge,
            24 => ErrorCode::QuotaExceeded,
            25 => ErrorCode::NotFound,
            _ => ErrorCode::Internal,
        }
    }

    /// Every code, in wire order (for docs and tests).
    pub const ALL: [ErrorCode; 17] = [
        ErrorCode::BadFrame,
        ErrorCode::FrameTooLarge,
        ErrorCode::UnsupportedVersion,
        ErrorCode::UnknownFrameType,
        ErrorCode::Unauthenticated,
        ErrorCode::InvalidToken,
        ErrorCode::BadCredentials,
        ErrorCode::RateLimited,
        ErrorCode::UserExists,
        ErrorCode::SecondFactorRequired,
        ErrorCode::NoSuchUser,
        ErrorCode::Forbidden,
        ErrorCode::InvalidRequest,
        ErrorCode::TooLarge,
        ErrorCode::QuotaExceeded,
        ErrorCode::NotFound,
        ErrorCode::Internal,
    ];
}

impl DecodeError {
    /// The error code a server answers this decoding failure with.
    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeError::TooLarge { .. } => ErrorCode::FrameTooLarge,
            DecodeError::UnsupportedVersion(_) => ErrorCode::UnsupportedVersion,
            DecodeError::UnknownFrameType(_) => ErrorCode::UnknownFrameType,
            _ => ErrorCode::BadFrame,
        }
    }
}

impl<C> minicbor::Encode<C> for ErrorCode {
    fn encode<W: minicbor::encode::Write>(
        &self,
        e: &mut minicbor::Encoder<W>,
        _: &mut C,
    ) -> Result<(), minicbor::encode::Error<W::Error>> {
        e.u16(self.as_u16())?;
        Ok(())
    }
}

impl<'b, C> minicbor::Decode<'b, C> for ErrorCode {
    fn decode(d: &mut minicbor::Decoder<'b>, _: &mut C) -> Result<Self, minicbor::decode::Error> {
        Ok(ErrorCode::from_u16(d.u16()?))
    }
}
