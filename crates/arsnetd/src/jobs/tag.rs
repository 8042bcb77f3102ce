//! Job tags: what a job's partial files carry so that no other job adopts or removes them.

use arsnet_proto::JobTag;

/// A fresh random job tag (from the kernel's CSPRNG): unguessable, so a file planted by
/// someone else cannot claim to be this job's without reading its journal, and unique, so no
/// two jobs ever claim the same partial files.
pub(crate) fn new_tag() -> JobTag {
    let mut tag: JobTag = [0; 16];
    let mut filled = 0;
    while filled < tag.len() {
        // SAFETY: the pointer and length describe the unfilled part of `tag`.
        let n =
            unsafe { libc::getrandom(tag[filled..].as_mut_ptr().cast(), tag.len() - filled, 0) };
        if n > 0 {
            filled += n as usize;
        } else if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            // No CSPRNG (ancient kernel): fall back on time and pid, still unique per job.
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            return (nanos ^ (u128::from(std::process::id()) << 64)).to_le_bytes();
        }
    }
    tag
}
