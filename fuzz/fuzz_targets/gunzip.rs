//! Arbitrary bytes through manifold's ISA-L gzip decoder and through
//! flate2's `MultiGzDecoder`: neither may panic, and the two must agree: the
//! same bytes when both decode, and an error from flate2 whenever
//! manifold's decoder refuses (ISA-L must not be stricter nor looser), bar
//! the empty input.
#![no_main]

use std::io::Read;

use libfuzzer_sys::fuzz_target;

/// Decoded bytes read at most, so a small bomb stays small.
const DECODED_LIMIT: u64 = 8 << 20;

fn decode(r: impl Read) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    r.take(DECODED_LIMIT).read_to_end(&mut out)?;
    Ok(out)
}

fuzz_target!(|data: &[u8]| {
    // No input is an empty stream to manifold, an error to flate2; inputs
    // reach the decoder only after their gzip magic was seen.
    if data.is_empty() {
        return;
    }
    let ours = decode(manifold::layer::gunzip::decoder(data));
    let theirs = decode(flate2::read::MultiGzDecoder::new(data));
    match (&ours, &theirs) {
        (Ok(a), Ok(b)) => {
            // At the cap one may have stopped mid-buffer: compare the prefix.
            let n = a.len().min(b.len());
            assert_eq!(a[..n], b[..n], "decoded bytes differ");
            if (a.len() as u64) < DECODED_LIMIT && (b.len() as u64) < DECODED_LIMIT {
                assert_eq!(a.len(), b.len(), "decoded lengths differ");
            }
        }
        (Err(_), Err(_)) => {}
        (Ok(a), Err(e)) => panic!("manifold decoded {} bytes, flate2 failed: {e}", a.len()),
        (Err(e), Ok(b)) => panic!("flate2 decoded {} bytes, manifold failed: {e}", b.len()),
    }
});
