// Package etcdstore is a session store for SCS
// (github.com/alexedwards/scs/v2) that keeps sessions in etcd, so every
// app server behind a load balancer shares them.
//
// It is a drop-in replacement for github.com/alexedwards/scs/etcdstore:
// New, NewWithPrefix, EtcdStore and the default prefix "scs:session:" are
// the same, so switching is a one-line import change, and sessions that
// store wrote are still read.
//
//	client, err := clientv3.New(clientv3.Config{
//		Endpoints:   []string{"http://10.0.0.1:2379", "http://10.0.0.2:2379", "http://10.0.0.3:2379"},
//		DialTimeout: 5 * time.Second,
//	})
//	if err != nil {
//		log.Fatal(err)
//	}
//	defer client.Close()
//
//	sessionManager := scs.New()
//	sessionManager.Store = etcdstore.New(client)
//
// # Expiry
//
// Each session is stored at prefix+token with its expiry beside the data.
// Find and All compare that expiry with the app server's clock, as SCS
// does with its cookies, and treat a session at or past its expiry as
// gone. etcd alone cannot be exact: a lease lasts at least 2 s
// (ceil(1.5 x election timeout)), the leader expires leases in a loop
// every 500 ms, and a leader change gives every lease its full TTL again
// (etcd server/lease/lessor.go).
//
// Sessions written by github.com/alexedwards/scs/etcdstore carry no
// expiry: that store expires them through their lease alone. Find and All
// return such a session only while its lease has at least one second
// left (one LeaseTimeToLive request per lease), so it is never returned
// after its expiry, and may be called expired up to a second early.
//
// # Leases
//
// Keys are bound to etcd leases so that etcd deletes them after they
// expire. Sessions that expire at about the same time share a lease (see
// WithLeaseBucket, WithMaxKeysPerLease): a lease grant is a raft write,
// as costly as the session's own Put, and every live lease costs the etcd
// server memory. A key outlives its session's expiry by less than the
// bucket width plus one second, hidden meanwhile by the expiry check.
//
// # Remembered tokens
//
// SCS's Load marks every session it finds modified when IdleTimeout is
// set, and a request commits its session at its end whatever happened to
// it meanwhile (scs v2.9.0 data.go). So a store that writes blindly
// brings back a session deleted while a request that loaded it was in
// flight: a logout on another device, or RenewToken's delete of the old
// token, undone.
//
// Each store therefore remembers, per process, what it last saw of each
// token in etcd: at which revision, whether the session was stored, its
// expiry and, with WithTouchInterval, its data. A commit of a token it has
// seen stored is one Txn that puts only while the key exists (compare
// version > 0): one round trip and one raft write, as a Put. A token it
// does not remember (a new session, a renewed token) is written with a
// plain Put.
//
// The memory holds at most 100,000 tokens by default
// (WithRememberedTokens) and forgets the least recently used first. A
// forgotten token falls back to a plain Put, so a delete holds against
// every request in flight as long as fewer tokens than the bound pass
// through the store between a request's Find and its Commit (about 10 s
// at 10,000 requests a second). All remembers every session it returns,
// so that SCS's Iterate holds the guard too; an All of more sessions than
// the bound forgets the first ones and those of requests in flight.
//
// With WithTouchInterval the store also keeps each remembered session's
// data, so that a commit that changes nothing but the expiry, as SCS makes
// on every request with IdleTimeout, can be skipped (see its
// documentation). Measured with BenchmarkMemory: about 230 bytes per
// token, and with the touch interval 515 to 803 bytes per token for
// sessions of 256 bytes.
//
// # Sessions by user
//
// With WithPrincipal, the store keeps an index of sessions by principal
// (the user a session belongs to, read from its data), written in each
// commit's own Txn and bound to the session's lease. FindByPrincipal lists
// a principal's live sessions and DeleteByPrincipal ends them, but the
// ones kept, in time that does not grow with the number of other
// sessions; reads verify each session against the index, so an entry
// that outlived its session yields nothing. The index lies under
// PrincipalIndexRange(prefix), outside every session prefix.
//
// # The read cache
//
// With WithReadCache, Find and All answer from a copy of the prefix range
// that one etcd watch keeps in memory, after a barrier that keeps them
// linearizable: a revision read linearizably after the read began, shared
// by concurrent reads, and the watch caught up to it (with a progress
// notification when no event would come), as Kubernetes' apiserver serves
// consistent reads from its watch cache (KEP-2340). While the copy is not
// in sync, reads go to etcd. The copy is the only one the store keeps of
// stored values; what the store remembers per token (above) is recorded
// from it as from a Get. The cache stays off on etcd servers older than
// 3.4.31 or 3.5.13 (etcd#15220). Close stops its watch.
//
// # Space
//
// etcd keeps every revision until it is compacted, and refuses every
// write once its database reaches --quota-backend-bytes, until its NOSPACE
// alarm is disarmed; a commit then fails with an error that wraps
// rpctypes.ErrNoSpace and names the way out. Turn on etcd's periodic
// auto-compaction, or, on a cluster that holds only sessions, run
// RunCompactor on the app servers. README.md and docs/capacity.md give
// measured sizes and the quota a deployment needs.
//
// # Deadlines and retries
//
// SCS calls the store with the request's context, which has no deadline,
// and the etcd client waits for a connection as long as the context
// lives. So each call gets a deadline, WithTimeout (5 s by default), or
// its context's if that comes first; All gets one per page.
//
// Within the deadline, a request that fails in a way that says it may not
// have reached a working leader (the connection broke, the member has no
// leader or saw the leader change, the server timed out its proposal, or
// no answer came within a third of the call's time) is tried again, with
// backoff from 25 ms doubling up to 500 ms. Every request the store makes
// is idempotent: a retried commit writes the same key, value and lease
// again. One consequence: a commit whose first attempt was applied but
// not acknowledged, and that another request for the same session
// overwrote before the retry, writes over that request; concurrent
// commits of one session are last-writer-wins in any case.
//
// Errors that trying again cannot fix return at once: permission denied,
// too large, out of space, a canceled context, a closed client.
//
// # Stats
//
// Stats returns counts of calls, skipped touches, refused resurrections,
// lease grants, retries and errors by kind, for an operator's dashboard;
// the example app exports them to Prometheus.
//
// # Errors
//
// Errors begin with "etcdstore:" and wrap their cause, so errors.Is works
// with context.Canceled, context.DeadlineExceeded (the call's deadline
// passed; a commit may then have been written or not) and the etcd client's
// rpctypes errors (for example rpctypes.ErrPermissionDenied). Following
// SCS's Store contract, a missing, expired or malformed token is not an
// error: Find returns found == false.
package etcdstore
