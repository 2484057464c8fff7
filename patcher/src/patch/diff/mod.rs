//! `vsplice patch build --diff`: a live patch from a source fix alone.

pub mod compare;
pub mod view;
