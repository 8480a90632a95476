package etcdstore

import (
	"context"
	"math"
	"time"

	"github.com/alexedwards/scs/v2"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// DefaultPrefix is the key prefix New uses, the same as
// github.com/alexedwards/scs/etcdstore's.
const DefaultPrefix = "scs:session:"

// latestExpiry is the latest expiry the envelope can hold: Unix
// nanoseconds fit an int64 until 2262. It is also within etcd's maximum
// lease TTL of 9e9 s (server/lease/lessor.go, MaxLeaseTTL) from today.
var latestExpiry = time.Unix(0, math.MaxInt64)

// EtcdStore is an SCS session store on etcd. It implements scs.Store,
// scs.CtxStore, scs.IterableStore and scs.IterableCtxStore.
//
// Each session lives at the key prefix+token, in a value envelope that
// holds its expiry, bound to a lease shared with sessions that expire at
// about the same time. Find and All check the expiry themselves, so a
// session is never returned after it expires, however late etcd removes
// its key.
//
// A session deleted while requests that loaded it are in flight stays
// deleted, and an acknowledged commit stays the newest, whatever arrives
// late: every commit is conditional on the state it was made against and
// a delete leaves a tombstone (see Conditional writes in the package
// documentation).
//
// An EtcdStore is safe for concurrent use by multiple goroutines, and by
// several processes on the same etcd cluster and prefix.
type EtcdStore struct {
	client  *clientv3.Client
	keys    keyspace
	calls   *retrier        // deadlines and retries
	leases  *leaseManager   // shared leases (lease.go)
	tokens  *tokenMemory    // what the store last saw of each token (tokens.go)
	index   *principalIndex // WithPrincipal, or nil (principal.go)
	limit   *sessionLimit   // WithSessionLimit, or nil (limit.go)
	cache   *readCache      // WithReadCache, or nil (cache.go)
	batches *batching       // concurrent calls' shared requests, or nil (batch.go)
	lines   commitLines     // commits in flight, by token (commitline.go)
	sealer  *sealer         // WithEncryption, or nil (crypt.go)
	login   *login          // the keep-alive of a client that logs in, or nil (login.go)
	codec   scs.Codec
	touch   time.Duration    // WithTouchInterval, or 0
	request time.Duration    // WithMaxRequestDuration
	now     func() time.Time // time.Now; overridden in tests
	stats   *stats
}

// New returns a store that keeps sessions in etcd through client, under
// the prefix "scs:session:". It makes no request, but starts the
// goroutines of the read cache (WithReadCache) and of the keep-alive of a
// client that logs in (WithAuthKeepAlive). It panics if client is nil.
func New(client *clientv3.Client, opts ...Option) *EtcdStore {
	return NewWithPrefix(client, DefaultPrefix, opts...)
}

// NewWithPrefix returns a store that keeps sessions in etcd through
// client, under the given key prefix. It makes no request, but starts the
// goroutines of the read cache (WithReadCache) and of the keep-alive of a
// client that logs in (WithAuthKeepAlive), which read etcd; Close stops
// them.
//
// All and AllCtx list every key that begins with prefix, so two stores on
// one cluster must not have prefixes that are prefixes of one another
// ("app:" and "app:admin:" are; "app:user:" and "app:admin:" are not): end
// each prefix with a separator such as ':'. NewWithPrefix panics if client
// is nil, or if prefix is empty or overlaps the keys the stores keep for
// themselves (see CheckPrefix).
func NewWithPrefix(client *clientv3.Client, prefix string, opts ...Option) *EtcdStore {
	if client == nil {
		panic("etcdstore: nil client")
	}
	if err := CheckPrefix(prefix); err != nil {
		panic(err.Error())
	}
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	o = o.withDefaults()
	s := &EtcdStore{
		client:  client,
		keys:    newKeyspace(prefix, o.pageSize),
		calls:   &retrier{timeout: o.timeout, clock: wallClock{}},
		leases:  newLeaseManager(client.Lease, o.bucket, o.maxKeys),
		tokens:  newTokenMemory(o.remembered),
		codec:   o.codec,
		touch:   o.touch,
		request: o.request,
		now:     time.Now,
		stats:   &stats{},
	}
	if o.keys != nil {
		s.sealer = newSealer(o.keys)
	}
	if o.principal != "" {
		s.index = newPrincipalIndex(o.principal, prefix, o.codec, s.stats, s.sealer)
	}
	if o.limit != nil {
		if s.index == nil {
			panic("etcdstore: WithSessionLimit counts each principal's sessions in the principal index: add WithPrincipal(key), naming the session key that holds the principal")
		}
		s.limit = o.limit
	}
	if !o.noBatching {
		s.batches = newBatching(client)
	}
	s.stats.explain = s.explain
	// Every field is set before a goroutine starts: the cache's uses
	// s.calls.
	if s.login = newLogin(client, prefix, o.keepAlive, o.timeout/attemptShare); s.login != nil {
		s.calls.stalled = s.login.stalled
	}
	if o.cache {
		s.cache = newReadCache(client, s.keys, s.calls)
		s.cache.start()
	}
	if s.login != nil {
		s.login.start()
	}
	return s
}

// Close stops what the store runs in the background: the watch of
// WithReadCache, and the keep-alive of a client that logs in
// (WithAuthKeepAlive), which otherwise ends when the client is closed. It
// does not close the etcd client. The store keeps working after Close,
// reading from etcd, though its client's token may then expire. Close is
// safe to call more than once, and on a store that runs nothing.
func (s *EtcdStore) Close() error {
	if s.cache != nil {
		s.cache.close()
	}
	if s.login != nil {
		s.login.close()
	}
	return nil
}

// Find returns the data of the session token, as FindCtx does with
// context.Background().
func (s *EtcdStore) Find(token string) ([]byte, bool, error) {
	return s.FindCtx(context.Background(), token)
}

// Commit writes a session, as CommitCtx does with context.Background().
func (s *EtcdStore) Commit(token string, b []byte, expiry time.Time) error {
	return s.CommitCtx(context.Background(), token, b, expiry)
}

// Delete removes a session, as DeleteCtx does with context.Background().
func (s *EtcdStore) Delete(token string) error {
	return s.DeleteCtx(context.Background(), token)
}

// All returns every live session, as AllCtx does with
// context.Background().
func (s *EtcdStore) All() (map[string][]byte, error) {
	return s.AllCtx(context.Background())
}
