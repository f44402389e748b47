//! Errors of the xtask commands.

use std::path::PathBuf;

use thiserror::Error;

/// Everything that can stop `cargo xtask reproduce`.
#[derive(Debug, Error)]
pub enum XtaskError {
    /// A flag or preset field has a value that cannot work.
    #[error("invalid {field} = {value}: {why}")]
    InvalidSetting {
        /// The flag or field.
        field: &'static str,
        /// The bad value, as given.
        value: String,
        /// What is required.
        why: String,
    },
    /// Reading or writing a file failed.
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// A run-record file could not be read back.
    #[error("bad run records in {}: {why}", path.display())]
    Records {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// Drawing a figure failed.
    #[error("could not draw {}: {message}", path.display())]
    Plot {
        /// The figure's file.
        path: PathBuf,
        /// What plotters reported.
        message: String,
    },
    /// No TrueType font to render figure text with.
    #[error(
        "no TrueType font found for figure text (looked in {looked}); install fonts-dejavu-core or set STAB_FONT to a .ttf file"
    )]
    NoFont {
        /// The paths tried.
        looked: String,
    },
    /// Loading data failed.
    #[error("data: {0}")]
    Data(String),
    /// The controller or guard failed.
    #[error("controller: {0}")]
    Controller(String),
    /// A run produced outputs that fail the checks.
    #[error("output check failed: {0}")]
    Check(String),
}
