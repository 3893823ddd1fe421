//! Writing a message field by field into a buffer sized up front: the
//! answers' encoders sum the length first, then write, and a length that
//! differs is an internal error, never a frame whose prefix lies.

use prost::bytes::Bytes;
use prost::encoding::{WireType, encoded_len_varint, key_len};
use tonic::Status;

use super::Encoded;

/// Writes one message: the caller sums its length from the `*_len` functions
/// first, then writes the same fields in tag order with the `put_*` methods.
/// As prost does, a scalar field at its default value is left out, and a
/// present sub-message is written even when empty.
#[derive(Debug)]
pub struct Writer {
    out: Vec<u8>,
    len: usize,
}

impl Writer {
    /// A writer for a message of `len` bytes.
    pub fn with_len(len: usize) -> Self {
        Writer {
            out: Vec::with_capacity(len),
            len,
        }
    }

    /// A string field.
    pub fn put_str(&mut self, tag: u32, value: &str) {
        self.put_strs(tag, &[value]);
    }

    /// A string field written in pieces.
    pub fn put_strs(&mut self, tag: u32, pieces: &[&str]) {
        let len = pieces.iter().map(|p| p.len()).sum();
        if len != 0 {
            self.put_sub(tag, len);
            for piece in pieces {
                self.out.extend_from_slice(piece.as_bytes());
            }
        }
    }

    /// Bytes whose key and length were written with [`Writer::put_sub`].
    pub fn put_raw(&mut self, value: &str) {
        self.out.extend_from_slice(value.as_bytes());
    }

    /// Fields encoded before, keys and lengths included.
    pub fn put_encoded(&mut self, fields: &Encoded) {
        self.out.extend_from_slice(&fields.0);
    }

    /// A varint field: an enum, a `uint32`, a non-negative `int32` or a `bool`.
    pub fn put_varint(&mut self, tag: u32, value: u64) {
        if value != 0 {
            self.put_key(tag, WireType::Varint);
            self.put_raw_varint(value);
        }
    }

    /// The key and length of a sub-message whose fields follow.
    pub fn put_sub(&mut self, tag: u32, len: usize) {
        self.put_key(tag, WireType::LengthDelimited);
        self.put_raw_varint(len as u64);
    }

    fn put_key(&mut self, tag: u32, wire_type: WireType) {
        self.put_raw_varint(u64::from(tag << 3 | wire_type as u32));
    }

    /// prost's `encode_varint`, as pushes into the buffer sized up front:
    /// prost writes each byte through `BufMut`, which for a `Vec` is a
    /// call and a copy per byte, and keys and lengths are most of what an
    /// answer writes (docs/benchmarks.md).
    fn put_raw_varint(&mut self, mut value: u64) {
        while value >= 0x80 {
            self.out.push((value & 0x7f) as u8 | 0x80);
            value >>= 7;
        }
        self.out.push(value as u8);
    }

    /// The message written, or `INTERNAL` when the length summed first is
    /// not the length written: an answer whose length prefix would lie is
    /// never sent (checked in release builds too; a comparison a message).
    pub fn finish(self) -> Result<Encoded, Status> {
        if self.out.len() != self.len {
            return Err(Status::internal(format!(
                "an answer's length was summed as {} bytes and written as {}; it is not sent",
                self.len,
                self.out.len()
            )));
        }
        // Written to its capacity, the buffer becomes `Bytes` without a copy.
        Ok(Encoded(Bytes::from(self.out)))
    }
}

/// Length of a string field.
pub fn str_len(tag: u32, value: &str) -> usize {
    strs_len(tag, &[value])
}

/// Length of a string field written in pieces.
pub fn strs_len(tag: u32, pieces: &[&str]) -> usize {
    match pieces.iter().map(|p| p.len()).sum() {
        0 => 0,
        len => sub_len(tag, len),
    }
}

/// Length of a varint field.
pub fn varint_len(tag: u32, value: u64) -> usize {
    if value == 0 {
        0
    } else {
        key_len(tag) + encoded_len_varint(value)
    }
}

/// Length of a present sub-message whose own fields take `len` bytes.
pub fn sub_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_length_that_differs_from_its_sum_is_an_internal_error() {
        let mut out = Writer::with_len(4);
        out.put_str(1, "ab");
        assert!(out.finish().is_ok());
        let mut out = Writer::with_len(5);
        out.put_str(1, "ab");
        let error = out.finish().unwrap_err();
        assert_eq!(error.code(), tonic::Code::Internal);
    }

    #[test]
    fn varints_are_written_as_prost_writes_them() {
        let values = (0..64).flat_map(|shift| [0u64, 1, 0x7f, 0x80, 0xff, 0x3fff, 0x4000].map(|v| v << shift));
        for value in values.chain([u64::MAX]) {
            let mut ours = Writer::with_len(0);
            ours.put_raw_varint(value);
            let mut prost = Vec::new();
            prost::encoding::encode_varint(value, &mut prost);
            assert_eq!(ours.out, prost, "{value:#x}");
        }
    }
}
