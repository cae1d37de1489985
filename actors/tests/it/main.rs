//! Integration tests of manta-actors through its public API.
#![allow(missing_docs)]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail the test by panicking

mod basics;
mod kinds;
mod monitors;
mod names;

use manta_actors::{Actor, ActorError, Context, ExitReason, Message, ReplyTo};
use serde::{Deserialize, Serialize};

/// A counter that can be told to misbehave. Requests carry their reply.
#[derive(Debug, Serialize, Deserialize, Message)]
#[message(name = "manta.test.Cmd")]
pub enum Cmd {
    Add(i64),
    /// Adds, then answers the new value.
    AddGet(i64, ReplyTo<i64>),
    Get(ReplyTo<i64>),
    Fail(String),
    /// Fails while handling a request.
    FailAsked(String, ReplyTo<i64>),
    Panic(String),
    Stop(ExitReason),
    /// Never returns: the actor ignores graceful stops while in here.
    Hang,
}

#[derive(Debug, Default)]
pub struct Counter {
    pub value: i64,
    /// Notified when the actor enters `Hang`.
    pub hanging: std::sync::Arc<tokio::sync::Notify>,
}

impl Actor for Counter {
    type Msg = Cmd;

    async fn handle(&mut self, msg: Cmd, ctx: &mut Context<Cmd>) -> Result<(), ActorError> {
        match msg {
            Cmd::Add(n) => self.value += n,
            Cmd::AddGet(n, r) => {
                self.value += n;
                r.send(self.value);
            }
            Cmd::Get(r) => {
                r.send(self.value);
            }
            Cmd::Fail(why) | Cmd::FailAsked(why, _) => return Err(why.into()),
            Cmd::Panic(why) => panic!("{why}"),
            Cmd::Stop(reason) => ctx.stop(reason),
            Cmd::Hang => {
                self.hanging.notify_one();
                futures::future::pending::<()>().await
            }
        }
        Ok(())
    }
}

/// Another message type, for wrong-type lookups.
#[derive(Debug, Serialize, Deserialize, Message)]
#[message(name = "manta.test.Other")]
pub struct Other;

pub const T: std::time::Duration = std::time::Duration::from_secs(5);
