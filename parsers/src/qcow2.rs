//! qcow2: placeholder, filled by its module owner.
