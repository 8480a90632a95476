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
//		// Drop a connection to a member that stopped answering, so that
//		// no request waits on it (see Deadlines and retries).
//		DialKeepAliveTime:    10 * time.Second,
//		DialKeepAliveTimeout: 2 * time.Second,
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
// left (one LeaseTimeToLive request per lease). That is as exact as the
// lease: a session may be called expired up to a second early, and, since
// a new leader gives every lease its full TTL again (lessor.go, Promote),
// returned after its expiry, by up to its lease's TTL, when the leader
// changed during its life. The first commit of such a session writes it
// with its expiry in the envelope, exact from then on.
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
// # Conditional writes
//
// SCS's Load marks every session it finds modified when IdleTimeout is
// set, and a request commits its session at its end whatever happened to
// it meanwhile (scs v2.9.0 data.go). And an attempt of a write that timed
// out or lost its connection may still reach etcd later, held in a stalled
// connection or as a proposal a follower forwarded to its old leader. So
// a store that writes blindly undoes a logout on another device, or an
// acknowledged commit of the user's next request.
//
// Every commit is therefore a Txn conditional on the state it was made
// against, as Kubernetes makes every update: the key's mod revision when
// the store last saw it (the request's own Find), or its absence for a
// token the store does not remember or saw ended. An attempt that arrives
// after a later write of the key, or after the session ended, writes
// nothing. When the compare fails, the Txn's Else branch returns what the
// key holds in the same round trip, and the commit does the same whatever
// the app server remembers:
//
//   - a tombstone: the session was ended; the commit writes nothing and
//     returns nil (the user's next request starts a new session);
//   - nothing: etcd removed the key with its lease after the session's
//     expiry; the commit writes the session again, on the key's absence,
//     as it would a new one (an expiry ends a session for readers: a
//     request that loaded it before its expiry may commit it with a new
//     one, as with every SCS store);
//   - another request's commit of the session: the commit is made again on
//     its revision, so concurrent commits of one session end with the last
//     and none fails.
//
// # Ending a session
//
// Every path that ends a session (Delete, DeleteByPrincipal, a commit
// whose expiry has passed) leaves a tombstone at its key, whatever the key
// holds (a live session, an expired one, nothing), that no commit writes
// over. A tombstone is 21 bytes, why and when the session ended (Ended
// reads them), on a lease that lasts the store's request
// bound (WithMaxRequestDuration, 5 minutes by default) from the end: the
// longest a request may run from its Find of a session to its commit. So
// no request in flight when a session ended, on any app server, whatever
// it remembers, brings it back. With WithPrincipal, a session's key and
// index entry also last the request bound past its expiry, so that
// DeleteByPrincipal finds and ends a session whose expiry passed while a
// request that loaded it was in flight.
//
// What is left, with what opens each window in practice:
//
//   - a request that commits more than the request bound after its Find
//     (a handler slower than its server's timeouts allow; SCS commits
//     before a response is written, so a long stream does not count) may
//     bring back a session ended meanwhile, once the tombstone's lease
//     ended;
//   - a write held in the network (a stalled TCP connection, a proposal
//     forwarded to an old leader) for longer than the request bound, made
//     on the key's absence (a new session's first commit, or a commit of
//     a token the app server forgot or saw ended), may write it again;
//     one made on a revision never lands after another write;
//   - a session ended while etcd is out of space has its key deleted, not
//     tombstoned (etcd refuses every put), so a request in flight may
//     commit it again once space is freed;
//   - a session that the replaced store (github.com/alexedwards/scs/etcdstore)
//     or any other plain Delete removes leaves no tombstone;
//   - a commit whose attempt of unknown fate landed and was overwritten, if
//     the key's history was compacted or is deeper than 8 versions, is
//     made again over the newer write;
//   - a delete whose call failed may still land later (docs/design.md).
//
// # Remembered tokens
//
// Each store remembers, per process, what it last saw of each token in
// etcd: its key's mod revision, whether the session was stored, its expiry
// and, with WithTouchInterval, its data. The memory holds at most 100,000
// tokens by default (WithRememberedTokens) and forgets the least recently
// used first. A forgotten token costs its commit one more round trip,
// since it is made on the key's absence first; what a commit does never
// depends on what the store remembers (see Ending a session). All remembers every session it returns, so that
// SCS's Iterate commits on the revisions it read.
//
// With WithTouchInterval the store also keeps each remembered session's
// data, so that a commit that changes nothing but the expiry, as SCS makes
// on every request with IdleTimeout, can be skipped (see its
// documentation). What that costs in memory: docs/performance.md.
//
// # Sessions by user
//
// With WithPrincipal, the store keeps an index of sessions by principal
// (the user a session belongs to, read from its data), written in each
// commit's own Txn and bound to the session's lease. FindByPrincipal lists
// a principal's live sessions and DeleteByPrincipal ends them, all but
// the ones the caller keeps, in time that does not grow with the number of
// other sessions; reads verify each session against the index, so an
// entry that outlived its session yields nothing. The index lies under
// PrincipalIndexPrefix(prefix), outside every session prefix.
//
// # Session limits
//
// WithSessionLimit caps each principal's live sessions. A commit that
// gives a session a principal it did not have (a login) reads the
// principal's sessions and writes in one Txn that holds only if no other
// session of the principal was indexed since the read, ending the oldest
// sessions (EndOldest) or failing with ErrSessionLimit (RefuseNew): no
// interleaving of logins on any number of app servers gives a principal
// more live sessions than its limit. Sessions of the principal that expired
// while etcd still holds their keys are ended in the same Txn, so that a
// request in flight cannot commit one back past the limit. Other commits
// are not checked. Ended tells a request whose session was ended why (see
// limit.go and docs/design.md).
//
// # Session events
//
// Events delivers what happens to the store's sessions (created, changed
// with WithChanges, ended with its reason, expired at its expiry) in
// revision order, from a Position the consumer saves after each event:
// every later event once, across the consumer's restarts, member failures
// and leader changes, and an explicit EventResync when etcd compacted the
// position away. It makes one watch per stream and no write; expiries are
// confirmed by one read when they pass. See events.go and docs/design.md
// for what is guaranteed and what is left.
//
// # The read cache
//
// With WithReadCache, Find and All answer from a copy of the prefix range
// that one etcd watch keeps in memory, after a barrier that keeps them
// linearizable: a revision read linearizably after the read began, shared
// by concurrent reads, and the watch caught up to it (with a progress
// notification when no event would come), as Kubernetes' apiserver serves
// consistent reads from its watch cache (KEP-2340). While the copy is not
// in sync, reads go to etcd. What the store remembers per token (above)
// is recorded from the copy as from a Get. The cache stays off on etcd
// servers older than 3.4.31 or 3.5.13, whose progress notifications
// Kubernetes does not trust (etcd#15220, etcd#17507, KEP-2340), and on a
// server that refuses to tell the client's user its version (etcd 3.5.28
// to 3.5.31 and 3.6.0 to 3.6.11 tell it to the root role alone);
// ReadCacheReady says why, Stats.CacheOff that it is off. Close stops
// its watch.
//
// # Group commit and batched reads
//
// Concurrent calls share etcd requests (WithBatching, on by default):
// while two commit requests of the store's are in flight, or one read
// request, other calls of the kind queue, and the next request carries
// all of them, commits in one Txn of one
// nested Txn each (one raft entry for all, each with its own compare and
// outcome), reads in one read-only Txn of Gets (one linearizable read;
// Finds of one session queued together share one Get). A
// call that finds room in flight goes at once, alone. A read joins only
// a request that starts after it began, so reads stay linearizable. A
// batch holds at most 64 commits or 128 reads and 1 MiB of keys and
// values, within etcd's default --max-txn-ops and --max-request-bytes, and
// never two writes of one key (a second commit of a token waits for the
// next). A batch that fails as a whole is no call's failure: each call in
// it is made again alone, within its own deadline; a call whose context
// ends while it waits in the queue leaves it at once. Stats counts the
// batches and the calls they carried.
//
// # Concurrent commits of one session
//
// A page that fires many requests at once with one cookie commits one
// session as many times at once (with IdleTimeout, every request does).
// A store lines up its own commits of a session: while one is in flight,
// the others wait, and when it ends, all that waited go as one commit, of
// the data and expiry of the last to arrive, acknowledged to each. Each
// was in flight during that write, so this is linearizable, and the
// store's concurrent commits of a session never conflict with each other
// (made independently, each that lost the race would be made again: n
// commits, O(n²) attempts). 32 goroutines committing and finding one
// session take no longer than the same work on 32 sessions
// (docs/performance.md). Each caller still waits no longer than its own
// deadline, and one that leaves does not cancel the commit the others
// wait for. This holds with batching on or off; Stats counts the commits
// shared (CommitsShared).
//
// # Hashed tokens
//
// A session's token is its key in etcd: whoever reads etcd, a snapshot or
// a backup could send it back as a cookie. Set the session manager's
// HashTokenInStore (scs v2.9.0), and the store sees, and etcd holds, only
// the tokens' SHA-256 digests. Wherever the app hands the store a token
// outside SCS (the except tokens of DeleteByPrincipal) or compares one it
// gave (the keys of FindByPrincipal and AllCtx), use StoreToken(sm,
// sm.Token(ctx)); DeleteByPrincipal refuses, deleting nothing, a token
// whose digest it finds where the token itself was wanted (ErrRawToken).
// Errors never carry a session's key.
//
// # Encryption at rest
//
// WithEncryption seals each session's data with XChaCha20-Poly1305 under
// the first of its keys; every key opens, each sealed value naming its
// key by an ID derived from the key. The associated data is the value's
// header and the session's key, so a value moved to another session, or
// given another expiry, does not open. What etcd still shows: how many
// sessions there are, their expiries (in the clear, so a read needs no key
// to tell a live session), their sizes (the data's plus 56 bytes), and,
// with WithPrincipal, how many sessions share a principal, under an
// HMAC-SHA-256 of it that only a key holder can compute. A session that
// does not open is absent and counted (Stats.DecryptFailures).
//
// To roll a key out, in two steps so that no app server meets a session
// it cannot open: give every app server the new key second
// (WithEncryption(nil, key) to turn encryption on: a nil first key writes
// in the clear), then first; drop the old key once the last session
// sealed under it has expired (the session manager's Lifetime after the
// second step). A session whose key was dropped reads as absent: its user
// logs in again. Encryption keeps data from readers of etcd, not from its
// writers: values in the clear are still read, and an older sealed value
// of a session opens.
//
// # Space
//
// etcd keeps every revision until it is compacted, and refuses every
// write once its database reaches --quota-backend-bytes, until its NOSPACE
// alarm is disarmed; a commit then fails with an error that wraps
// rpctypes.ErrNoSpace and names the way out. Turn on etcd's periodic
// auto-compaction, or, on a cluster that holds only sessions, run
// RunCompactor on the app servers. docs/capacity.md gives measured sizes
// and the quota a deployment needs.
//
// # Deadlines and retries
//
// SCS calls the store with the request's context, which has no deadline,
// and the etcd client waits for a connection as long as the context
// lives. So each call gets a deadline, WithTimeout (5 s by default), or
// its context's if that comes first, which every request of the call
// shares, the read cache's barrier included; All gets one per page.
//
// Within the deadline, a request that fails in a way that says it may not
// have reached a working leader (the connection broke, the member has no
// leader or saw the leader change, the server timed out its proposal, or
// no answer came within a fifth of the call's time) is tried again, with
// backoff from 25 ms doubling up to 500 ms. Every request asks for a
// leader (clientv3.WithRequireLeader): a member cut off from the others
// answers at once that it has none, and the retry goes to another member.
// Retrying is safe because every commit is conditional (see Conditional
// writes): an attempt that lands after a later one changes nothing. A
// delete is not, and needs not be: an attempt of it that lands late puts
// the tombstone again.
//
// A member that stops answering without closing its connections (a dead
// host, a network that drops packets) holds every request the client's
// balancer sends it for an attempt's share; set the client's
// DialKeepAliveTime and DialKeepAliveTimeout so that gRPC drops the
// connection when a ping goes unanswered (with 10 s, gRPC's least, and
// 2 s: about 12 s in; docs/reliability.md).
//
// Errors that trying again cannot fix return at once: permission denied,
// too large, out of space, a canceled context, a closed client.
//
// # Authentication
//
// With etcd authentication on, give the client a user whose role has
// readwrite on the store's prefix and, with WithPrincipal, on
// PrincipalIndexPrefix(prefix); RunCompactor also needs CompactorKey. A
// refusal's error names the user, the prefixes to grant and the etcdctl
// command; a client that does not log in is told to.
//
// A client made with a Username and Password logs in once and sends its
// token with every request. etcd forgets a simple token (its default
// kind) that no request to a member has carried for --auth-token-ttl
// (300 s by default). etcd 3.5 and later let the client log in again
// within the request; etcd 3.4 refuses that login too, since the client
// sends its expired token with it, and the client tries again until the
// request's deadline (etcd-io/etcd#13413): every request then fails, until
// the app makes a new client. So a store on a client that logs in keeps
// the token in use: one serializable count-only read of one key per
// endpoint every WithAuthKeepAlive interval (1 minute by default; keep it
// below --auth-token-ttl), in a goroutine that Close, or the client's
// Close, ends. Should etcd 3.4 refuse the token all the same (the app was
// stopped for longer than the TTL, or a member lost the token in a
// restart), the calls that time out say so and what to do, wrapping
// rpctypes.ErrInvalidAuthToken, and count as Errors.Auth. A JWT token
// (--auth-token jwt) expires its TTL after it was made, however it is
// used (server/auth/jwt.go sets "exp" when it assigns one), so on etcd
// 3.4 the keep-alive cannot keep one: use simple tokens there.
//
// # Stats
//
// Stats returns counts of calls, skipped touches, refused resurrections,
// commit conflicts, codec errors, lease grants, retries, errors by kind
// (refusals by etcd authentication under Auth), whether the read cache is
// off, and latency histograms by method, for an operator's dashboard;
// the package etcdstoreprom exports them to Prometheus, as the example
// app does.
//
// # Errors
//
// Errors begin with "etcdstore:" and wrap their cause, so errors.Is works
// with context.Canceled, context.DeadlineExceeded (the call's deadline
// passed; a commit may then have been written or not) and the etcd client's
// rpctypes errors (for example rpctypes.ErrPermissionDenied), and say
// what to fix where the store can tell (see Authentication, Space).
// Following SCS's Store contract, a missing, expired or malformed token
// is not an error: Find returns found == false.
//
// Programming errors panic at once, with the package's prefix and what
// to do: a nil client, a prefix that is empty or overlaps the keys the
// stores keep for themselves (CheckPrefix), WithPrincipal(""), a bad
// encryption key, and a nil context given to any method.
package etcdstore
