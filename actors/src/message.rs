//! The message contract: plain serde types with a typed reply.

use serde::{Serialize, de::DeserializeOwned};

/// A message an actor accepts.
///
/// Messages are plain serde types so that the very same value can be handed
/// to a local actor in memory or serialised for an actor on another node.
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
/// }
/// ```
pub trait Message: Serialize + DeserializeOwned + Send + 'static {
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
}

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
