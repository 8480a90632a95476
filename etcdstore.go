package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

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
// An EtcdStore is safe for concurrent use by multiple goroutines, and by
// several processes on the same etcd cluster and prefix.
type EtcdStore struct {
	client   *clientv3.Client
	prefix   string
	end      string // range end of prefix
	pageSize int64
	leases   *leaseManager
	now      func() time.Time // time.Now; overridden in tests

	// afterPage, if set, runs after All reads each page but the last; tests
	// use it to change the keyspace in the middle of a scan.
	afterPage func()
}

// Option configures an EtcdStore. Options are applied in order by New and
// NewWithPrefix.
type Option func(*options)

type options struct {
	bucket    time.Duration
	maxBucket time.Duration
	maxKeys   int
	pageSize  int
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
	o := options{maxBucket: defaultMaxBucket, maxKeys: defaultMaxKeysPerLease, pageSize: defaultPageSize}
	for _, opt := range opts {
		opt(&o)
	}
	if o.maxKeys <= 0 {
		o.maxKeys = defaultMaxKeysPerLease
	}
	if o.pageSize <= 0 {
		o.pageSize = defaultPageSize
	}
	return &EtcdStore{
		client:   client,
		prefix:   prefix,
		end:      rangeEnd(prefix),
		pageSize: int64(o.pageSize),
		leases: &leaseManager{
			lease:    client.Lease,
			fixed:    o.bucket,
			maxWidth: o.maxBucket,
			maxKeys:  o.maxKeys,
		},
		now: time.Now,
	}
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
// Errors are those of the etcd request, and an error for a stored value
// that bears this store's envelope but does not decode.
func (s *EtcdStore) FindCtx(ctx context.Context, token string) ([]byte, bool, error) {
	if !validToken(token) {
		return nil, false, nil
	}
	if err := s.clientErr(); err != nil {
		return nil, false, fmt.Errorf("etcdstore: find: %w", err)
	}
	resp, err := s.client.Get(ctx, keyFor(s.prefix, token))
	if err != nil {
		return nil, false, fmt.Errorf("etcdstore: find: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return nil, false, nil
	}
	data, live, err := open(resp.Kvs[0].Value, s.now())
	if err != nil || !live {
		return nil, false, err
	}
	return data, true, nil
}

// open decodes a stored value and reports whether it is live at now. A
// legacy value (no envelope) is live for as long as etcd keeps it.
func open(value []byte, now time.Time) (data []byte, live bool, err error) {
	expiry, hasExpiry, data, err := decodeEnvelope(value)
	if err != nil {
		return nil, false, fmt.Errorf("etcdstore: corrupt session value: %w", err)
	}
	if hasExpiry && !now.Before(expiry) {
		return nil, false, nil
	}
	return data, true, nil
}

// Commit writes a session, as CommitCtx does with context.Background().
func (s *EtcdStore) Commit(token string, b []byte, expiry time.Time) error {
	return s.CommitCtx(context.Background(), token, b, expiry)
}

// CommitCtx writes the data b of session token, to expire at expiry,
// replacing any earlier data and expiry. An expiry at or before now
// deletes the session instead. It returns an error, and writes nothing,
// when token is empty or longer than MaxTokenLen, when expiry is after
// the year 2262, when etcd refuses the value for its size (wrapping
// ErrValueTooLarge), or when the etcd requests fail.
func (s *EtcdStore) CommitCtx(ctx context.Context, token string, b []byte, expiry time.Time) error {
	if token == "" {
		return errors.New("etcdstore: commit: empty token")
	}
	if len(token) > MaxTokenLen {
		return fmt.Errorf("etcdstore: commit: token of %d bytes is longer than MaxTokenLen (%d)", len(token), MaxTokenLen)
	}
	now := s.now()
	if !expiry.After(now) {
		return s.delete(ctx, token, "commit expired session")
	}
	if expiry.After(latestExpiry) {
		return fmt.Errorf("etcdstore: commit: expiry %s is after the latest the store can keep, %s", expiry.UTC().Format(time.RFC3339), latestExpiry.UTC().Format(time.RFC3339))
	}

	if err := s.clientErr(); err != nil {
		return fmt.Errorf("etcdstore: commit: %w", err)
	}
	key := keyFor(s.prefix, token)
	value := encodeEnvelope(expiry, b)
	// One retry: a lease etcd no longer knows is forgotten, and the second
	// attempt gets a fresh one.
	for attempt := 0; ; attempt++ {
		id, err := s.leases.acquire(ctx, now, expiry)
		if err != nil {
			return fmt.Errorf("etcdstore: commit: %w", err)
		}
		_, err = s.client.Put(ctx, key, value, clientv3.WithLease(id))
		if err == nil {
			return nil
		}
		if errors.Is(err, rpctypes.ErrLeaseNotFound) {
			s.leases.forget(id)
			if attempt == 0 {
				continue
			}
		}
		if tooLarge(err) {
			return fmt.Errorf("%w: commit of a %d-byte key and value refused; raise the server's --max-request-bytes (default 1.5 MiB) or keep less in the session: %w", ErrValueTooLarge, len(key)+len(value), err)
		}
		return fmt.Errorf("etcdstore: commit: %w", err)
	}
}

// clientErr returns an error once the client is closed. Without it, each
// call on a closed client spends seconds in the client's retries before
// it fails.
func (s *EtcdStore) clientErr() error {
	if s.client.Ctx().Err() != nil {
		return errClientClosed
	}
	return nil
}

var errClientClosed = errors.New("etcd client is closed")

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

// DeleteCtx removes the session token. Removing a session that does not
// exist, or a token no session can have (empty, or longer than
// MaxTokenLen, for which no request is made), returns nil. Errors are
// those of the etcd request.
func (s *EtcdStore) DeleteCtx(ctx context.Context, token string) error {
	if !validToken(token) {
		return nil
	}
	return s.delete(ctx, token, "delete")
}

func (s *EtcdStore) delete(ctx context.Context, token, op string) error {
	if err := s.clientErr(); err != nil {
		return fmt.Errorf("etcdstore: %s: %w", op, err)
	}
	if _, err := s.client.Delete(ctx, keyFor(s.prefix, token)); err != nil {
		return fmt.Errorf("etcdstore: %s: %w", op, err)
	}
	return nil
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
	sessions, err := s.scan(ctx)
	if errors.Is(err, rpctypes.ErrCompacted) {
		sessions, err = s.scan(ctx)
	}
	if err != nil {
		return nil, err
	}
	return sessions, nil
}

// scan reads the whole prefix range in pages at one revision.
func (s *EtcdStore) scan(ctx context.Context) (map[string][]byte, error) {
	if err := s.clientErr(); err != nil {
		return nil, fmt.Errorf("etcdstore: all: %w", err)
	}
	sessions := make(map[string][]byte)
	now := s.now() // one instant for the whole snapshot
	var rev int64  // 0 for the first page: the current revision
	from := s.prefix
	for {
		resp, err := s.client.Get(ctx, from,
			clientv3.WithRange(s.end),
			clientv3.WithLimit(s.pageSize),
			clientv3.WithRev(rev))
		if err != nil {
			return nil, fmt.Errorf("etcdstore: all: read from revision %d: %w", rev, err)
		}
		if rev == 0 {
			rev = resp.Header.Revision
		}
		for _, kv := range resp.Kvs {
			data, live, err := open(kv.Value, now)
			if err != nil {
				return nil, fmt.Errorf("%w (key %q)", err, kv.Key)
			}
			if live {
				sessions[tokenFor(s.prefix, kv.Key)] = data
			}
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return sessions, nil
		}
		from = nextKey(resp.Kvs[len(resp.Kvs)-1].Key)
		if s.afterPage != nil {
			s.afterPage()
		}
	}
}
