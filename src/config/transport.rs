//! `[transport]`: how a run shared through Redis (`--transport`) stores what it sends.
use serde::{Deserialize, Serialize};

use super::Result;
use crate::error::Error;

/// Used only with `--transport redis://…`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransportConfig {
    /// Most messages the run's trajectory stream keeps (`XADD … MAXLEN ~`). Actors already wait
    /// while `actor.channel_capacity` are queued; this bounds Redis's memory even so.
    pub maxlen: usize,
    /// Where published weights go: `"redis"` (4 MiB chunks under versioned keys) or
    /// `"path:/shared/dir"` (one file per version in a directory every host mounts; Redis then
    /// carries only the version number). For large models.
    pub weights: String,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            maxlen: 1000,
            weights: "redis".into(),
        }
    }
}

impl TransportConfig {
    /// Checks `[transport]`.
    pub fn validate(&self) -> Result<()> {
        if self.maxlen < 1 {
            return Err(Error::input(format!(
                "transport.maxlen must be >= 1, got {}",
                self.maxlen
            )));
        }
        match self.weights_dir() {
            Ok(_) => Ok(()),
            Err(why) => Err(Error::input(format!(
                "transport.weights must be \"redis\" or \"path:/a/directory\", got {:?} ({why})",
                self.weights
            ))),
        }
    }

    /// `None` for Redis, the directory for `path:DIR`.
    pub fn weights_dir(&self) -> std::result::Result<Option<std::path::PathBuf>, &'static str> {
        match self.weights.as_str() {
            "redis" => Ok(None),
            w => match w.strip_prefix("path:") {
                Some(dir) if !dir.trim().is_empty() => Ok(Some(dir.trim().into())),
                Some(_) => Err("the path is empty"),
                None => Err("unknown kind"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_are_redis_or_a_path_and_maxlen_is_positive() {
        let t = |weights: &str, maxlen| TransportConfig {
            maxlen,
            weights: weights.into(),
        };
        assert_eq!(t("redis", 10).weights_dir(), Ok(None));
        assert_eq!(
            t("path:/mnt/shared", 10).weights_dir(),
            Ok(Some("/mnt/shared".into()))
        );
        assert!(t("redis", 1).validate().is_ok());
        for (w, n) in [("path:", 10), ("s3://x", 10), ("redis", 0)] {
            let e = t(w, n).validate().unwrap_err().to_string();
            assert!(e.contains("transport."), "{e}");
        }
    }
}
