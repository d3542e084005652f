//! Runs on the fd channel (docs/protocol.md, "Runs on the fd channel"): the
//! host sends a RUN with the RunRequest, the plugin answers with EVENTs and
//! one END. The stage runs exactly as for the gRPC Run call
//! ([`Plugin::execute`]); only the transport differs: one socket write and
//! one wake-up each way instead of an HTTP/2 stream and the hand-offs
//! between the gRPC server's tasks, which cost more than a small stage does.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use prost::Message as _;
use tonic::Status;

use super::Plugin;
use crate::context::EventSink;
use crate::pb;
use crate::run::panic_message;
use crate::shm::{Channel, Message, MsgType, Outgoing, RunRoute};
use crate::{log, Error};

/// The runs in flight on the fd channel: each one's cancel flag, by token.
#[derive(Default)]
pub(super) struct ChannelRuns(Mutex<HashMap<u64, Arc<AtomicBool>>>);

impl ChannelRuns {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Arc<AtomicBool>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Cancels every run in flight: the channel ended, nobody reads them.
    fn cancel_all(&self) {
        for flag in self.lock().values() {
            flag.store(true, Ordering::Relaxed);
        }
    }
}

/// The fd channel reader's handler for RUN and CANCEL. It holds the plugin
/// weakly: the plugin holds the reader's mailbox.
pub(super) struct Route {
    plugin: Weak<Plugin>,
    channel: Arc<Channel>,
    runner: tokio::runtime::Handle,
}

impl Route {
    /// Runs go to blocking threads of `runner`: pooled threads, so a run
    /// costs one hand-off and no thread start.
    pub(super) fn new(
        plugin: Weak<Plugin>,
        channel: Arc<Channel>,
        runner: tokio::runtime::Handle,
    ) -> Route {
        Route {
            plugin,
            channel,
            runner,
        }
    }
}

impl RunRoute for Route {
    fn route(&mut self, m: Message, payload: Vec<u8>) -> Result<(), Error> {
        match m.kind {
            MsgType::Run => {
                let plugin = self.plugin.upgrade().ok_or_else(|| {
                    Error::new(format!(
                        "fd channel: RUN for token {:#x} after the plugin stopped",
                        m.token
                    ))
                })?;
                let cancelled = Arc::new(AtomicBool::new(false));
                {
                    // Filed before the run starts, so a CANCEL right behind
                    // the RUN finds it.
                    let mut runs = plugin.runs.lock();
                    if runs.contains_key(&m.token) {
                        return Err(Error::new(format!(
                            "fd channel protocol violation: RUN for token {:#x}, which is already running",
                            m.token
                        )));
                    }
                    runs.insert(m.token, cancelled.clone());
                }
                let channel = self.channel.clone();
                // Never on this thread: the reader must keep reading.
                self.runner.spawn_blocking(move || {
                    plugin.channel_run(&channel, m.token, &payload, cancelled)
                });
                Ok(())
            }
            MsgType::Cancel => {
                // A CANCEL for a run that has ended (or never was) is ignored.
                if let Some(plugin) = self.plugin.upgrade() {
                    if let Some(flag) = plugin.runs.lock().get(&m.token) {
                        flag.store(true, Ordering::Relaxed);
                    }
                }
                Ok(())
            }
            other => Err(Error::new(format!(
                "fd channel protocol violation: a plugin never receives {other} (token {:#x})",
                m.token
            ))),
        }
    }

    fn ended(&mut self) {
        if let Some(plugin) = self.plugin.upgrade() {
            plugin.runs.cancel_all();
        }
    }
}

impl Plugin {
    /// Runs one RUN to its END on the calling (blocking) thread.
    fn channel_run(
        &self,
        channel: &Arc<Channel>,
        token: u64,
        payload: &[u8],
        cancelled: Arc<AtomicBool>,
    ) {
        // The Result is held back and leaves with the END, in one write: the
        // host waits for the END anyway, and wakes once instead of twice.
        let result = Arc::new(Mutex::new(None::<Vec<u8>>));
        let sink: EventSink = {
            let (channel, result) = (channel.clone(), result.clone());
            Arc::new(move |ev: pb::RunEvent| {
                let b = ev.encode_to_vec();
                if matches!(ev.event, Some(pb::run_event::Event::Result(_))) {
                    *result.lock().unwrap_or_else(|e| e.into_inner()) = Some(b);
                } else if let Err(e) = channel.send_payload(MsgType::Event, token, &b) {
                    // Only a broken channel refuses it, and the reader then
                    // ends the process.
                    log::error(&format!("run {token:#x}: {e}"));
                }
            })
        };
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let req = pb::RunRequest::decode(payload).map_err(|e| {
                Status::invalid_argument(format!(
                    "RUN message for token {token:#x}: not a RunRequest ({e})"
                ))
            })?;
            let stage = self.stage_for(&req)?;
            self.execute(&stage, req, sink, cancelled)
        }))
        .unwrap_or_else(|panic| {
            // The stage's own panics are caught in run::execute: this one is
            // the SDK's, and the host still needs the END.
            let what = panic_message(panic.as_ref());
            log::error(&format!("run {token:#x}: internal error: {what}"));
            Err(Status::internal(format!(
                "internal error in the Rust SDK: {what}"
            )))
        });
        let (end, result) = match &outcome {
            Ok(()) => (
                pb::RunEnd::default(),
                result.lock().unwrap_or_else(|e| e.into_inner()).take(),
            ),
            Err(st) => (
                pb::RunEnd {
                    code: st.code() as i32,
                    message: st.message().to_string(),
                },
                None,
            ),
        };
        let end = end.encode_to_vec();
        // Forgotten before the END goes out: once the host has it, the token
        // may name a new run, and a CANCEL for this one is ignored.
        self.runs.lock().remove(&token);
        let mut batch = Vec::with_capacity(2);
        if let Some(r) = &result {
            batch.push(Outgoing::Payload(MsgType::Event, token, r));
        }
        batch.push(Outgoing::Payload(MsgType::End, token, &end));
        if let Err(e) = channel.send_batch(&batch) {
            log::error(&format!("ending run {token:#x}: {e}"));
        }
    }
}

#[cfg(test)]
mod tests;
