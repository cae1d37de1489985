//! The message contract: plain serde types with a typed reply.

use serde::{Serialize, de::DeserializeOwned};

/// A message an actor accepts.
///
/// Messages are plain serde types so that the very same value can be handed
/// to a local actor in memory or serialised for an actor on another node;
/// a type that never leaves its node (`#[message(local)]`) needs no serde.
/// A variant that wants an answer carries a [`ReplyTo<T>`](crate::ReplyTo)
/// with its own reply type `T`; [`ActorHandle::ask`](crate::ActorHandle::ask)
/// builds it. Each message type also has an identity on the wire,
/// [`NAME`](Message::NAME). Derive it:
///
/// ```
/// use manta_actors::{Message, ReplyTo};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Serialize, Deserialize, Message)]
/// enum CounterMsg { Add(i64), Get(ReplyTo<i64>) }
///
/// assert!(CounterMsg::NAME.ends_with("::CounterMsg"));
/// ```
///
/// or implement it by hand:
///
/// ```
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Debug, Serialize, Deserialize)] enum CounterMsg { Add(i64) }
/// impl manta_actors::Message for CounterMsg {
///     const NAME: &'static str = "example.CounterMsg";
///     const DECODE: Option<manta_actors::wire::Decode<Self>> = Some(manta_actors::wire::decode::<Self>);
/// }
/// ```
pub trait Message: Sized + Send + 'static {
    /// The message type's identity: a lookup by name (local or on another
    /// node), a remote spawn and every frame on the wire check it, so two
    /// nodes agree on a type exactly when they give it the same name. It is
    /// written in the source (the derive's default is
    /// `concat!(module_path!(), "::", "TypeName")`), never computed by the
    /// compiler: `std::any::type_name` is not stable across compiler
    /// versions, and nodes built by different compilers must still
    /// understand each other. Keep it when moving a type; change it when
    /// its encoding changes incompatibly.
    const NAME: &'static str;

    /// How a message of this type arriving from another node is decoded:
    /// `Some(manta_actors::wire::decode::<Self>)` for a serde type (what the
    /// derive writes), `None` for a type that never leaves its node
    /// (`#[message(local)]`): its actors refuse requests from other nodes.
    const DECODE: Option<Decode<Self>>;
}

/// A decoder of messages from the wire (see [`Message::DECODE`]).
pub type Decode<M> = fn(&[u8]) -> Result<M, postcard::Error>;

/// Decodes a serde message from its postcard encoding: what
/// [`Message::DECODE`] holds for every type that crosses nodes.
pub fn decode<M: DeserializeOwned>(bytes: &[u8]) -> Result<M, postcard::Error> {
    postcard::from_bytes(bytes)
}

/// A message that can cross nodes: every serde [`Message`]. Finding an
/// actor cluster-wide, spawning one on another node and remote handles take
/// only these, so using a local-only type there does not compile.
pub trait RemoteMessage: Message + Serialize + DeserializeOwned {}

impl<M: Message + Serialize + DeserializeOwned> RemoteMessage for M {}

/// The identity used to check that a handle looked up by name (locally or
/// on another node) really speaks the message type the caller expects:
/// [`Message::NAME`].
pub fn message_type_name<M: Message>() -> &'static str {
    M::NAME
}

/// Encodes a message or reply for the wire (postcard) into a buffer of
/// exactly its size: a size pass first (cheap: byte strings count in one
/// step), so that a large value is written once, not copied through a
/// doubling buffer.
pub fn encode_wire<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, postcard::Error> {
    let size = postcard::experimental::serialized_size(value)?;
    postcard::to_extend(value, Vec::with_capacity(size))
}
