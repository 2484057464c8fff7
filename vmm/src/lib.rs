//! The vsplice VMM library.
