package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"math"
	"sync"
	"time"

	"github.com/alexedwards/scs/v2"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// DefaultPrefix is the key prefix New uses, the same as
// github.com/alexedwards/scs/etcdstore's.
const DefaultPrefix = "scs:session:"

const defaultPageSize = 1000

// ErrValueTooLarge is wrapped by the error Commit and CommitCtx return
// when etcd refuses the write for its size: over the server's
// --max-request-bytes (default 1.5 MiB,
// https://etcd.io/docs/v3.6/dev-guide/limit/) or the client's send limit
// (clientv3.Config.MaxCallSendMsgSize, default 2 MiB). The session was not
// written; the store keeps working.
var ErrValueTooLarge = errors.New("etcdstore: session too large for etcd")

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
	client   *clientv3.Client
	prefix   string
	end      string // range end of prefix
	pageSize int64
	leases   *leaseManager
	memory   *memory
	touch    time.Duration // WithTouchInterval, or 0
	codec    scs.Codec
	timeout  time.Duration // WithTimeout
	// principalKey is WithPrincipal's key, or ""; index is the store's
	// principal index range.
	principalKey string
	index        string
	seed         maphash.Seed // for digests of session data

	cache     *readCache // WithReadCache, or nil
	cacheOnce sync.Once  // Close

	now   func() time.Time // time.Now; overridden in tests
	stats stats

	// cacheAfterList, if set before the cache starts, runs after each of
	// its lists; tests use it to compact the revisions its watch needs.
	cacheAfterList func()

	// afterPage, if set, runs after All reads each page but the last; tests
	// use it to change the keyspace in the middle of a scan.
	afterPage func()
}

// Option configures an EtcdStore. Options are applied in order by New and
// NewWithPrefix.
type Option func(*options)

type options struct {
	bucket     time.Duration
	maxKeys    int
	pageSize   int
	touch      time.Duration
	codec      scs.Codec
	remembered int
	timeout    time.Duration
	principal  string
	cache      bool
}

// WithLeaseBucket fixes the width of the time buckets whose sessions share
// a lease: sessions that expire in the same bucket share one lease, whose
// TTL reaches the bucket's end, so a session's key outlives its expiry by
// less than d plus one second (the envelope hides it meanwhile). Wider
// buckets mean fewer leases. Zero or negative means the default: 1/20 of
// the session's remaining lifetime, rounded down to a power of two
// seconds, between 1 s and 60 s.
func WithLeaseBucket(d time.Duration) Option {
	return func(o *options) { o.bucket = d }
}

// WithMaxKeysPerLease caps how many keys the store attaches to one lease
// before it grants another. Revoking or expiring a lease deletes all its
// keys in one etcd backend transaction, so huge leases stall etcd
// (kubernetes#96836); Kubernetes caps them at 1000. Each Commit counts as
// one key, even when it rewrites a session already on the lease. Zero or
// negative means the default, 1000.
func WithMaxKeysPerLease(n int) Option {
	return func(o *options) { o.maxKeys = n }
}

// WithPageSize sets how many keys All and AllCtx read from etcd per
// request. Zero or negative means the default, 1000.
func WithPageSize(n int) Option {
	return func(o *options) { o.pageSize = n }
}

// WithTouchInterval makes a commit that only pushes a session's expiry
// back by less than d write nothing: when the session's data is what the
// store last read or wrote for its token (as the codec decodes it; see
// WithCodec) and the commit's expiry is no earlier than the stored one
// and less than d later, the stored session stands as it is. Changed data
// is always written at once, and so is a session whose stored expiry has
// passed.
//
// With SCS's IdleTimeout every request commits its session, changed or
// not (scs v2.9.0 data.go, Load), and each commit is an etcd raft write.
// With d = IdleTimeout/2, an unchanged session is written about once per
// d instead, and a session idle for IdleTimeout expires between
// IdleTimeout - d and IdleTimeout after its last request: up to d
// earlier than SCS computed, never later. Keep d well below IdleTimeout;
// with d >= IdleTimeout a session in steady use would expire a fixed time
// after its last write.
//
// Zero or negative, the default, writes on every commit.
func WithTouchInterval(d time.Duration) Option {
	return func(o *options) { o.touch = d }
}

// WithCodec sets the codec that the session manager encodes sessions
// with, which WithTouchInterval uses to tell whether a commit changes a
// session: SCS's GobCodec writes a session's values in random map order,
// so equal sessions often encode to different bytes. Data the codec
// cannot decode is always written. The codec must be safe for concurrent
// use, as SCS requires of it already. nil means the default,
// scs.GobCodec{}, SCS's default.
func WithCodec(c scs.Codec) Option {
	return func(o *options) { o.codec = c }
}

// WithRememberedTokens sets how many tokens the store remembers (see
// Remembered tokens in the package documentation); past it, the least
// recently used are forgotten. Each costs about 230 bytes, plus with
// WithTouchInterval the session's data, twice once a commit brought it in
// other bytes (BenchmarkMemory, per 100k tokens: 22 MB; with the touch
// interval 49 to 77 MB for sessions of 256 bytes, 486 to 949 MB for
// sessions of 4 KiB). Zero or negative means the default, 100,000.
func WithRememberedTokens(n int) Option {
	return func(o *options) { o.remembered = n }
}

// New returns a store that keeps sessions in etcd through client, under
// the prefix "scs:session:". It does no I/O. It panics if client is nil.
func New(client *clientv3.Client, opts ...Option) *EtcdStore {
	return NewWithPrefix(client, DefaultPrefix, opts...)
}

// NewWithPrefix returns a store that keeps sessions in etcd through
// client, under the given key prefix. It does no I/O.
//
// All and AllCtx list every key that begins with prefix, so two stores on
// one cluster must not have prefixes that are prefixes of one another
// ("app:" and "app:admin:" are; "app:user:" and "app:admin:" are not): end
// each prefix with a separator such as ':'. NewWithPrefix panics if client
// is nil or prefix is empty, since an empty prefix would span the whole
// keyspace.
func NewWithPrefix(client *clientv3.Client, prefix string, opts ...Option) *EtcdStore {
	if client == nil {
		panic("etcdstore: nil client")
	}
	if prefix == "" {
		panic("etcdstore: empty prefix: it would make All span the whole etcd keyspace")
	}
	o := options{maxKeys: defaultMaxKeysPerLease, pageSize: defaultPageSize}
	for _, opt := range opts {
		opt(&o)
	}
	if o.maxKeys <= 0 {
		o.maxKeys = defaultMaxKeysPerLease
	}
	if o.pageSize <= 0 {
		o.pageSize = defaultPageSize
	}
	if o.codec == nil {
		o.codec = scs.GobCodec{}
	}
	if o.remembered <= 0 {
		o.remembered = defaultRememberedTokens
	}
	if o.touch < 0 {
		o.touch = 0
	}
	if o.timeout <= 0 {
		o.timeout = defaultTimeout
	}
	start := time.Now()
	s := &EtcdStore{
		client:   client,
		prefix:   prefix,
		end:      rangeEnd(prefix),
		pageSize: int64(o.pageSize),
		leases: &leaseManager{
			lease:    client.Lease,
			fixed:    o.bucket,
			maxWidth: defaultMaxBucket,
			maxKeys:  o.maxKeys,
			mono:     func() time.Duration { return time.Since(start) },
		},
		memory:  newMemory(o.remembered),
		touch:   o.touch,
		codec:   o.codec,
		timeout: o.timeout,
		now:     time.Now,

		principalKey: o.principal,
		seed:         maphash.MakeSeed(),
		index:        PrincipalIndexRange(prefix),
	}
	if o.cache {
		s.cache = newReadCache(s)
	}
	return s
}

// Find returns the data of the session token, as FindCtx does with
// context.Background().
func (s *EtcdStore) Find(token string) ([]byte, bool, error) {
	return s.FindCtx(context.Background(), token)
}

// FindCtx returns the data of the session token and true, or false with
// a nil error when there is no such session, it has expired, or the token
// is empty or longer than MaxTokenLen (no request is made for those). It
// reads linearizably: a session committed through any member is seen.
// It waits for etcd no longer than the store's timeout (WithTimeout),
// trying again meanwhile after a leader change or a lost connection.
// Errors are those of the etcd request, wrapping
// context.DeadlineExceeded when the deadline passed, and an error for a
// stored value that bears this store's envelope but does not decode.
func (s *EtcdStore) FindCtx(ctx context.Context, token string) (data []byte, found bool, err error) {
	if !validToken(token) {
		return nil, false, nil
	}
	s.stats.finds.Add(1)
	defer func() { s.stats.failed(err) }()
	if err := s.clientErr(); err != nil {
		return nil, false, fmt.Errorf("etcdstore: find: %w", err)
	}
	c := s.newCall(ctx)
	kv, present, rev, err := s.get(c, token)
	if err != nil {
		return nil, false, fmt.Errorf("etcdstore: find: %w", err)
	}
	if !present || isTombstone(kv.value) {
		s.memory.sawGone(token, rev)
		return nil, false, nil
	}
	data, expiry, live, err := s.liveValue(c, kv, s.now(), nil)
	if errors.Is(err, errCorrupt) {
		return nil, false, err
	}
	if err != nil {
		return nil, false, fmt.Errorf("etcdstore: find: %w", err)
	}
	if !live {
		// Stored, though expired: a request in flight that loaded it
		// before may still commit it.
		s.memory.saw(token, sighting{rev: kv.mod, stored: true, expiry: expiry})
		return nil, false, nil
	}
	seen := sighting{rev: kv.mod, stored: true, expiry: expiry}
	if s.touch > 0 {
		seen.data, seen.hasData = string(data), true
	}
	if s.principalKey != "" {
		last, known := s.memory.get(token)
		seen.indexed, _, seen.sums = s.principalFor(last, known, data)
		seen.indexKnown = true
	}
	s.memory.saw(token, seen)
	return data, true, nil
}

// get reads what etcd holds for token within c, from the read cache when
// it can serve the read (WithReadCache), and the revision it read at.
func (s *EtcdStore) get(c call, token string) (kv cachedKV, present bool, rev int64, err error) {
	if s.cache != nil && s.cache.read(c, func(values map[string]cachedKV, r int64) {
		kv, present = values[token]
		rev = r
	}) {
		return kv, present, rev, nil
	}
	var resp *clientv3.GetResponse
	err = s.do(c, func(ctx context.Context) (err error) {
		resp, err = s.client.Get(ctx, keyFor(s.prefix, token))
		return err
	})
	if err != nil {
		return cachedKV{}, false, 0, err
	}
	if len(resp.Kvs) == 0 {
		return cachedKV{}, false, resp.Header.Revision, nil
	}
	return kvOf(resp.Kvs[0]), true, resp.Header.Revision, nil
}

// open decodes a stored value and reports whether it is live at now. A
// legacy value (no envelope) has a zero expiry and is live as far as open
// can tell: legacyLive asks etcd.
func open(value []byte, now time.Time) (data []byte, expiry time.Time, live bool, err error) {
	expiry, hasExpiry, data, err := decodeEnvelope(value)
	if err != nil {
		return nil, time.Time{}, false, fmt.Errorf("%w: %w", errCorrupt, err)
	}
	if hasExpiry && !now.Before(expiry) {
		return nil, time.Time{}, false, nil
	}
	return data, expiry, true, nil
}

// liveValue decodes the stored session kv and reports whether it is live
// at now: by the expiry in its envelope, or, for a legacy value, by its
// lease (legacyLive, whose answers known, if not nil, caches). Its errors
// are open's, and legacyLive's without a package prefix.
func (s *EtcdStore) liveValue(c call, kv cachedKV, now time.Time, known map[int64]bool) (data []byte, expiry time.Time, live bool, err error) {
	data, expiry, live, err = open(kv.value, now)
	if err == nil && live && expiry.IsZero() {
		live, err = s.legacyLive(c, kv.lease, known)
	}
	return data, expiry, live, err
}

// legacyLive reports whether a legacy value, written by
// github.com/alexedwards/scs/etcdstore without an envelope on lease id
// (0: none), is live. That store expires a session through its lease
// alone, so the session is live while the lease has at least a second
// left: etcd gives the remaining TTL in whole seconds, rounded down
// (server/etcdserver/v3_server.go, LeaseTimeToLive), so this may call a
// session expired up to a second early, never late. known, if not nil,
// holds the answers already had, by lease, and gets this one.
func (s *EtcdStore) legacyLive(c call, id int64, known map[int64]bool) (bool, error) {
	if id == 0 {
		return true, nil
	}
	if live, ok := known[id]; ok {
		return live, nil
	}
	var resp *clientv3.LeaseTimeToLiveResponse
	err := s.do(c, func(ctx context.Context) (err error) {
		resp, err = s.client.TimeToLive(ctx, clientv3.LeaseID(id))
		return err
	})
	var live bool
	switch {
	case errors.Is(err, rpctypes.ErrLeaseNotFound):
	case err != nil:
		return false, fmt.Errorf("remaining TTL of legacy session's lease %x: %w", id, err)
	default:
		live = resp.TTL > 0
	}
	if known != nil {
		known[id] = live
	}
	return live, nil
}

// clientErr returns an error once the client is closed. Without it, each
// call on a closed client spends seconds in the client's retries before
// it fails.
func (s *EtcdStore) clientErr() error {
	if err := s.client.Ctx().Err(); err != nil {
		return fmt.Errorf("%w (%w)", ErrClientClosed, err)
	}
	return nil
}

// ErrClientClosed is wrapped by the error every method returns, at once
// and without a request, once the etcd client the store was made with is
// closed. The error wraps context.Canceled too (the client's context is
// canceled when it closes), but errors.Is(err, ErrClientClosed) tells it
// from a canceled request.
var ErrClientClosed = errors.New("etcd client is closed")

// tooLarge reports whether err is etcd refusing a request for its size,
// on the server (rpctypes.ErrRequestTooLarge) or in the client's gRPC send
// limit (codes.ResourceExhausted).
func tooLarge(err error) bool {
	return errors.Is(err, rpctypes.ErrRequestTooLarge) || status.Code(err) == codes.ResourceExhausted
}

// Delete removes a session, as DeleteCtx does with context.Background().
func (s *EtcdStore) Delete(token string) error {
	return s.DeleteCtx(context.Background(), token)
}

// DeleteCtx removes the session token: it leaves a tombstone at its key,
// on the session's lease, which no commit writes over, so neither a
// request in flight that loaded the session before, on any store, nor a
// late attempt of an earlier commit brings it back (see Conditional
// writes in the package documentation). Removing a session that does not
// exist, or a token no session can have (empty, or longer than
// MaxTokenLen, for which no request is made), returns nil. Errors are
// those of the etcd request.
func (s *EtcdStore) DeleteCtx(ctx context.Context, token string) error {
	if !validToken(token) {
		return nil
	}
	s.stats.deletes.Add(1)
	return s.stats.failed(s.delete(ctx, token, "delete"))
}

// delete deletes the session token for the method op: it puts a
// tombstone at its key, on the lease the key has (WithIgnoreLease), in one
// request, which fails with rpctypes.ErrKeyNotFound when there is no key:
// nothing to delete. A key without a lease, which no session store writes,
// keeps its tombstone as it would have kept its value. The index entry of
// the session's principal goes with it, when the store knows the
// principal. While etcd is out of space, which refuses every put, it
// deletes the key instead.
func (s *EtcdStore) delete(ctx context.Context, token, op string) error {
	if err := s.clientErr(); err != nil {
		return fmt.Errorf("etcdstore: %s: %w", op, err)
	}
	key := keyFor(s.prefix, token)
	var entry string
	if seen, ok := s.memory.get(token); ok && seen.stored && seen.indexKnown && seen.indexed != "" {
		entry = s.indexKey(seen.indexed, token)
	}
	var rev int64
	err := s.retry(ctx, func(ctx context.Context) (err error) {
		rev, err = s.bury(ctx, key, entry)
		return err
	})
	if err != nil {
		return fmt.Errorf("etcdstore: %s: %w", op, err)
	}
	s.memory.sawGone(token, rev)
	return nil
}

// bury puts the tombstone at key and deletes the index entry, if not "",
// and returns the revision of the write (0: nothing was written).
func (s *EtcdStore) bury(ctx context.Context, key, entry string) (int64, error) {
	ops := []clientv3.Op{clientv3.OpPut(key, tombstone, clientv3.WithIgnoreLease())}
	if entry != "" {
		ops = append(ops, clientv3.OpDelete(entry))
	}
	rev, err := s.apply(ctx, ops)
	switch {
	case errors.Is(err, rpctypes.ErrKeyNotFound):
		// No key, so no session to bury; its entry goes all the same.
		ops = ops[1:]
	case errors.Is(err, rpctypes.ErrNoSpace):
		// etcd out of space refuses the tombstone's put, but not a
		// delete, which frees space; no commit lands meanwhile.
		ops[0] = clientv3.OpDelete(key)
	default:
		return rev, err
	}
	return s.apply(ctx, ops)
}

// apply makes ops in one request, a Txn if there are several, and returns
// the revision etcd was at after (0 for no ops).
func (s *EtcdStore) apply(ctx context.Context, ops []clientv3.Op) (int64, error) {
	switch len(ops) {
	case 0:
		return 0, nil
	case 1:
		resp, err := s.client.Do(ctx, ops[0])
		if err != nil {
			return 0, err
		}
		if put := resp.Put(); put != nil {
			return put.Header.Revision, nil
		}
		return resp.Del().Header.Revision, nil
	default:
		resp, err := s.client.Txn(ctx).Then(ops...).Commit()
		if err != nil {
			return 0, err
		}
		return resp.Header.Revision, nil
	}
}

// All returns every live session, as AllCtx does with
// context.Background().
func (s *EtcdStore) All() (map[string][]byte, error) {
	return s.AllCtx(context.Background())
}

// AllCtx returns the data of every live session under the store's prefix,
// keyed by token, and an empty, non-nil map when there is none. It reads
// in pages (see WithPageSize) pinned to the revision of the first, so the
// result is one consistent snapshot of the keyspace. If etcd compacts
// that revision during the scan, the scan starts over once at a new
// revision; a second compaction returns an error wrapping
// rpctypes.ErrCompacted. Errors are also those of the etcd requests, and
// one for a stored value that bears this store's envelope but does not
// decode.
func (s *EtcdStore) AllCtx(ctx context.Context) (map[string][]byte, error) {
	s.stats.alls.Add(1)
	c := s.newCall(ctx)
	if s.cache != nil {
		if sessions, ok, err := s.allCached(c); ok {
			return sessions, s.stats.failed(err)
		}
	}
	sessions, err := s.scan(ctx, c)
	if errors.Is(err, rpctypes.ErrCompacted) {
		sessions, err = s.scan(ctx, s.newCall(ctx))
	}
	if err != nil {
		return nil, s.stats.failed(err)
	}
	return sessions, nil
}

// allCached is AllCtx from the read cache, and reports false when the
// cache cannot serve the read.
func (s *EtcdStore) allCached(c call) (map[string][]byte, bool, error) {
	type entry struct {
		token string
		kv    cachedKV
	}
	var entries []entry
	// Copied out under the cache's read lock, decoded after it.
	if !s.cache.read(c, func(values map[string]cachedKV, _ int64) {
		entries = make([]entry, 0, len(values))
		for token, kv := range values {
			entries = append(entries, entry{token, kv})
		}
	}) {
		return nil, false, nil
	}
	snap := s.newSnapshot(len(entries))
	for _, e := range entries {
		if err := snap.add(c, e.token, e.kv); err != nil {
			return nil, true, err
		}
	}
	snap.remember()
	return snap.sessions, true, nil
}

// snapshot gathers the live sessions of one All at one revision, and
// what the store remembers of them: so that the commits of SCS's Iterate,
// whose callback may commit them, compare the revisions read.
type snapshot struct {
	s        *EtcdStore
	now      time.Time // one instant for the whole snapshot
	sessions map[string][]byte
	legacy   map[int64]bool // whether each lease of legacy values is live
	tokens   []string       // the sessions added since the last remember
	seen     []sighting     // and their sightings
}

func (s *EtcdStore) newSnapshot(size int) *snapshot {
	return &snapshot{s: s, now: s.now(), sessions: make(map[string][]byte, size), legacy: make(map[int64]bool)}
}

// add adds the session token, stored as kv, if it is live, asking etcd
// within c of a legacy one.
func (a *snapshot) add(c call, token string, kv cachedKV) error {
	data, expiry, live, err := a.s.liveValue(c, kv, a.now, a.legacy)
	if errors.Is(err, errCorrupt) {
		return fmt.Errorf("%w (key %q)", err, keyFor(a.s.prefix, token))
	}
	if err != nil {
		return fmt.Errorf("etcdstore: all: %w", err)
	}
	if live {
		a.sessions[token] = data
		a.tokens = append(a.tokens, token)
		a.seen = append(a.seen, sighting{rev: kv.mod, stored: true, expiry: expiry})
	}
	return nil
}

// remember records the sightings of the sessions added since the last
// call, under one lock of the memory.
func (a *snapshot) remember() {
	a.s.memory.sawAll(a.tokens, a.seen)
	a.tokens, a.seen = a.tokens[:0], a.seen[:0]
}

// scan reads the whole prefix range in pages at one revision, the first
// within c, each of the others within a call of its own.
func (s *EtcdStore) scan(ctx context.Context, c call) (map[string][]byte, error) {
	if err := s.clientErr(); err != nil {
		return nil, fmt.Errorf("etcdstore: all: %w", err)
	}
	snap := s.newSnapshot(0)
	var rev int64 // 0 for the first page: the current revision
	from := s.prefix
	for page := 0; ; page++ {
		if page > 0 {
			c = s.newCall(ctx) // a deadline per page
		}
		resp, err := s.page(c, from, rev)
		if err != nil {
			return nil, fmt.Errorf("etcdstore: all: read from revision %d: %w", rev, err)
		}
		if rev == 0 {
			rev = resp.Header.Revision
		}
		for _, kv := range resp.Kvs {
			if err := snap.add(c, tokenFor(s.prefix, kv.Key), kvOf(kv)); err != nil {
				return nil, err
			}
		}
		snap.remember()
		if !resp.More || len(resp.Kvs) == 0 {
			return snap.sessions, nil
		}
		from = nextKey(resp.Kvs[len(resp.Kvs)-1].Key)
		if s.afterPage != nil {
			s.afterPage()
		}
	}
}

// page reads up to a page of sessions from key from to the end of the
// prefix at revision rev (0: the current one), within c.
func (s *EtcdStore) page(c call, from string, rev int64) (resp *clientv3.GetResponse, err error) {
	err = s.do(c, func(ctx context.Context) (err error) {
		resp, err = s.client.Get(ctx, from,
			clientv3.WithRange(s.end),
			clientv3.WithLimit(s.pageSize),
			clientv3.WithRev(rev))
		return err
	})
	return resp, err
}
