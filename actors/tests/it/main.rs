//! Integration tests of manta-actors through its public API.
#![allow(missing_docs)]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail the test by panicking

mod basics;
mod kinds;
mod monitors;
mod names;

use manta_actors::{Actor, ActorError, Context, ExitReason, Message};
use serde::{Deserialize, Serialize};

/// A counter that can be told to misbehave.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Cmd {
    Add(i64),
    Get,
    Fail(String),
    Panic(String),
    Stop(ExitReason),
    /// Never returns: the actor ignores graceful stops while in here.
    Hang,
}

impl Message for Cmd {
    type Reply = i64;
    const NAME: &'static str = "manta.test.Cmd";
}

#[derive(Debug, Default)]
pub struct Counter {
    pub value: i64,
    /// Notified when the actor enters `Hang`.
    pub hanging: std::sync::Arc<tokio::sync::Notify>,
}

impl Actor for Counter {
    type Msg = Cmd;

    async fn handle(&mut self, msg: Cmd, ctx: &mut Context<Cmd>) -> Result<i64, ActorError> {
        match msg {
            Cmd::Add(n) => self.value += n,
            Cmd::Get => {}
            Cmd::Fail(why) => return Err(why.into()),
            Cmd::Panic(why) => panic!("{why}"),
            Cmd::Stop(reason) => ctx.stop(reason),
            Cmd::Hang => {
                self.hanging.notify_one();
                futures::future::pending::<()>().await
            }
        }
        Ok(self.value)
    }
}

/// Another message type, for wrong-type lookups.
#[derive(Debug, Serialize, Deserialize)]
pub struct Other;

impl Message for Other {
    type Reply = ();
    const NAME: &'static str = "manta.test.Other";
}

pub const T: std::time::Duration = std::time::Duration::from_secs(5);
