//! The protocol buffers wire format, as much of it as an ONNX file needs: varints, 32-bit
//! floats and length-delimited fields (strings, bytes, packed arrays, nested messages). It
//! writes messages; it knows no schema (the field numbers live in `onnx.rs`). A reader of the
//! same subset serves the tests.

/// Wire types (the low three bits of a field's key).
const VARINT: u8 = 0;
const FIXED32: u8 = 5;
const LEN: u8 = 2;

/// One message being written: fields are appended in the order they are called.
#[derive(Default, Debug, Clone, PartialEq, Eq)]
pub struct Message {
    bytes: Vec<u8>,
}

/// Appends `v` as a base-128 varint: seven bits per byte, least significant first, the high
/// bit set on every byte but the last.
pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

impl Message {
    pub fn new() -> Message {
        Message::default()
    }

    /// The encoded bytes.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    fn key(&mut self, field: u32, wire: u8) {
        put_varint(&mut self.bytes, (u64::from(field) << 3) | u64::from(wire));
    }

    /// An `int32`/`int64`/enum field. A negative value is sign-extended to 64 bits and takes
    /// ten bytes, as protobuf writes it.
    pub fn int(&mut self, field: u32, v: i64) -> &mut Message {
        self.key(field, VARINT);
        put_varint(&mut self.bytes, v as u64);
        self
    }

    /// A `float` field (fixed 32 bits, little-endian).
    pub fn float(&mut self, field: u32, v: f32) -> &mut Message {
        self.key(field, FIXED32);
        self.bytes.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// A `bytes` field.
    pub fn bytes(&mut self, field: u32, v: &[u8]) -> &mut Message {
        self.key(field, LEN);
        put_varint(&mut self.bytes, v.len() as u64);
        self.bytes.extend_from_slice(v);
        self
    }

    /// A `string` field.
    pub fn string(&mut self, field: u32, v: &str) -> &mut Message {
        self.bytes(field, v.as_bytes())
    }

    /// A nested message field.
    pub fn message(&mut self, field: u32, m: &Message) -> &mut Message {
        self.bytes(field, &m.bytes)
    }

    /// A packed `repeated int64` field (one length-delimited run of varints).
    pub fn packed_ints(&mut self, field: u32, vs: &[i64]) -> &mut Message {
        let mut run = Vec::new();
        for &v in vs {
            put_varint(&mut run, v as u64);
        }
        self.bytes(field, &run)
    }
}

/// A field as read back: its number and value.
#[cfg(test)]
#[derive(Debug, Clone, PartialEq)]
pub enum Field<'a> {
    Varint(u32, u64),
    Fixed32(u32, [u8; 4]),
    Len(u32, &'a [u8]),
}

/// A varint from the front of `bytes`, and the bytes it took.
#[cfg(test)]
pub fn read_varint(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

/// Every field of one message, in order; `None` when the bytes are not a well-formed message
/// of the wire types above.
#[cfg(test)]
pub fn read_fields(mut bytes: &[u8]) -> Option<Vec<Field<'_>>> {
    let mut fields = Vec::new();
    while !bytes.is_empty() {
        let (key, n) = read_varint(bytes)?;
        bytes = &bytes[n..];
        let number = u32::try_from(key >> 3).ok()?;
        match (key & 7) as u8 {
            VARINT => {
                let (v, n) = read_varint(bytes)?;
                bytes = &bytes[n..];
                fields.push(Field::Varint(number, v));
            }
            FIXED32 => {
                let v: [u8; 4] = bytes.get(..4)?.try_into().ok()?;
                bytes = &bytes[4..];
                fields.push(Field::Fixed32(number, v));
            }
            LEN => {
                let (len, n) = read_varint(bytes)?;
                let end = n.checked_add(usize::try_from(len).ok()?)?;
                let v = bytes.get(n..end)?;
                bytes = &bytes[end..];
                fields.push(Field::Len(number, v));
            }
            _ => return None,
        }
    }
    Some(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(v: u64) -> Vec<u8> {
        let mut out = Vec::new();
        put_varint(&mut out, v);
        out
    }

    /// The examples of the protobuf encoding guide, and the edges of each byte count.
    #[test]
    fn varints_match_the_wire_format() {
        assert_eq!(varint(0), [0x00]);
        assert_eq!(varint(1), [0x01]);
        assert_eq!(varint(127), [0x7f]);
        assert_eq!(varint(128), [0x80, 0x01]);
        assert_eq!(varint(150), [0x96, 0x01]);
        assert_eq!(varint(300), [0xac, 0x02]);
        assert_eq!(varint(16_383), [0xff, 0x7f]);
        assert_eq!(varint(16_384), [0x80, 0x80, 0x01]);
        assert_eq!(varint(u64::MAX).len(), 10);
        for v in [0, 1, 127, 128, 300, 1 << 35, u64::MAX - 1, u64::MAX] {
            assert_eq!(read_varint(&varint(v)), Some((v, varint(v).len())), "{v}");
        }
    }

    /// Keys are `field << 3 | wire type`; each kind of field as protobuf writes it.
    #[test]
    fn fields_match_the_wire_format() {
        // The guide's `message Test1 { int32 a = 1; }` with a = 150.
        assert_eq!(
            Message::new().int(1, 150).clone().into_bytes(),
            [0x08, 0x96, 0x01]
        );
        // `string b = 2` = "testing".
        assert_eq!(
            Message::new().string(2, "testing").clone().into_bytes(),
            [0x12, 0x07, b't', b'e', b's', b't', b'i', b'n', b'g']
        );
        // A nested message: `Test1 c = 3` holding a = 150.
        let mut inner = Message::new();
        inner.int(1, 150);
        assert_eq!(
            Message::new().message(3, &inner).clone().into_bytes(),
            [0x1a, 0x03, 0x08, 0x96, 0x01]
        );
        // Packed `repeated int32 d = 4` = [3, 270, 86942].
        assert_eq!(
            Message::new()
                .packed_ints(4, &[3, 270, 86942])
                .clone()
                .into_bytes(),
            [0x22, 0x06, 0x03, 0x8e, 0x02, 0x9e, 0xa7, 0x05]
        );
        // A float: key (field 2, wire type 5) then 1.0f32 little-endian.
        assert_eq!(
            Message::new().float(2, 1.0).clone().into_bytes(),
            [0x15, 0x00, 0x00, 0x80, 0x3f]
        );
        // A negative int64 is its two's complement in ten bytes.
        let neg = Message::new().int(1, -1).clone().into_bytes();
        assert_eq!(neg.len(), 11);
        assert_eq!(
            &neg[1..],
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]
        );
        // A field number past 15 takes a two-byte key.
        assert_eq!(
            Message::new().int(20, 1).clone().into_bytes(),
            [0xa0, 0x01, 0x01]
        );
    }

    #[test]
    fn fields_read_back_in_order() {
        let mut inner = Message::new();
        inner.string(1, "x");
        let mut m = Message::new();
        m.int(1, 7)
            .float(2, -2.5)
            .message(3, &inner)
            .bytes(9, &[1, 2, 3]);
        let bytes = m.into_bytes();
        let fields = read_fields(&bytes).expect("well formed");
        assert_eq!(
            fields,
            vec![
                Field::Varint(1, 7),
                Field::Fixed32(2, (-2.5f32).to_le_bytes()),
                Field::Len(3, &[0x0a, 0x01, b'x'][..]),
                Field::Len(9, &[1, 2, 3][..]),
            ]
        );
        // Truncated: the last field's length runs past the end.
        assert_eq!(read_fields(&bytes[..bytes.len() - 1]), None);
    }
}
