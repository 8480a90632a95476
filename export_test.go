package etcdstore

// IsTombstone lets the external tests tell a deleted session's tombstone
// from a session when they read etcd directly.
var IsTombstone = isTombstone
