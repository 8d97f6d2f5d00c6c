//! The part of an early-read body past `limits.body_memory_per_request`,
//! kept in an unlinked temporary file under `limits.body_spill_dir`, as
//! nginx keeps a large request body.
//!
//! The file is made with `O_TMPFILE` (or created and unlinked at once), so
//! nothing is left on disk when the process dies; its space is freed when
//! the last handle drops, and with it the share of `limits.body_disk` it
//! holds. Every read and write is positional and runs on Tokio's blocking
//! pool, so a slow disk stalls the request that waits on it, never the
//! worker's other requests.
//!
//! The buffers a read or a write uses are made and freed on the worker's
//! thread, never on a blocking-pool thread: jemalloc caches a freed buffer
//! in the cache of the thread that frees it, and a blocking thread frees
//! nothing else that would reuse it. Ten stalled 32 MiB bodies held 46 MiB
//! this way, against 12 when the buffers come back (the hostile probe).

use crate::budgets::BudgetHold;
use bytes::Bytes;
use pingora_core::{Error, ErrorType, OrErr, Result};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

/// How much of the file one read brings back to send (the held path).
pub const SEND_CHUNK: usize = 64 * 1024;

/// The spilled part of one body: its file, its length, its disk share.
pub struct Spill {
    file: File,
    len: usize,
    _hold: BudgetHold,
}

impl Spill {
    /// A new, empty, unlinked file in `dir`, holding `hold` of the disk budget.
    pub async fn create(dir: &Path, hold: BudgetHold) -> Result<Spill> {
        let dir = dir.to_path_buf();
        let file = blocking(move || tempfile::tempfile_in(&dir))
            .await?
            .or_err(ErrorType::InternalError, "creating a body spill file")?;
        Ok(Spill {
            file,
            len: 0,
            _hold: hold,
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Append `chunk`. The file moves into the blocking task and back, so
    /// that no lock or second handle is needed; the chunk comes back too,
    /// to be freed here.
    pub async fn append(mut self, chunk: Bytes) -> Result<Spill> {
        let offset = self.len as u64;
        let (file, chunk, written) = blocking(move || {
            let written = self.file.write_all_at(&chunk, offset);
            (self.file, chunk, written)
        })
        .await?;
        written.or_err(ErrorType::InternalError, "writing a body spill file")?;
        self.file = file;
        self.len += chunk.len();
        Ok(self)
    }
}

/// A spilled part shared by the attempts that send it.
pub type Shared = Arc<Spill>;

/// `len` bytes of the file from `offset`, into a buffer made here.
pub async fn read(spill: &Shared, offset: usize, len: usize) -> Result<Vec<u8>> {
    let spill = spill.clone();
    let mut buf = vec![0u8; len];
    let (buf, read) = blocking(move || {
        let read = spill.file.read_exact_at(&mut buf, offset as u64);
        (buf, read)
    })
    .await?;
    read.or_err(ErrorType::InternalError, "reading a body spill file")?;
    Ok(buf)
}

/// Run `f` on the blocking pool.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        Error::because(
            ErrorType::InternalError,
            "a body spill file's blocking task failed",
            e,
        )
    })
}
