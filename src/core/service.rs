//! The room's service to a participant: join, send (a text or a `/nick`), leave, and who is online. Every
//! refusal is an [`AppError`]; every event it makes is published through the broker and fanned out here at once.

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::time::Instant;

use uuid::Uuid;

use crate::core::broker::{Durability, Sequenced};
use crate::core::nickname::{clean_nickname, guest_number};
use crate::core::room::Room;
use crate::error::AppError;
use crate::model::{
    now_ms, BrokerError, Draft, Participant, Presence, Published, SendKey, Seq, SessionRecord, Transport, PRESENCE_MAX,
};

/// Texts of one participant numbered by [`Room::post_all`] (or refused), waiting to be durable.
#[must_use = "a text's outcome is known once it is durable"]
pub struct Posted {
    /// Each text's outcome known already (a refusal, a repeated rename), in order; `None` for a text sent.
    outcomes: Vec<Option<Result<Seq, AppError>>>,
    /// The numbers of the texts sent, in order, or why none was.
    published: Result<Vec<Seq>, BrokerError>,
    /// When the texts sent are durable.
    durable: Durability,
}

impl Posted {
    /// Waits until the texts sent are durable, then answers each text's outcome, in order: its `seq`, or why it
    /// was refused. A text numbered (and seen by readers) that could not be written is answered
    /// [`AppError::Unavailable`], never its `seq`.
    pub async fn outcomes(self) -> Vec<Result<Seq, AppError>> {
        let written = self.durable.wait().await;
        let mut published = match (self.published, written) {
            (Ok(seqs), Ok(())) => Ok(seqs.into_iter()),
            (Err(error), _) | (Ok(_), Err(error)) => Err(error),
        };
        self.outcomes
            .into_iter()
            .map(|outcome| match (outcome, published.as_mut()) {
                (Some(outcome), _) => outcome,
                (None, Err(error)) => Err(AppError::from(error.clone())),
                (None, Ok(seqs)) => seqs.next().ok_or_else(|| AppError::Unavailable("no answer".into())),
            })
            .collect()
    }
}

impl Room {
    /// A new participant joins: a session is created and everyone is told `<nickname> 来了`.
    ///
    /// Returns the session and the cursor just before its join notice, so a receiver opened from there sees
    /// its own arrival, as in the seed.
    ///
    /// # Errors
    /// [`AppError::BadNickname`] for a refused nickname, [`AppError::RoomFull`], [`AppError::Unavailable`],
    /// [`AppError::ShuttingDown`].
    pub async fn join(
        &self,
        transport: Transport,
        nickname: Option<&str>,
        seed: bool,
    ) -> Result<(SessionRecord, Seq), AppError> {
        if self.shared.shutdown.is_cancelled() {
            return Err(AppError::ShuttingDown);
        }
        let nickname = nickname.map(|n| clean_nickname(n, self.shared.config.max_nickname_chars)).transpose()?;
        let guest = self.shared.broker.next_guest().await?;
        if let Some(name) = &nickname {
            if guest_number(name).is_some() && *name != format!("游客{guest}") {
                return Err(AppError::BadNickname(format!(
                    "{name} is a guest's name: guest names are given, not taken"
                )));
            }
        }
        let record = SessionRecord {
            token: Uuid::new_v4().simple().to_string(),
            id: Uuid::new_v4().to_string(),
            nickname: nickname.unwrap_or_else(|| format!("游客{guest}")),
            guest,
            transport,
            since_ms: now_ms(),
            // Saved with the session, so that its first channel opened without `since=` starts here (never at the
            // start of the retained history): at most the events between this and the join notice are delivered.
            cursor: self.head(),
            seed,
        };
        self.shared.broker.create_session(&record, self.lease_end(), self.shared.config.max_sessions).await?;
        if self.crowded().await {
            // A big room hears one notice a second naming how many came, not N notices to N people (N²).
            self.shared.crowd.joined.fetch_add(1, Ordering::Relaxed);
            let cursor = record.cursor;
            return Ok((record, cursor));
        }
        let draft = Draft::join(record.id.clone(), record.nickname.clone(), record.transport);
        let joined = match self.publish(draft).await {
            Ok(event) => event,
            Err(error) => {
                // Leave no silent participant behind if the notice could not be published.
                let _ = self.shared.broker.remove_session(&record.token).await;
                return Err(error.into());
            }
        };
        let mut record = record;
        let cursor = joined.seq - 1;
        if cursor > record.cursor {
            // Others spoke between the session's creation and its notice (or this process's head lagged the
            // broker's): the join's `seq` and the saved cursor must be the same, or the first channel would
            // replay what the answer said was before the join.
            self.shared.broker.save_cursor(&record.token, cursor, self.lease_end()).await?;
            record.cursor = cursor;
        }
        Ok((record.clone(), cursor))
    }

    /// [`Room::join`] for a request from `client` (its IP address; `None` when unknown, which no per-client limit
    /// applies to): the session counts against the client until it leaves or its lease runs out.
    ///
    /// # Errors
    /// [`AppError::TooManySessions`] when the client holds `--max-sessions-per-client` sessions, and those of
    /// [`Room::join`].
    pub async fn join_from(
        &self,
        client: Option<IpAddr>,
        transport: Transport,
        nickname: Option<&str>,
        seed: bool,
    ) -> Result<(SessionRecord, Seq), AppError> {
        // The seat is taken before the join, so joins racing from one client cannot pass the limit together;
        // it is given back if the join fails.
        let seat = self.shared.clients.seat(client)?;
        let joined = self.join(transport, nickname, seed).await?;
        seat.bind(&joined.0.token);
        Ok(joined)
    }

    /// [`Room::send`] for a request from `client`: the text counts against the client's budget
    /// (`--client-rate-limit`), whichever of its sessions it speaks for.
    ///
    /// # Errors
    /// [`AppError::ClientRateLimited`], and those of [`Room::post`].
    pub async fn send_from(
        &self,
        client: Option<IpAddr>,
        token: &str,
        text: &str,
        key: Option<&str>,
    ) -> Result<(Seq, Transport), AppError> {
        self.shared.clients.text(client)?;
        self.send(token, text, key).await
    }

    /// Looks a session up.
    ///
    /// # Errors
    /// [`AppError::UnknownSession`] when there is none (or it expired); [`AppError::Unavailable`].
    pub async fn session(&self, token: &str) -> Result<SessionRecord, AppError> {
        self.shared.broker.session(token).await?.ok_or(AppError::UnknownSession)
    }

    /// A participant sends a text: a chat message, or `/nick NAME` to rename. Returns the event's `seq` and the
    /// sender's technique (whose counters the request belongs to).
    ///
    /// # Errors
    /// [`AppError::RateLimited`], [`AppError::EmptyText`], [`AppError::TextTooLong`], [`AppError::BadNickname`],
    /// [`AppError::NicknameTaken`], [`AppError::UnknownSession`], [`AppError::Unavailable`],
    /// [`AppError::ShuttingDown`].
    pub async fn post(&self, token: &str, text: &str) -> Result<(Seq, Transport), AppError> {
        self.send(token, text, None).await
    }

    /// [`Room::post`], with the client's key for this send (a `/ws?ack=1` frame's `ref`, a POST's
    /// `Idempotency-Key`): a key the session already used, within the retained history, publishes nothing again
    /// and answers the first send's `seq`, whatever process the first send reached. A repeated `/nick` renames
    /// nothing again either (the session's nickname may have changed since).
    ///
    /// # Errors
    /// As [`Room::post`].
    pub async fn send(&self, token: &str, text: &str, key: Option<&str>) -> Result<(Seq, Transport), AppError> {
        if self.shared.shutdown.is_cancelled() {
            return Err(AppError::ShuttingDown);
        }
        let mut record = self.session(token).await?;
        let transport = record.transport;
        let key = key.map(|key| SendKey { session: token, key });
        let published = match self.draft(&mut record, text, key).await? {
            Err(seq) => return Ok((seq, transport)),
            Ok(draft) => match key {
                Some(key) => self.publish_once(draft, key).await?,
                None => self.publish(draft).await?.seq,
            },
        };
        Ok((published, transport))
    }

    /// Several texts of one participant from `client`, in order, each with its key if any, as
    /// [`Room::send_from`] each (the same checks, limits, keys and errors, text by text), published together: one
    /// step for the broker (with the durable broker, one commit), so that a sender whose texts arrive faster than
    /// one sync each is not held to one text per sync. Answers once the texts are numbered (and fanned out);
    /// [`Posted::outcomes`] gives each text's outcome once they are durable, so the sender's next texts may be
    /// numbered meanwhile.
    pub async fn post_all(&self, client: Option<IpAddr>, token: &str, texts: &[(String, Option<String>)]) -> Posted {
        let refused = |error: &dyn Fn() -> AppError| Posted {
            outcomes: texts.iter().map(|_| Some(Err(error()))).collect(),
            published: Ok(Vec::new()),
            durable: Durability::now(),
        };
        if self.shared.shutdown.is_cancelled() {
            return refused(&|| AppError::ShuttingDown);
        }
        let mut record = match self.session(token).await {
            Ok(record) => record,
            // The lookup can only fail as an unknown session or an unavailable store: each text is told so.
            Err(AppError::UnknownSession) => return refused(&|| AppError::UnknownSession),
            Err(error) => return refused(&|| AppError::Unavailable(error.to_string())),
        };
        let mut outcomes = Vec::with_capacity(texts.len());
        let mut sends = Vec::with_capacity(texts.len());
        for (text, key) in texts {
            let key = key.as_deref().map(|key| SendKey { session: token, key });
            let drafted = match self.shared.clients.text(client) {
                Ok(()) => self.draft(&mut record, text, key).await,
                Err(error) => Err(error),
            };
            match drafted {
                Ok(Ok(draft)) => {
                    sends.push((draft, key));
                    outcomes.push(None);
                }
                Ok(Err(seq)) => outcomes.push(Some(Ok(seq))),
                Err(error) => outcomes.push(Some(Err(error))),
            }
        }
        // Each text drafted waits for its place in the batch numbered, in order.
        match self.sequence_all(sends).await {
            Ok(Sequenced { published, durable }) => {
                Posted { outcomes, published: Ok(published.iter().map(Published::seq).collect()), durable }
            }
            Err(error) => Posted { outcomes, published: Err(error), durable: Durability::now() },
        }
    }

    /// The event a participant's text makes: a chat message, or for `/nick NAME` a rename (saved in `record` and
    /// in the broker now, before the event is published). `Ok(Err(seq))`: a rename under a `key` already used,
    /// whose event is `seq` (nothing is renamed again).
    pub(super) async fn draft(
        &self,
        record: &mut SessionRecord,
        text: &str,
        key: Option<SendKey<'_>>,
    ) -> Result<Result<Draft, Seq>, AppError> {
        let token = record.token.clone();
        let token = token.as_str();
        let transport = record.transport;
        self.take_rate_token(token)?;
        let draft = if let Some(name) = text.strip_prefix("/nick ") {
            // A rename is saved before it is published: a repeat must be caught before that, or a resent old
            // `/nick` would quietly rename back. (Renames are rare: the extra read costs nothing that matters.)
            if let Some(key) = key {
                if let Some(seq) = self.shared.broker.published(key).await? {
                    return Ok(Err(seq));
                }
            }
            let new = clean_nickname(name, self.shared.config.max_nickname_chars)?;
            if guest_number(&new).is_some() && new != format!("游客{}", record.guest) {
                return Err(AppError::BadNickname(format!(
                    "{new} is a guest's name: guest names are given, not taken"
                )));
            }
            // Checked against who is online now (one read of the presence, as rare as a rename); two renames to
            // the same name at the same instant in two processes can both pass.
            if new != record.nickname
                && self
                    .shared
                    .broker
                    .presence()
                    .await?
                    .iter()
                    .any(|other| other.token != token && other.nickname == new)
            {
                return Err(AppError::NicknameTaken(new));
            }
            let old = std::mem::replace(&mut record.nickname, new.clone());
            if !self.shared.broker.save_session(record).await? {
                return Err(AppError::UnknownSession);
            }
            Draft::rename(record.id.clone(), old, new)
        } else {
            if text.trim().is_empty() {
                return Err(AppError::EmptyText);
            }
            let max = self.shared.config.max_message_chars;
            if text.len() > max && text.chars().count() > max {
                return Err(AppError::TextTooLong(max));
            }
            Draft::message(record.id.clone(), record.nickname.clone(), text.to_owned(), transport)
        };
        Ok(Ok(draft))
    }

    /// A participant leaves now: everyone is told `<nickname> 走了`. `false` if it had already gone.
    ///
    /// # Errors
    /// [`AppError::Unavailable`].
    pub async fn leave(&self, token: &str) -> Result<bool, AppError> {
        let removed = self.shared.broker.remove_session(token).await?;
        self.forget(token);
        match removed {
            Some(record) => {
                self.announce_leave(&record).await;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Drops what this process holds for a session: its live channel ends, its rate bucket goes.
    pub(super) fn forget(&self, token: &str) {
        self.end_channel(token);
        self.local().buckets.forget(token);
        self.shared.clients.release(token);
        self.shared.metering.sessions().forget(token);
    }

    pub(super) async fn announce_leave(&self, record: &SessionRecord) {
        if self.crowded().await {
            self.shared.crowd.left.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let draft = Draft::leave(record.id.clone(), record.nickname.clone());
        if let Err(error) = self.publish(draft).await {
            tracing::warn!(%error, nickname = %record.nickname, "could not announce a leave");
        }
    }

    /// Whether the room is above `--coalesce-above` participants, where joins and leaves are announced in bulk.
    pub(super) async fn crowded(&self) -> bool {
        match self.shared.broker.online().await {
            Ok(online) => online > self.shared.config.coalesce_above,
            Err(_) => false,
        }
    }

    /// Everyone online, oldest first.
    ///
    /// # Errors
    /// [`AppError::Unavailable`].
    pub async fn presence(&self) -> Result<Vec<SessionRecord>, AppError> {
        Ok(self.shared.broker.presence().await?)
    }

    /// Who is online now, as a welcome gives it: how many, and the oldest [`PRESENCE_MAX`] in join order. It
    /// costs one broker call reading at most that many records, whatever the number online; it is made once
    /// per join, channel opened or poll that asks for it, never per delivery.
    ///
    /// # Errors
    /// [`AppError::Unavailable`].
    pub async fn presence_now(&self) -> Result<Presence, AppError> {
        let (clientcount, oldest) = self.shared.broker.oldest(PRESENCE_MAX).await?;
        let participants: Vec<Participant> = oldest.iter().map(Participant::from).collect();
        Ok(Presence { more: clientcount > participants.len() as u64, clientcount, participants })
    }

    /// One page of who is online, in join order: how many are online, and at most `max` of them whose guest
    /// number is above `after` (0: from the first). The next page starts after the last one's guest number.
    ///
    /// # Errors
    /// [`AppError::Unavailable`].
    pub async fn presence_page(&self, after: u64, max: usize) -> Result<(u64, Vec<SessionRecord>), AppError> {
        Ok(self.shared.broker.page(after, max).await?)
    }

    /// How many participants are online.
    ///
    /// # Errors
    /// [`AppError::Unavailable`].
    pub async fn online(&self) -> Result<u64, AppError> {
        Ok(self.shared.broker.online().await?)
    }

    /// Takes one token from the session's bucket (`--rate-limit`, `--rate-burst`).
    pub(super) fn take_rate_token(&self, token: &str) -> Result<(), AppError> {
        let rate = self.shared.config.rate_limit;
        if rate <= 0.0 {
            return Ok(());
        }
        let burst = self.shared.config.rate_burst.max(1.0);
        self.local().buckets.take(token, rate, burst, Instant::now())
    }
}
