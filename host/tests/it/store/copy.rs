//! Copies between backends: export from one, import into the other, and the
//! copy answers every read and write as the original does.

use super::conformance::copy_between;
use super::*;

#[test]
fn memory_to_redb() {
    copy_between(&*memory().store, &*redb().store);
}

#[test]
fn redb_to_memory() {
    copy_between(&*redb().store, &*memory().store);
}

#[test]
fn memory_to_memory() {
    copy_between(&*memory().store, &*memory().store);
}

#[test]
fn redb_to_redb() {
    copy_between(&*redb().store, &*redb().store);
}

#[test]
fn redb_to_redis() {
    copy_between(&*redb().store, &*redis_fixture().store);
}

#[test]
fn redis_to_memory() {
    copy_between(&*redis_fixture().store, &*memory().store);
}

#[test]
fn redis_to_redis() {
    // Two prefixes on one server: the copy must not see the other's keys.
    let server = RedisServer::start();
    copy_between(&server.store("from"), &server.store("to"));
}
