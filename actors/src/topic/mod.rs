//! Publish-Subscribe (DESIGN §6.4): topics by name, subscriptions by
//! pattern, a bounded buffer per subscription.
//!
//! ```text
//!                          ┌─► [buffer, policy, filter] ─► subscriber A  (orders.*)
//!  publish("orders.eu") ──►│
//!    TopicHandle           ├─► [buffer, policy, filter] ─► subscriber B  (orders.>)
//!                          └─► durable sink ─► queue ─► consumers        (bind_queue)
//! ```
//!
//! ## Names and patterns
//!
//! A topic is named by a subject (`orders.eu.created`); subscriptions use
//! NATS-style patterns ([`Pattern`]): `*` matches exactly one token, `>` one
//! or more trailing tokens. [`Topics`] keeps a bus's topics by name and
//! attaches each subscription to every matching topic, including topics
//! created after it (as a NATS subscription hears subjects first published
//! after it subscribed).
//!
//! ## Delivery
//!
//! Plain subscriptions get **at-most-once** delivery, in publish order per
//! topic. Each has its own bounded buffer ([`SubscriptionConfig`]) and
//! overflow policy, so one slow subscriber affects nobody else unless its
//! policy says so:
//!
//! | policy | a full buffer… | the publisher | like |
//! |---|---|---|---|
//! | `block` (default) | makes the publisher wait | slows down to the slowest `block` subscriber | RabbitMQ flow control |
//! | `drop_oldest` | evicts its oldest message | never waits | tokio `broadcast`, Akka `dropHead` |
//! | `drop_newest` | drops the new message | never waits | NATS slow consumers |
//! | `reject` | refuses the new message | gets [`PublishError::Rejected`] (others got it) | RabbitMQ `reject-publish` |
//! | `dead_letter` | sends the new message to the dead letter hook | never waits | RabbitMQ `reject-publish-dlx` |
//!
//! Every message a policy drops is counted
//! (`actorbus_topic_dropped_total{name,reason}`) and in the subscription's
//! [`SubscriptionStats::lost`]: nothing is lost silently. A filter
//! ([`SubscriptionConfig::filter`]) is evaluated at publish time, so
//! filtered messages cost no buffer space.
//!
//! Subscribers are typed: a [`Subscription<T>`] is read with `next().await`;
//! an actix actor subscribes with [`Topics::subscribe_recipient`] and
//! receives [`Published<T>`] messages one at a time (never `do_send`: the
//! next message is sent when the previous one was handled, so the backlog
//! waits in the subscription's bounded buffer).
//!
//! A subscription ends when its [`Subscription`] is dropped, or when its
//! actor stops (found by the failed send, or by the topic's periodic check
//! of the actor's address); the topic forgets it
//! (`actorbus_topic_subscriptions_removed_total{reason}`) and releases
//! whatever it still buffered.
//!
//! ## Durable subscriptions
//!
//! A durable subscription is a [`DurableSink`] bound to the topic, normally
//! a named queue ([`TopicHandle::bind_queue`]), which gives its consumers
//! at-least-once delivery with ack, retry and dead-lettering. See
//! [`durable`] for the contract.
//!
//! ## Claim check
//!
//! [`TopicConfig::claim_check`] turns on the claim check above a size
//! threshold: a large payload is stored once (with one reference per
//! matching subscription), subscriptions buffer a ~100-byte ticket, and
//! [`Subscription::next`] claims, verifies and releases it, so subscribers
//! see the payload. A claim that fails (expired, missing, tampered) is
//! dead-lettered with reason `claim_check` and skipped. See
//! [`claim_check`](crate::claim_check).
//!
//! ## How publishing works
//!
//! Each topic has a [`TopicActor`] that owns its membership (it removes
//! dead subscriptions and keeps the gauge), but a publish does not go
//! through its mailbox: the [`TopicHandle`] reads the topic's current
//! routes (an `Arc` swapped whole when membership changes) and pushes into
//! each subscription's buffer itself, waking the subscriber only when it
//! was waiting. A subscriber takes everything buffered in one lock.
//!
//! ```
//! use actorbus_actors::backpressure::OverflowPolicy;
//! use actorbus_actors::topic::{SubscriptionConfig, Topics};
//!
//! actix_rt::System::new().block_on(async {
//!     let topics = Topics::new();
//!     let mut all_orders = topics.subscribe::<u32>("orders.>", SubscriptionConfig::new()).unwrap();
//!     let mut big_eu = topics
//!         .subscribe::<u32>("orders.eu.*", SubscriptionConfig::new().filter(|e| e.payload >= 100))
//!         .unwrap();
//!     let eu = topics.topic::<u32>("orders.eu.created").unwrap();
//!     let us = topics.topic::<u32>("orders.us.created").unwrap();
//!     eu.publish(250).await.unwrap();
//!     eu.publish(5).await.unwrap();
//!     us.publish(300).await.unwrap();
//!     let mut seen = Vec::new();
//!     for _ in 0..3 {
//!         seen.push(all_orders.next().await.unwrap().payload);
//!     }
//!     assert_eq!(seen, [250, 5, 300]);
//!     assert_eq!(big_eu.next().await.unwrap().payload, 250);
//!     assert_eq!(big_eu.stats().buffered, 0, "5 was filtered, 300 is not in the eu");
//!     let _ = OverflowPolicy::DropOldest;
//! });
//! ```

pub mod durable;
mod hub;
mod subject;
mod subscription;
#[allow(clippy::module_inception)]
mod topic;

pub use durable::{DurableError, DurableFuture, DurableSink};
pub use hub::{TopicError, Topics};
pub use subject::{validate_subject, InvalidSubject, Pattern};
pub use subscription::{Filter, Published, Subscription, SubscriptionConfig, SubscriptionId, SubscriptionStats};
pub use topic::{PublishError, PublishReceipt, Sweep, TopicActor, TopicConfig, TopicHandle};

pub(crate) use subscription::{Item, Offer};
