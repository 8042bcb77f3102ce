//! The terminal the progress bars are drawn on (stdout), for `indicatif`.
//!
//! indicatif pads every line it draws to the terminal's full width (it relies on the wrap to
//! reach the next line), which leaves the cursor in the last column, "about to wrap". Ctrl-C
//! then makes the terminal echo `^C` there, the echo wraps onto a new line, and clearing the
//! bars afterwards moves up one line too few: the top line stays and the hint lands under it.
//! So a frame's trailing padding is not sent: the cursor stays just after the last line's
//! text, which the display keeps [`MARGIN`] columns short of the edge (`progress.rs` ends
//! every template with that many spaces), and the echo fits there, to be cleared with the
//! bars.

use std::io::Write;
use std::sync::Mutex;

/// Columns kept free at the right of the last line: room for `^C`.
pub const MARGIN: usize = 3;

/// stdout as indicatif sees it: writes are buffered until indicatif flushes a frame, so a
/// frame reaches the terminal in one write, without flicker.
#[derive(Debug, Default)]
pub struct Stdout {
    pending: Mutex<Frame>,
}

/// What indicatif wrote since its last flush.
#[derive(Debug, Default)]
struct Frame {
    bytes: Vec<u8>,
    /// The last write was a line's text.
    after_text: bool,
    /// Where the last line's text starts, while nothing but its padding followed it.
    text_at: Option<usize>,
}

/// (columns, rows) of the terminal on stdout, or 80×24 when it does not say.
fn window_size() -> (u16, u16) {
    let mut size = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` into the struct it is given, which lives for
    // the call; on failure the struct is left as it was.
    let rc = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut size) };
    if rc != 0 || size.ws_col == 0 || size.ws_row == 0 {
        (80, 24)
    } else {
        (size.ws_col, size.ws_row)
    }
}

impl Stdout {
    fn frame(&self) -> std::sync::MutexGuard<'_, Frame> {
        // A poisoned lock only means another thread panicked mid-write: the bytes are still
        // a buffer.
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Anything but a line's text or its padding.
    fn push(&self, bytes: &[u8]) -> std::io::Result<()> {
        let mut frame = self.frame();
        frame.bytes.extend_from_slice(bytes);
        frame.after_text = false;
        frame.text_at = None;
        Ok(())
    }

    fn escape(&self, n: usize, code: char) -> std::io::Result<()> {
        if n == 0 {
            return Ok(());
        }
        self.push(format!("\x1b[{n}{code}").as_bytes())
    }
}

impl indicatif::TermLike for Stdout {
    fn width(&self) -> u16 {
        window_size().0
    }

    fn height(&self) -> u16 {
        window_size().1
    }

    fn move_cursor_up(&self, n: usize) -> std::io::Result<()> {
        self.escape(n, 'A')
    }

    fn move_cursor_down(&self, n: usize) -> std::io::Result<()> {
        self.escape(n, 'B')
    }

    fn move_cursor_right(&self, n: usize) -> std::io::Result<()> {
        self.escape(n, 'C')
    }

    fn move_cursor_left(&self, n: usize) -> std::io::Result<()> {
        self.escape(n, 'D')
    }

    fn write_line(&self, s: &str) -> std::io::Result<()> {
        self.push(s.as_bytes())?;
        self.push(b"\n")
    }

    fn write_str(&self, s: &str) -> std::io::Result<()> {
        // indicatif writes each line's text, then its padding (spaces) to the full width.
        let mut frame = self.frame();
        let start = frame.bytes.len();
        let padding = frame.after_text && s.bytes().all(|b| b == b' ');
        frame.bytes.extend_from_slice(s.as_bytes());
        if !padding {
            frame.text_at = Some(start);
        }
        frame.after_text = !padding;
        Ok(())
    }

    fn clear_line(&self) -> std::io::Result<()> {
        self.push(b"\r\x1b[2K")
    }

    fn flush(&self) -> std::io::Result<()> {
        let frame = {
            let mut frame = std::mem::take(&mut *self.frame());
            // Only the last line's trailing spaces go (see the module's comment; indicatif's
            // `wide_msg` pads the text too): the padding of the lines before it is what moves
            // the cursor to the next line, and one character of the last line is kept so
            // that it does.
            if let Some(at) = frame.text_at {
                let end = frame.bytes[at..]
                    .iter()
                    .rposition(|b| *b != b' ')
                    .map_or(1, |i| i + 1);
                frame.bytes.truncate(at + end);
            }
            frame.bytes
        };
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(&frame)?;
        stdout.flush()
    }
}
