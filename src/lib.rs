pub use actorbus_actors as actors;
