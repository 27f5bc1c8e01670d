//! Decoding the spanned YAML tree into the [`model`](super::model), collecting every
//! problem instead of stopping at the first.
//!
//! - [`reader`] reads one value as what it should be (a string, a duration, a mapping
//!   whose unknown keys are reported), recording its position;
//! - [`sections`] decodes each part of a description with it;
//! - [`rules`] says what a value may be and which values fit together: name formats,
//!   and what each provider requires or refuses, which gives the model its typed
//!   per-provider parts.

mod chaos;
mod compare;
mod deploy;
mod reader;
mod rules;
mod sections;

pub use reader::Positions;
pub use rules::{check_rds_identifier, check_version, FormatError, KeyRule};
pub use sections::{is_dns_name, is_zone_id};

use super::model::Description;
use super::yaml::Node;
use crate::diag::Diagnostic;

pub struct Decoder {
    pub diags: Vec<Diagnostic>,
    pub positions: Positions,
    /// Problems with what the provider requires and how values fit together: reported
    /// with the checks that need the whole description, once every part decoded.
    held_back: Vec<Diagnostic>,
}

impl Decoder {
    pub fn new() -> Self {
        Decoder { diags: Vec::new(), positions: Positions::default(), held_back: Vec::new() }
    }

    /// Decodes a whole description. Returns `None` when a part it cannot do without
    /// is wrong; every problem found is in `self.diags` (a description may come back
    /// with problems too, as long as the cross-checks can run on it).
    pub fn description(&mut self, root: &Node) -> Option<Description> {
        let desc = self.sections(root);
        if desc.is_some() {
            self.diags.append(&mut self.held_back);
        }
        desc
    }
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}
