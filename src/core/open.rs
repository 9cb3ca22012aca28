//! How a session receives: a live channel ([`Room::open`], which ends the session's older one) or one poll
//! answered from history ([`Room::poll`]).

use std::collections::VecDeque;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use crate::core::channel::{push_backlog, Channel};
use crate::core::room::{LiveChannel, Room};
use crate::error::AppError;
use crate::model::{Backlog, Delivery, Epoch, Missed, Seq, SessionRecord, Transport, Visit};

impl Room {
    /// Opens a live receiving channel for a session (WebSocket, SSE stream, held long poll), resuming after
    /// `since` (default: where the session's last channel stopped). Any older channel of the session ends. With
    /// `epoch` (the epoch the client's cursor is from), a cursor of another epoch gets a `gap` with
    /// `"reason":"epoch"`, then the room from its oldest retained event.
    ///
    /// Returns the channel and the session's record (for a welcome frame; the channel keeps only the token).
    ///
    /// # Errors
    /// [`AppError::UnknownSession`], [`AppError::TooManyConnections`], [`AppError::Unavailable`],
    /// [`AppError::ShuttingDown`].
    pub async fn open(
        &self,
        token: &str,
        transport: Transport,
        since: Option<Seq>,
        epoch: Option<&str>,
    ) -> Result<(Channel, SessionRecord), AppError> {
        if self.shared.shutdown.is_cancelled() {
            return Err(AppError::ShuttingDown);
        }
        let permit = self.shared.live.clone().try_acquire_owned().map_err(|_| AppError::TooManyConnections)?;
        // Events published while history is read are in the ring too, where the channel finds them after it.
        let added = self.shared.added.subscribe();
        let Claimed { record, backlog, generation, ended } = self.claim(token, transport, since, epoch).await?;
        // A cursor ahead of the room starts over at the head (after the `gap` event that says so): the channel's
        // cursor, which a long poll answers as `next` and a closing channel saves, must be one the room will reach.
        let start = match backlog.missed {
            Some(Missed::Ahead) => backlog.head,
            _ => backlog.after,
        };
        let mut channel = Channel {
            room: self.clone(),
            token: record.token.clone(),
            epoch: backlog.epoch.clone(),
            transport,
            generation,
            added,
            pending: VecDeque::new(),
            last: start,
            delivered: start,
            ended,
            pulse: self.shared.pulse.subscribe(),
            seen_down: false,
            seen_beat: self.shared.pulse.borrow().beat,
            stale: false,
            _permit: permit,
            _open: self.shared.metering.open(transport),
        };
        channel.queue_backlog(backlog);
        Ok((channel, record))
    }

    /// One poll, answered at once: up to `--poll-batch` retained events after `since` (default: the session's
    /// cursor). It renews the session's lease, moves its cursor, and ends any live channel the session had (it
    /// has moved to polling). A long poll that has something to answer at once is served here too, without
    /// opening a channel.
    ///
    /// `epoch`: as for [`Room::open`]. Returns the deliveries, the cursor after them (the answer's `next`) and the
    /// room's epoch.
    ///
    /// # Errors
    /// [`AppError::UnknownSession`], [`AppError::Unavailable`].
    pub async fn poll(
        &self,
        token: &str,
        transport: Transport,
        since: Option<Seq>,
        epoch: Option<&str>,
    ) -> Result<Polled, AppError> {
        let max = self.shared.config.poll_batch as usize;
        let visit = Visit { token, transport, lease_until_ms: self.lease_end(), since, max };
        let (cursor, backlog) = self.shared.broker.poll(visit).await?.ok_or(AppError::UnknownSession)?;
        let backlog = self.in_epoch(backlog, epoch, max).await?;
        let epoch = backlog.epoch.clone();
        self.end_channel(token);
        // Sized exactly: an empty answer, the commonest poll, allocates nothing.
        let mut items = Vec::with_capacity(backlog.events.len() + usize::from(backlog.missed.is_some()));
        let next = push_backlog(&mut items, backlog);
        if next > cursor {
            self.shared.broker.save_cursor(token, next, self.lease_end()).await?;
        }
        // Answered from history, not fanned out to a channel: the load counts them here (an empty answer, the
        // commonest poll, costs it nothing).
        if !items.is_empty() {
            self.metering().load().add(Instant::now(), items.len() as u64);
        }
        Ok(Polled { deliveries: items, next, epoch })
    }

    /// Makes `transport` the session's one receiving channel: any older channel of the session ends now. The
    /// session's technique is now `transport` and its lease runs from now (a poll does the same within
    /// [`Broker::poll`]: a long poll answered at once is rarely live at a reaper tick, so without it an active long
    /// poller would be announced as gone). Returns the record, what was retained after `since` (default: the
    /// session's cursor), the channel's generation and the token cancelled when this channel is replaced.
    async fn claim(
        &self,
        token: &str,
        transport: Transport,
        since: Option<Seq>,
        epoch: Option<&str>,
    ) -> Result<Claimed, AppError> {
        let visit = Visit { token, transport, lease_until_ms: self.lease_end(), since, max: usize::MAX };
        let (record, backlog) = self.shared.broker.open(visit).await?.ok_or(AppError::UnknownSession)?;
        let backlog = self.in_epoch(backlog, epoch, usize::MAX).await?;
        let ended = self.shared.shutdown.child_token();
        let mut local = self.local();
        local.generation += 1;
        let generation = local.generation;
        let old = local.channels.insert(token.to_owned(), LiveChannel { generation, ended: ended.clone() });
        drop(local);
        if let Some(old) = old {
            old.ended.cancel();
        }
        Ok(Claimed { record, backlog, generation, ended })
    }

    /// Ends the session's live channel in this process, if it has one (its client has moved to polling, or left).
    pub(super) fn end_channel(&self, token: &str) {
        let old = self.local().channels.remove(token);
        if let Some(old) = old {
            old.ended.cancel();
        }
    }

    /// Ends this process's hold on a session's channel, unless a newer channel has taken it over.
    pub(super) fn release(&self, token: &str, generation: u64) {
        let mut local = self.local();
        if local.channels.get(token).is_some_and(|c| c.generation == generation) {
            local.channels.remove(token);
        }
    }
}

/// A poll's answer ([`Room::poll`]).
#[derive(Debug)]
pub struct Polled {
    /// What to deliver, in order.
    pub deliveries: Vec<Delivery>,
    /// The cursor after them: the answer's `next`.
    pub next: Seq,
    /// The room's epoch: the answer's `epoch`, the numbering `next` belongs to.
    pub epoch: Epoch,
}

/// What [`Room::claim`] gives a channel being opened.
struct Claimed {
    record: SessionRecord,
    backlog: Backlog,
    generation: u64,
    ended: CancellationToken,
}
