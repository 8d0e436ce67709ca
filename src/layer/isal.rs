//! A minimal binding to Intel ISA-L (`igzip`): its deflate encoder, the
//! fastest we measured on x86-64 (see [`super::gzip`]), and its inflate
//! decoder, about 1.8x faster than miniz_oxide here (see [`super::gunzip`]).
//!
//! It sits under `layer::gzip`, which cuts layers into blocks: [`Deflater`]
//! only turns one block (plus the 32 KiB before it as dictionary) into raw
//! deflate that ends either byte-aligned after a sync flush or with the final
//! block. Gzip framing, CRC and threads are left to `gzip`. [`Inflater`]
//! decodes a gzip member's deflate data and checks its trailer (CRC and
//! length); `gunzip` reads the header before it.
//!
//! The library comes from the system: Debian's `libisal-dev` (header
//! `/usr/include/isa-l/igzip_lib.h`, `libisal.so.2`), nixpkgs' `isa-l`. The
//! `isal_zstream` and `inflate_state` layouts below are the ones of ISA-L 2.x
//! (checked against the 2.30 header: 82384 bytes with `internal_state` at
//! 64; 87368 bytes with `block_state` at 21160); ISA-L has kept these public
//! structs stable across 2.x, and probes at construction pin our side.

use std::ffi::c_void;
use std::mem::{offset_of, size_of};

/// `struct isal_zstate`: opaque to us except `state`, which tells when a
/// flush or the end of stream has been written out completely.
#[repr(C)]
struct ZState {
    _before: [u32; 5],
    state: u32,
    _rest: [u8; ZSTATE_SIZE - 24],
}

const ZSTATE_SIZE: usize = 82320;

/// `struct isal_zstream` (igzip_lib.h).
#[repr(C)]
struct ZStream {
    next_in: *mut u8,
    avail_in: u32,
    total_in: u32,
    next_out: *mut u8,
    avail_out: u32,
    total_out: u32,
    hufftables: *mut c_void,
    level: u32,
    level_buf_size: u32,
    level_buf: *mut u8,
    end_of_stream: u16,
    flush: u16,
    gzip_flag: u16,
    hist_bits: u16,
    internal_state: ZState,
    /// Slack: should a build of the library have a larger internal state,
    /// it writes here rather than past our allocation.
    _slack: [u8; 16 * 1024],
}

const _: () = assert!(size_of::<ZStream>() == 82384 + 16 * 1024);
const _: () = assert!(offset_of!(ZStream, internal_state) == 64);
const _: () = assert!(offset_of!(ZStream, end_of_stream) == 56);

const COMP_OK: i32 = 0;
const SYNC_FLUSH: u16 = 1;
const IGZIP_DEFLATE: u16 = 0;
const ZSTATE_NEW_HDR: u32 = 0;
const ZSTATE_END: u32 = 11;

/// Highest level ISA-L knows.
pub const MAX_LEVEL: u32 = 3;

/// `ISAL_DEF_LVLx_SMALL`: the working memory each level gets. It holds the
/// tokens of one deflate block, so it sets how often a fresh Huffman table
/// is built. ISA-L's default (`_LARGE`, 64 Ki tokens) is about 12 % faster
/// here, but its output is about 1 % larger: enough to push more bytes than
/// skopeo's gzip (Go, level 6) plus 5 % on images of many small layers.
fn level_buf_size(level: u32) -> usize {
    match level {
        0 => 0,
        1 => 86_016,
        2 => 135_168,
        _ => 151_552,
    }
}

#[link(name = "isal")]
extern "C" {
    fn isal_deflate_init(stream: *mut ZStream);
    fn isal_deflate_set_dict(stream: *mut ZStream, dict: *mut u8, dict_len: u32) -> i32;
    fn isal_deflate(stream: *mut ZStream) -> i32;
    fn isal_inflate_init(state: *mut InflateState);
    fn isal_inflate(state: *mut InflateState) -> i32;
}

/// `struct inflate_state` (igzip_lib.h): the fields we set or read, the
/// Huffman tables and buffers between them as bytes.
#[repr(C)]
struct InflateState {
    next_out: *mut u8,
    avail_out: u32,
    total_out: u32,
    next_in: *mut u8,
    read_in: u64,
    avail_in: u32,
    read_in_length: i32,
    _huff_codes: [u8; INFLATE_BLOCK_STATE_AT - 40],
    block_state: u32,
    dict_length: u32,
    bfinal: u32,
    crc_flag: u32,
    crc: u32,
    hist_bits: u32,
    _rest: [u8; INFLATE_STATE_SIZE - INFLATE_BLOCK_STATE_AT - 24],
    /// Slack, as for `ZStream`.
    _slack: [u8; 16 * 1024],
}

const INFLATE_STATE_SIZE: usize = 87368;
const INFLATE_BLOCK_STATE_AT: usize = 21160;

const _: () = assert!(size_of::<InflateState>() == INFLATE_STATE_SIZE + 16 * 1024);
const _: () = assert!(offset_of!(InflateState, block_state) == INFLATE_BLOCK_STATE_AT);
const _: () = assert!(offset_of!(InflateState, crc_flag) == 21172);

/// Raw deflate, then the gzip trailer (CRC-32 and length), checked: the
/// header is parsed by `gunzip` (ISA-L 2.30 misreads optional header fields
/// that arrive split over two calls).
const ISAL_GZIP_NO_HDR_VER: u32 = 6;
const ISAL_BLOCK_NEW_HDR: u32 = 0;
const ISAL_BLOCK_FINISH: u32 = 5;
const ISAL_DECOMP_OK: i32 = 0;
const ISAL_END_INPUT: i32 = 1;
const ISAL_OUT_OVERFLOW: i32 = 2;
const ISAL_INCORRECT_CHECKSUM: i32 = -6;

/// What ISA-L refused, with its return code.
#[derive(Debug, thiserror::Error)]
pub enum IsalError {
    #[error("isa-l deflate failed with code `{code}`")]
    Deflate { code: i32 },
    #[error("isa-l refused the dictionary with code `{code}`")]
    Dictionary { code: i32 },
    #[error("isa-l deflate stopped in state `{state}` before the block was complete")]
    Stalled { state: u32 },
    #[error("a block of `{len}` bytes is too large for isa-l")]
    TooLarge { len: usize },
    #[error("the installed isa-l lays out `isal_zstream` or `inflate_state` differently\nhint: build against isa-l 2.30 or later (Debian libisal-dev, nixpkgs isa-l)")]
    Layout,
    #[error("the gzip data is corrupt (isa-l inflate code `{code}`)")]
    Corrupt { code: i32 },
    #[error("the gzip data does not match its checksum")]
    Checksum,
}

/// One deflate encoder, reused block after block by one worker thread.
pub struct Deflater {
    stream: Box<ZStream>,
    level_buf: Vec<u8>,
    level: u32,
}

impl Deflater {
    /// An encoder at `level` (clamped to ISA-L's 0..=3). Fails if the
    /// library's `isal_zstream` is not laid out as we declare it.
    pub fn new(level: u32) -> Result<Self, IsalError> {
        let level = level.min(MAX_LEVEL);
        // 82 KB: straight on the heap, zeroed.
        // SAFETY: ZStream holds only integers, raw pointers and bytes.
        let stream = unsafe { zeroed_box::<ZStream>() };
        let mut d = Deflater {
            stream,
            level_buf: vec![0; level_buf_size(level)],
            level,
        };
        d.probe()?;
        Ok(d)
    }

    /// Checks that `isal_deflate_init` resets the fields where we expect
    /// them: sentinels in, defaults out. A library built with another
    /// layout fails here instead of corrupting memory later.
    fn probe(&mut self) -> Result<(), IsalError> {
        let s = &mut *self.stream;
        s.level = 0xa5a5_a5a5;
        s.end_of_stream = 0xa5a5;
        s.flush = 0xa5a5;
        s.gzip_flag = 0xa5a5;
        s.internal_state.state = 0xa5a5_a5a5;
        // SAFETY: `s` is a valid, exclusively borrowed isal_zstream.
        unsafe { isal_deflate_init(s) };
        let ok = s.level == 0
            && s.end_of_stream == 0
            && s.flush == 0
            && s.gzip_flag == IGZIP_DEFLATE
            && s.internal_state.state == ZSTATE_NEW_HDR
            && !s.hufftables.is_null();
        if ok {
            Ok(())
        } else {
            Err(IsalError::Layout)
        }
    }

    /// Appends `input` to `out` as raw deflate, with `dict` (at most the last
    /// 32 KiB count) as history. Unless `last`, the output ends with a sync
    /// flush (byte-aligned, not final), so blocks concatenate into one stream.
    pub fn compress_block(
        &mut self,
        dict: &[u8],
        input: &[u8],
        last: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), IsalError> {
        let avail_in =
            u32::try_from(input.len()).map_err(|_| IsalError::TooLarge { len: input.len() })?;
        let s = &mut *self.stream;
        // SAFETY: `s` is a valid, exclusively borrowed isal_zstream.
        unsafe { isal_deflate_init(s) };
        s.level = self.level;
        s.level_buf_size = self.level_buf.len() as u32;
        s.level_buf = if self.level_buf.is_empty() {
            std::ptr::null_mut()
        } else {
            self.level_buf.as_mut_ptr()
        };
        s.gzip_flag = IGZIP_DEFLATE;
        s.hist_bits = 0;
        s.end_of_stream = u16::from(last);
        s.flush = if last { 0 } else { SYNC_FLUSH };
        if !dict.is_empty() {
            let dict = &dict[dict.len().saturating_sub(32 * 1024)..];
            // SAFETY: ISA-L copies the dictionary into its own history and
            // never writes through the pointer despite its `uint8_t *` type.
            let code =
                unsafe { isal_deflate_set_dict(s, dict.as_ptr().cast_mut(), dict.len() as u32) };
            if code != COMP_OK {
                return Err(IsalError::Dictionary { code });
            }
        }
        s.next_in = input.as_ptr().cast_mut();
        s.avail_in = avail_in;
        // Generous first guess so one call usually does it all; ISA-L falls
        // back to stored blocks on incompressible data.
        out.reserve(input.len() + input.len() / 8 + 1024);
        loop {
            let start = out.len();
            let spare = out.capacity() - start;
            let spare = spare.min(u32::MAX as usize);
            // SAFETY: next_out points at `spare` writable bytes of `out`'s
            // allocation; we only extend `out` over what ISA-L reports written.
            s.next_out = unsafe { out.as_mut_ptr().add(start) };
            s.avail_out = spare as u32;
            let avail_before = s.avail_in;
            let code = unsafe { isal_deflate(s) };
            let written = spare - s.avail_out as usize;
            // SAFETY: ISA-L initialised exactly `written` bytes after `start`.
            unsafe { out.set_len(start + written) };
            if code != COMP_OK {
                return Err(IsalError::Deflate { code });
            }
            let state = s.internal_state.state;
            let done = s.avail_in == 0
                && s.avail_out > 0
                && if last {
                    state == ZSTATE_END
                } else {
                    state == ZSTATE_NEW_HDR
                };
            if done {
                break;
            }
            // Room was left and nothing moved: the library ended in a state
            // we do not know; fail rather than spin.
            if s.avail_out > 0 && written == 0 && s.avail_in == avail_before {
                return Err(IsalError::Stalled { state });
            }
            out.reserve(64 * 1024);
        }
        // Drop the pointers into buffers we do not own any more.
        s.next_in = std::ptr::null_mut();
        s.next_out = std::ptr::null_mut();
        Ok(())
    }
}

/// A heap allocation of `T`, zeroed.
///
/// SAFETY: the caller guarantees that all-zero bytes are a valid `T` (only
/// integers, raw pointers and byte arrays).
unsafe fn zeroed_box<T>() -> Box<T> {
    let layout = std::alloc::Layout::new::<T>();
    let p = std::alloc::alloc_zeroed(layout).cast::<T>();
    if p.is_null() {
        std::alloc::handle_alloc_error(layout);
    }
    Box::from_raw(p)
}

/// How far one [`Inflater::inflate`] call got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InflateStep {
    /// Input bytes used.
    pub consumed: usize,
    /// Output bytes written.
    pub produced: usize,
    /// The gzip member ended (trailer checked); the next input byte, if
    /// any, starts another member.
    pub member_end: bool,
}

/// One gzip decoder (a member at a time, after its header), fed by
/// [`super::gunzip`].
pub struct Inflater {
    state: Box<InflateState>,
}

// SAFETY: the state's pointers are only set during `inflate` to buffers that
// call borrows, and cleared before it returns.
unsafe impl Send for Inflater {}

impl Inflater {
    /// A decoder. Fails if the library's `inflate_state` is not laid out as
    /// we declare it.
    pub fn new() -> Result<Self, IsalError> {
        // SAFETY: InflateState holds only integers, raw pointers and bytes.
        let mut inflater = Inflater {
            state: unsafe { zeroed_box::<InflateState>() },
        };
        inflater.probe()?;
        Ok(inflater)
    }

    /// As [`Deflater::probe`]: sentinels in, `isal_inflate_init`'s zeros out.
    fn probe(&mut self) -> Result<(), IsalError> {
        let s = &mut *self.state;
        s.read_in_length = 0x5a5a;
        s.block_state = 0xa5a5_a5a5;
        s.dict_length = 0xa5a5_a5a5;
        s.bfinal = 0xa5a5_a5a5;
        s.crc_flag = 0xa5a5_a5a5;
        s.crc = 0xa5a5_a5a5;
        s.hist_bits = 0xa5a5_a5a5;
        // SAFETY: `s` is a valid, exclusively borrowed inflate_state.
        unsafe { isal_inflate_init(s) };
        let ok = s.read_in_length == 0
            && s.block_state == ISAL_BLOCK_NEW_HDR
            && s.dict_length == 0
            && s.bfinal == 0
            && s.crc_flag == 0
            && s.crc == 0
            && s.hist_bits == 0;
        if ok {
            Ok(())
        } else {
            Err(IsalError::Layout)
        }
    }

    /// Prepares for a new member whose header has been read.
    pub fn start_member(&mut self) {
        let s = &mut *self.state;
        // SAFETY: `s` is a valid, exclusively borrowed inflate_state.
        unsafe { isal_inflate_init(s) };
        s.crc_flag = ISAL_GZIP_NO_HDR_VER;
    }

    /// Decodes the member's deflate data and trailer from `input` into
    /// `output`. At the trailer the call returns with `member_end`; the
    /// input after it is not consumed.
    pub fn inflate(&mut self, input: &[u8], output: &mut [u8]) -> Result<InflateStep, IsalError> {
        let s = &mut *self.state;
        let avail_in = input.len().min(u32::MAX as usize);
        let avail_out = output.len().min(u32::MAX as usize);
        s.next_in = input.as_ptr().cast_mut();
        s.avail_in = avail_in as u32;
        s.next_out = output.as_mut_ptr();
        s.avail_out = avail_out as u32;
        // SAFETY: next_in/next_out point at `avail_in` readable and
        // `avail_out` writable bytes borrowed for this call; ISA-L never
        // writes through next_in.
        let code = unsafe { isal_inflate(s) };
        s.next_in = std::ptr::null_mut();
        s.next_out = std::ptr::null_mut();
        match code {
            ISAL_DECOMP_OK | ISAL_END_INPUT | ISAL_OUT_OVERFLOW => {}
            ISAL_INCORRECT_CHECKSUM => return Err(IsalError::Checksum),
            // After an error the counters are not to be trusted (ISA-L
            // leaves avail_in wrapped below zero on some invalid blocks).
            code => return Err(IsalError::Corrupt { code }),
        }
        // A success never reports more bytes left than it was given; should
        // one, it is an error rather than an overflow.
        let consumed = avail_in.checked_sub(s.avail_in as usize);
        let produced = avail_out.checked_sub(s.avail_out as usize);
        let (Some(consumed), Some(produced)) = (consumed, produced) else {
            return Err(IsalError::Corrupt { code });
        };
        Ok(InflateStep {
            consumed,
            produced,
            member_end: s.block_state == ISAL_BLOCK_FINISH,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::test_data::xorshift;
    use std::io::Read;

    fn inflate(raw: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        flate2::read::DeflateDecoder::new(raw)
            .read_to_end(&mut v)
            .unwrap();
        v
    }

    #[test]
    fn blocks_concatenate_into_one_deflate_stream() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 1013 % 251) as u8).collect();
        for level in 0..=3 {
            let mut d = Deflater::new(level).unwrap();
            let mut out = Vec::new();
            d.compress_block(&[], &data[..100_000], false, &mut out)
                .unwrap();
            // A sync flush ends with an empty stored block.
            assert_eq!(&out[out.len() - 4..], &[0, 0, 0xff, 0xff]);
            d.compress_block(&data[..100_000], &data[100_000..], true, &mut out)
                .unwrap();
            assert_eq!(inflate(&out), data, "level {level}");
            assert!(out.len() < data.len() / 4, "level {level}: {}", out.len());
        }
    }

    #[test]
    fn an_empty_last_block_is_a_valid_stream() {
        let mut out = Vec::new();
        Deflater::new(1)
            .unwrap()
            .compress_block(&[], &[], true, &mut out)
            .unwrap();
        assert!(!out.is_empty());
        assert_eq!(inflate(&out), Vec::<u8>::new());
    }

    #[test]
    fn the_dictionary_is_used() {
        let mut next = xorshift(0x9e37_79b9);
        let tail: Vec<u8> = (0..32_000).map(|_| next() as u8).collect();
        let mut with = Vec::new();
        let mut without = Vec::new();
        Deflater::new(1)
            .unwrap()
            .compress_block(&tail, &tail, true, &mut with)
            .unwrap();
        Deflater::new(1)
            .unwrap()
            .compress_block(&[], &tail, true, &mut without)
            .unwrap();
        assert!(
            with.len() * 4 < without.len(),
            "{} vs {}",
            with.len(),
            without.len()
        );
        let mut d = flate2::Decompress::new(false);
        // Decoding needs the same history: prepend it as a stored prefix.
        let mut prefix = Vec::new();
        Deflater::new(0)
            .unwrap()
            .compress_block(&[], &tail, false, &mut prefix)
            .unwrap();
        prefix.extend_from_slice(&with);
        let mut back = Vec::with_capacity(2 * tail.len() + 16);
        d.decompress_vec(&prefix, &mut back, flate2::FlushDecompress::Finish)
            .unwrap();
        assert_eq!(&back[tail.len()..], &tail[..]);
    }
}
