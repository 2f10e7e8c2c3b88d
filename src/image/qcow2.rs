//! qcow2 layer: placeholder until its module owner lands it.

use super::Layer;
use crate::error::{Error, Result};
use crate::io::FileSource;

/// Opens a qcow2 image.
pub fn open(src: FileSource) -> Result<Box<dyn Layer>> {
    Err(Error::Unsupported {
        path: src.path().to_path_buf(),
        feature: "qcow2 images (not implemented yet)".into(),
    })
}
