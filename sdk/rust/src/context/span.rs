//! Timed spans: subtasks nested per thread (`timed`) or with explicit
//! parents (`span`, `Span::child`), sent to the host when they end, and the
//! matching kernel trace markers when the host asked for them.

use std::sync::atomic::Ordering;

use super::{lock, RunContext};
use crate::pb;

impl RunContext {
    /// Starts a timed subtask nested under the innermost `timed` span still
    /// open (or at the top); it ends when the guard is dropped:
    ///
    /// ```
    /// # fn erode(ctx: &pipehost::RunContext) {
    /// let _s = ctx.timed("erode");
    /// // ... work; the span ends at the end of the scope
    /// # }
    /// ```
    ///
    /// For spans on several threads use [`RunContext::span`] and
    /// [`Span::child`], whose parents are explicit.
    pub fn timed(&self, name: &str) -> Span<'_> {
        let mut stack = lock(&self.span_stack);
        let parent = stack.last().copied().unwrap_or(0);
        let s = self.new_span(name, parent, true);
        stack.push(s.id);
        s
    }

    /// Starts a top-level span with an explicit lifetime (ends on drop).
    pub fn span(&self, name: &str) -> Span<'_> {
        self.new_span(name, 0, false)
    }

    fn new_span(&self, name: &str, parent: u64, nested: bool) -> Span<'_> {
        let id = self.span_next.fetch_add(1, Ordering::Relaxed) + 1;
        if self.markers {
            // A nested span ends on its thread (B/E nest per thread); an
            // explicit one may end on another thread, so it is an async slice.
            if nested {
                crate::trace_marker::begin(name);
            } else {
                crate::trace_marker::async_begin(name, self.marker_base | id);
            }
        }
        Span {
            ctx: self,
            id,
            parent,
            name: name.to_string(),
            start: crate::monotonic_ns(),
            nested,
        }
    }

    /// Writes the stage's begin marker when the host asked for trace
    /// markers and reports whether it did (the caller then writes the end,
    /// on the same thread).
    pub(crate) fn begin_stage_marker(&mut self) -> bool {
        if self.req.trace_marker.is_empty() || !crate::trace_marker::open(&self.req.trace_marker) {
            return false;
        }
        self.markers = true;
        self.marker_base = crate::trace_marker::next_base();
        crate::trace_marker::begin(&self.req.stage);
        true
    }
}

/// A timed subtask; sent to the host when dropped (or [`Span::end`]ed).
pub struct Span<'c> {
    ctx: &'c RunContext,
    id: u64,
    parent: u64,
    name: String,
    start: i64,
    nested: bool,
}

impl<'c> Span<'c> {
    /// A span whose parent is this one.
    pub fn child(&self, name: &str) -> Span<'c> {
        self.ctx.new_span(name, self.id, false)
    }
    /// The span's id within the run (1, 2, ...).
    pub fn id(&self) -> u64 {
        self.id
    }
    /// Ends the span now (same as dropping it).
    pub fn end(self) {}
}

impl Drop for Span<'_> {
    fn drop(&mut self) {
        let end = crate::monotonic_ns();
        if self.ctx.markers {
            if self.nested {
                crate::trace_marker::end();
            } else {
                crate::trace_marker::async_end(&self.name, self.ctx.marker_base | self.id);
            }
        }
        if self.nested {
            let mut stack = lock(&self.ctx.span_stack);
            if let Some(i) = stack.iter().rposition(|&id| id == self.id) {
                stack.remove(i);
            }
        }
        (self.ctx.sink)(pb::RunEvent {
            event: Some(pb::run_event::Event::Span(pb::Span {
                id: self.id,
                parent_id: self.parent,
                name: std::mem::take(&mut self.name),
                start_ns: self.start,
                end_ns: end,
            })),
        });
    }
}
