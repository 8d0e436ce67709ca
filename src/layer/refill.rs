//! The buffer-filling loop that compression blocks ([`super::gzip`]) and
//! the archive read-ahead's chunks share.

use std::io::{self, Read};

/// Refills `buf` with up to `size` bytes of `r`: fewer only at its end or at
/// an error, after which `buf` holds the bytes before it. A recycled `buf`
/// keeps its initialised memory, so only new memory is zeroed. `on_piece`
/// sees each read's bytes as they come. (Compression blocks and the archive
/// read-ahead's chunks are filled this way.)
pub fn refill(
    r: &mut dyn Read,
    buf: &mut Vec<u8>,
    size: usize,
    on_piece: &mut dyn FnMut(&[u8]),
) -> io::Result<()> {
    buf.resize(size, 0);
    let mut len = 0;
    let result = loop {
        if len == size {
            break Ok(());
        }
        match r.read(&mut buf[len..]) {
            Ok(0) => break Ok(()),
            Ok(n) => {
                on_piece(&buf[len..len + n]);
                len += n;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => break Err(e),
        }
    };
    buf.truncate(len);
    result
}
