//! Telling people: the channels a policy configures, the messages
//! rollwatch sends, and their delivery through the persisted outbox.

pub mod channels;
pub mod dedupe;
pub mod deliver;
pub mod message;
