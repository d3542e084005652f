//! The data plane (docs/protocol.md): memfd segments with kernel seals,
//! their mappings, and the fd channel that carries segment descriptors
//! between the host and this plugin with `SCM_RIGHTS`.
//!
//! Stage code never needs this module: [`RunContext`](crate::RunContext)
//! hands out typed views. It is public for tools and tests.

mod channel;
mod mailbox;
mod segment;

pub use channel::{
    decode_header, decode_run_header, encode_header, Channel, Message, MsgType, Outgoing, Received,
    ENV_FD_CHANNEL, HEADER_SIZE, MAGIC, MAX_FRAME, MAX_PAYLOAD, PLUGIN_TOKEN_BIT, VERSION,
};
pub(crate) use mailbox::RunRoute;
pub use mailbox::{ChannelEnd, Mailbox};
pub use segment::{seal_string, Mapping, Segment, Writer, SIZE_SEALS};
