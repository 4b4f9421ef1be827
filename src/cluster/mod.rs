//! Running as a cluster: which node serves which actor.
//!
//! Today only the placement of actors, [`placement`]: partitions and their
//! owners among members, as pure functions. Membership in etcd, ownership
//! with fencing and forwarding build on it.

pub mod placement;
