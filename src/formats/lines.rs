//! Text lines from files a user did not write, each at most a given length: a longer line is
//! reported and skipped without being held in memory, so a file with a gigabyte line costs the
//! cap, not the gigabyte.
use std::io::BufRead;

/// One line of a file: its number (from 1) and its text, or why it was not read.
pub type Line = (usize, Result<String, String>);

/// The lines of `input` (without their `\n` or `\r\n`), blank ones included; a line longer than
/// `cap` bytes or not UTF-8 is an `Err` naming why. A read error ends the iteration with it.
pub fn capped_lines<R: BufRead>(input: R, cap: usize) -> CappedLines<R> {
    CappedLines {
        input,
        cap,
        number: 0,
        done: false,
    }
}

/// The iterator of [`capped_lines`].
pub struct CappedLines<R> {
    input: R,
    cap: usize,
    number: usize,
    done: bool,
}

impl<R: BufRead> Iterator for CappedLines<R> {
    type Item = std::io::Result<Line>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let mut line = Vec::new();
        let mut too_long = false;
        loop {
            let buf = match self.input.fill_buf() {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            };
            if buf.is_empty() {
                self.done = true;
                if line.is_empty() && !too_long {
                    return None;
                }
                break;
            }
            let (chunk, used, end) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (&buf[..i], i + 1, true),
                None => (buf, buf.len(), false),
            };
            if !too_long && line.len() + chunk.len() > self.cap {
                too_long = true;
                line = Vec::new();
            }
            if !too_long {
                line.extend_from_slice(chunk);
            }
            self.input.consume(used);
            if end {
                break;
            }
        }
        self.number += 1;
        let text = if too_long {
            Err(format!("a line longer than {} bytes", self.cap))
        } else {
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            String::from_utf8(line).map_err(|_| "not valid UTF-8".to_string())
        };
        Some(Ok((self.number, text)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &[u8], cap: usize) -> Vec<Line> {
        capped_lines(std::io::BufReader::with_capacity(4, text), cap)
            .map(|l| l.unwrap())
            .collect()
    }

    #[test]
    fn lines_are_numbered_and_long_ones_skipped() {
        let got = lines(b"ab\r\n\ncdefgh\nij\n\xff\nlast", 5);
        assert_eq!(got[0], (1, Ok("ab".into())));
        assert_eq!(got[1], (2, Ok("".into())));
        assert_eq!(got[2], (3, Err("a line longer than 5 bytes".into())));
        assert_eq!(got[3], (4, Ok("ij".into())));
        assert_eq!(got[4], (5, Err("not valid UTF-8".into())));
        assert_eq!(got[5], (6, Ok("last".into())));
        assert_eq!(got.len(), 6);
        assert!(lines(b"", 5).is_empty());
        assert_eq!(lines(b"x\n", 5), vec![(1, Ok("x".into()))]);
    }

    /// A line far past the cap costs the cap in memory: it is never held.
    #[test]
    fn a_huge_line_is_reported_without_being_held() {
        struct Endless(usize);
        impl std::io::Read for Endless {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                if self.0 == 0 {
                    return Ok(0);
                }
                let n = buf.len().min(self.0);
                buf[..n].fill(b'x');
                self.0 -= n;
                Ok(n)
            }
        }
        // 256 MiB of one line, read through a 64 KiB buffer.
        let input = std::io::BufReader::with_capacity(1 << 16, Endless(256 << 20));
        let got: Vec<Line> = capped_lines(input, 1 << 20).map(|l| l.unwrap()).collect();
        assert_eq!(
            got,
            vec![(1, Err("a line longer than 1048576 bytes".into()))]
        );
    }
}
