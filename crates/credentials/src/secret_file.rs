//! Files holding private keys: created with mode 0600, refused when others may read them.

use std::{io::Write, path::Path};

/// Refuses a secret file that group or others may read: whoever reads it holds the key.
pub fn check_permissions(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map_err(|err| std::io::Error::new(err.kind(), format!("{}: {err}", path.display())))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!(
                    "{} has mode {:o}; it holds secrets and must not be readable by group or others (chmod 600)",
                    path.display(),
                    mode & 0o777
                ),
            ));
        }
    }
    Ok(())
}

/// Reads a secret file after checking its permissions.
pub fn read(path: &Path) -> std::io::Result<crate::Secret> {
    check_permissions(path)?;
    Ok(crate::Secret::new(std::fs::read(path)?))
}

/// Writes `bytes` to a new file created with mode 0600 (never over an existing file).
pub fn write_new(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}
