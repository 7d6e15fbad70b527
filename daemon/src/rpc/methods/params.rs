//! Param fragments shared by several methods.

use protocol_core::Version;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// An OMEMO namespace: `urn:xmpp:omemo:2` or `eu.siacs.conversations.axolotl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct Namespace(#[schemars(schema_with = "crate::events::namespace_schema")] pub Version);
