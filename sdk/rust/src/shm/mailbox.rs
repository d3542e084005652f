//! The mailbox: reads the plugin's end of the fd channel on a thread and
//! files each received fd under its token until the Run that names it; on a
//! channel that carries runs it hands their messages to a [`RunRoute`].

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::channel::{Channel, Message, MsgType, Received};
use crate::Error;

/// Why a mailbox stopped reading.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChannelEnd {
    /// The peer sent CLOSE: it is shutting down cleanly.
    Closed,
    /// EOF: the peer's end is closed; for a plugin, the host is gone.
    Gone,
    /// A malformed message or a receive error.
    Broken(String),
}

/// Takes the messages of runs on the fd channel (RUN, EVENT, END, CANCEL)
/// from a mailbox's reader thread.
pub(crate) trait RunRoute: Send + 'static {
    /// A RUN, EVENT or END with its payload, or a CANCEL with an empty one,
    /// in the order they arrive. Runs on the reader, so it must not block:
    /// the fds behind the message wait for it. An error (a message this side
    /// never takes) ends the channel as a protocol violation.
    fn route(&mut self, m: Message, payload: Vec<u8>) -> Result<(), Error>;
    /// The channel ended; nothing more will be routed.
    fn ended(&mut self);
}

#[derive(Default)]
struct Pending {
    parcels: HashMap<u64, (Message, OwnedFd)>,
    /// Tokens of failed runs whose fds are closed as soon as they arrive.
    unwanted: std::collections::HashSet<u64>,
    end: Option<ChannelEnd>,
}

/// Reads a channel on a background thread and files each fd under its
/// token until a Run takes it (the fd and the Run race on two sockets).
#[derive(Clone)]
pub struct Mailbox {
    shared: Arc<(Mutex<Pending>, Condvar)>,
}

impl Mailbox {
    /// Starts the reader thread. `on_end` runs on it once the channel ends.
    /// The channel speaks the base protocol: a message of a run is unknown.
    pub fn start(ch: Arc<Channel>, on_end: impl FnOnce(ChannelEnd) + Send + 'static) -> Mailbox {
        Self::start_reader(ch, None, on_end)
    }

    /// [`start`](Self::start) for a channel that carries runs: their
    /// messages go to `runs`, whose `ended` is called before `on_end`.
    pub(crate) fn start_taking_runs(
        ch: Arc<Channel>,
        runs: Box<dyn RunRoute>,
        on_end: impl FnOnce(ChannelEnd) + Send + 'static,
    ) -> Mailbox {
        Self::start_reader(ch, Some(runs), on_end)
    }

    fn start_reader(
        ch: Arc<Channel>,
        mut runs: Option<Box<dyn RunRoute>>,
        on_end: impl FnOnce(ChannelEnd) + Send + 'static,
    ) -> Mailbox {
        let shared = Arc::new((Mutex::new(Pending::default()), Condvar::new()));
        let mb = Mailbox {
            shared: shared.clone(),
        };
        std::thread::Builder::new()
            .name("pipehost-fd-channel".into())
            .spawn(move || {
                let end = loop {
                    let got = match runs {
                        Some(_) => ch.recv_payload(),
                        None => ch.recv(),
                    };
                    let (m, fd, payload) = match got {
                        Ok(Received::Eof) => break ChannelEnd::Gone,
                        Ok(Received::Message(m, fd)) => (m, fd, None),
                        Ok(Received::Payload(m, payload)) => (m, None, Some(payload)),
                        Err(e) => break ChannelEnd::Broken(e.to_string()),
                    };
                    if m.kind == MsgType::Close {
                        break ChannelEnd::Closed;
                    }
                    if payload.is_some() || m.kind == MsgType::Cancel {
                        // Only recv_payload, read when there is a route, takes these.
                        let route = runs.as_mut().expect("a run's message without a route");
                        match route.route(m, payload.unwrap_or_default()) {
                            Ok(()) => continue,
                            Err(e) => break ChannelEnd::Broken(e.to_string()),
                        }
                    }
                    let fd = fd.expect("recv checks the fd count");
                    let (lock, cv) = &*shared;
                    let mut p = lock.lock().unwrap_or_else(|e| e.into_inner());
                    if p.parcels.contains_key(&m.token) {
                        drop(p);
                        break ChannelEnd::Broken(format!(
                            "fd channel protocol violation: token {:#x} received twice",
                            m.token
                        ));
                    }
                    if p.unwanted.remove(&m.token) {
                        drop(fd);
                        continue;
                    }
                    p.parcels.insert(m.token, (m, fd));
                    cv.notify_all();
                };
                // Runs in flight learn first: nobody is left to read them.
                if let Some(mut route) = runs.take() {
                    route.ended();
                }
                // The channel, and this thread's hold on the filed fds, go
                // before anyone learns the channel ended: whoever waits for
                // the end then finds no fd still open on this thread's behalf.
                drop(ch);
                {
                    let (lock, cv) = &*shared;
                    lock.lock().unwrap_or_else(|e| e.into_inner()).end = Some(end.clone());
                    cv.notify_all();
                }
                drop(shared);
                on_end(end);
            })
            .expect("starting the fd channel reader");
        mb
    }

    /// Waits up to `timeout` for the fd sent under `token` and hands it over.
    pub fn take(&self, token: u64, timeout: Duration) -> Result<(Message, OwnedFd), Error> {
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*self.shared;
        let mut p = lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(parcel) = p.parcels.remove(&token) {
                return Ok(parcel);
            }
            if let Some(end) = &p.end {
                return Err(Error::new(format!(
                    "fd channel: token {token:#x} never arrived: channel ended ({end:?})"
                )));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::new(format!(
                    "fd channel: waiting for token {token:#x}: timed out after {timeout:?} (the host sends every fd before the Run)"
                )));
            }
            p = cv
                .wait_timeout(p, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Gives up on `tokens` (a run that failed before taking them): fds
    /// already here are closed now, the others as soon as they arrive.
    pub fn discard(&self, tokens: impl IntoIterator<Item = u64>) {
        let mut p = self.shared.0.lock().unwrap_or_else(|e| e.into_inner());
        for t in tokens {
            if p.parcels.remove(&t).is_none() {
                p.unwanted.insert(t);
            }
        }
    }

    /// Why the channel ended, or `None` while it is open.
    pub fn end(&self) -> Option<ChannelEnd> {
        self.shared
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .end
            .clone()
    }
}
