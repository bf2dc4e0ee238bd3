//! Text -> positioned tree: the first stage of the policy pipeline (and of the Kubernetes
//! objects reader), with every problem as a diagnostic at its line and column.
//!
//! - [`tree`]: the document tree ([`tree::Node`], positions, limits) and its readers' entry
//!   points.
//! - `yaml` (serde-saphyr), `fastyaml` (the common block-style subset, fast), `json` (a strict
//!   reader): text -> tree.
//! - [`diag`]: diagnostics (`FILE:LINE:COL: message`) and their wording helpers.

pub(crate) mod diag;
mod fastyaml;
mod json;
#[cfg(test)]
mod tests;
pub(crate) mod tree;
mod yaml;
