//! Crash-safe replacement of small metadata files: write a temp file, fsync it, rename it
//! over the target, fsync the directory. After a crash the file is either the old version or
//! the new one, never a mix.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;

use crate::error::{LogError, Result};

/// Atomically replaces `path` with `contents`.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<()> {
    let dir = path.parent().ok_or_else(|| LogError::Config(format!("{} has no parent", path.display())))?;
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(LogError::io("create", &tmp))?;
        f.write_all(contents).map_err(LogError::io("write", &tmp))?;
        f.sync_all().map_err(LogError::io("fsync", &tmp))?;
    }
    fs::rename(&tmp, path).map_err(LogError::io("rename", path))?;
    fsync_dir(dir)
}

/// Makes directory entries (creations, renames, deletions) in `dir` durable.
pub fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(LogError::io("fsync directory", dir))
}

/// Removes temp files a crash may have left behind by [`write_atomic`].
pub(crate) fn remove_stale_temp_files(dir: &Path) -> Result<()> {
    for entry in fs::read_dir(dir).map_err(LogError::io("read directory", dir))? {
        let entry = entry.map_err(LogError::io("read directory", dir))?;
        if entry.file_name().to_string_lossy().ends_with(".tmp") {
            fs::remove_file(entry.path()).map_err(LogError::io("remove", entry.path()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_file_and_leaves_no_temp() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("cp");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two two");
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn stale_temp_files_are_removed() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("cp.tmp"), b"half").unwrap();
        fs::write(d.path().join("keep"), b"x").unwrap();
        remove_stale_temp_files(d.path()).unwrap();
        let names: Vec<_> = fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("keep")]);
    }
}
