package etcdstore

import (
	"time"

	"github.com/alexedwards/scs/v2"
)

// Option configures an EtcdStore. Options are applied in order by New and
// NewWithPrefix.
type Option func(*options)

// options is what the options set; withDefaults fills in the rest.
type options struct {
	bucket     time.Duration // WithLeaseBucket; 0: adaptive
	maxKeys    int           // WithMaxKeysPerLease
	pageSize   int           // WithPageSize
	touch      time.Duration // WithTouchInterval; 0: none
	codec      scs.Codec     // WithCodec
	remembered int           // WithRememberedTokens
	timeout    time.Duration // WithTimeout
	principal  string        // WithPrincipal; "": no index
	cache      bool          // WithReadCache
	noBatching bool          // WithBatching(false)
	keys       [][]byte      // WithEncryption; nil: none
	request    time.Duration // WithMaxRequestDuration
	keepAlive  time.Duration // WithAuthKeepAlive
	limit      *sessionLimit // WithSessionLimit; nil: none
}

// The defaults of the options.
const (
	// defaultPageSize is how many keys All reads per request.
	defaultPageSize = 1000
	// defaultMaxKeysPerLease caps the keys attached to one lease, as
	// Kubernetes does (kubernetes#96836): revoking a lease deletes all its
	// keys in one backend transaction.
	defaultMaxKeysPerLease = 1000
	// defaultRememberedTokens is how many tokens the store remembers.
	defaultRememberedTokens = 100_000
	// defaultTimeout is the store's deadline for a call when the caller's
	// context has none sooner: about what go-redis allows a command (3 s
	// read plus 3 s write timeout).
	defaultTimeout = 5 * time.Second
	// defaultMaxRequestDuration is how long a request may run from its
	// Find of a session to its commit: five times the 60 s at which
	// nginx (proxy_read_timeout), ingress-nginx and AWS's load balancers
	// give up on a request by default.
	defaultMaxRequestDuration = 5 * time.Minute
)

// withDefaults returns o with every value an option left out, zero or
// negative replaced by its default. It does no I/O.
func (o options) withDefaults() options {
	if o.bucket < 0 {
		o.bucket = 0
	}
	if o.maxKeys <= 0 {
		o.maxKeys = defaultMaxKeysPerLease
	}
	if o.pageSize <= 0 {
		o.pageSize = defaultPageSize
	}
	if o.touch < 0 {
		o.touch = 0
	}
	if o.codec == nil {
		o.codec = scs.GobCodec{}
	}
	if o.remembered <= 0 {
		o.remembered = defaultRememberedTokens
	}
	if o.timeout <= 0 {
		o.timeout = defaultTimeout
	}
	if o.request <= 0 {
		o.request = defaultMaxRequestDuration
	}
	if o.keepAlive <= 0 {
		o.keepAlive = defaultAuthKeepAlive
	}
	return o
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
// passed. The store then keeps each remembered session's data in memory
// (see WithRememberedTokens).
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
// with (scs.SessionManager.Codec), which WithTouchInterval uses to tell
// whether a commit changes a session (SCS's GobCodec writes a session's
// values in random map order, so equal sessions often encode to different
// bytes) and WithPrincipal to read a session's principal. Data the codec
// cannot decode is always written, has no principal, and is counted in
// Stats as a CodecError: a codec other than the manager's shows there.
// The codec must be safe for concurrent use, as SCS requires of it
// already. nil means the default, scs.GobCodec{}, SCS's default.
func WithCodec(c scs.Codec) Option {
	return func(o *options) { o.codec = c }
}

// WithRememberedTokens sets how many tokens the store remembers (see
// Remembered tokens in the package documentation); past it, the least
// recently used are forgotten, and a forgotten token's commit takes one
// more round trip. Each costs a few hundred bytes, plus with
// WithTouchInterval the session's data (docs/performance.md, memory).
// Zero or negative means the default, 100,000.
func WithRememberedTokens(n int) Option {
	return func(o *options) { o.remembered = n }
}

// WithTimeout sets the deadline of each call of the store (each page of
// All), counted from its start, unless the caller's context ends sooner:
// a call that etcd has not answered by then returns an error wrapping
// context.DeadlineExceeded, so no call waits longer for an etcd that is
// down or has no leader. Failures that a leader change or a lost
// connection explains are tried again within it. Zero or negative means
// the default, 5 s.
func WithTimeout(d time.Duration) Option {
	return func(o *options) { o.timeout = d }
}

// WithMaxRequestDuration sets how long a request of the app may run from
// its Find of a session to its commit of it: the store's promise that a
// session ended (a logout, DeleteByPrincipal, a commit whose expiry has
// passed) stays ended holds for the requests that commit within d of
// their Find, on every app server, whatever it remembers (see Ending a
// session in the package documentation). Set it to the longest your
// requests may take, as bounded by the app's http.Server timeouts and
// its load balancer; a request that outruns it may bring a session
// ended meanwhile back.
//
// Its cost: the tombstone a session's end leaves lives d (21 bytes and the
// key, docs/capacity.md); with WithPrincipal, every session's key and
// index entry live d past its expiry, so that DeleteByPrincipal finds a
// session that expired while a request of it was in flight. Zero or
// negative means the default, 5 minutes.
func WithMaxRequestDuration(d time.Duration) Option {
	return func(o *options) { o.request = d }
}

// WithPrincipal makes the store keep an index of sessions by principal:
// the string form (fmt.Sprint) of the session value under key, as the
// codec (WithCodec) decodes the data, such as the user ID an app puts
// into the session at login. A session without the key, with a nil value
// or one whose string form is empty, or whose data the codec cannot
// decode, has no principal. FindByPrincipal and DeleteByPrincipal need it.
//
// SCS holds a session's lock while it commits, so the store decodes the
// data it is given rather than asking the session manager. With it, a
// Find decodes the session too, to know what to remove from the index
// when the session changes hands or is deleted, and a commit of a session
// with a principal is one Txn that writes two keys.
//
// It panics, as the constructors do on bad configuration, if key is
// empty: no session value is named "", so no session would have a
// principal.
func WithPrincipal(key string) Option {
	if key == "" {
		panic(`etcdstore: WithPrincipal(""): name the session key that holds the principal, such as "userID", the key the app puts the user's ID under at login`)
	}
	return func(o *options) { o.principal = key }
}

// WithEncryption seals each session's data before it reaches etcd, with
// XChaCha20-Poly1305 under the first of keys, and opens what any of keys
// sealed, on Find, All, the read cache and the principal lookups (see
// Encryption at rest in the package documentation). Each key is
// EncryptionKeySize (32) random bytes; its ID, stored with each value it
// seals, is derived from it. A nil first key writes in the clear while the
// others open what they sealed.
//
// Roll a key out in two steps, so that no app server meets a session it
// cannot open: give every app server the new key second (to turn
// encryption on: WithEncryption(nil, key)); once all run so, give them
// the new key first (WithEncryption(key) or WithEncryption(key, old)); drop
// the old key once the sessions sealed under it have expired (the session
// manager's Lifetime after the second step).
//
// A session sealed under a key the store was not given, or whose value
// fails to authenticate (altered, or copied from another session's key),
// is absent: Find reports it not found, with a nil error, so SCS starts a
// new session; All leaves it out; Stats counts it in DecryptFailures.
// Sessions stored in the clear, before encryption was turned on, are
// read as before, and sealed when next committed. With WithPrincipal, the
// index entries hash principals with HMAC-SHA-256 under a key derived from
// the sealing key, not SHA-256.
//
// Encryption keeps session data from whoever reads etcd or a copy of it.
// It does not stop whoever may write to the prefix: values in the clear
// are still read, and an older sealed value of the same session opens.
//
// It panics, as the constructors do on bad configuration, if it is given
// no key, a key of another size (nil but first), or one key twice. The
// store keeps its own copy of keys.
func WithEncryption(keys ...[]byte) Option {
	own := make([][]byte, len(keys))
	for i, k := range keys {
		own[i] = append([]byte(nil), k...)
	}
	newSealer(own) // panics now, where the option is written, on a bad key
	return func(o *options) { o.keys = own }
}

// WithBatching turns the sharing of etcd requests by concurrent calls on,
// the default, or off: while a request of the store's is in flight,
// commits queue for the next, which carries them all in one Txn (one raft
// entry), and so do Finds that etcd answers (see Group commit and batched
// reads in the package documentation). A call alone is sent at once.
// Turn it off to compare, or where each commit must be a request of its
// own.
func WithBatching(on bool) Option {
	return func(o *options) { o.noBatching = !on }
}

// WithReadCache makes Find and All answer from a copy of the store's
// sessions in memory, kept by one etcd watch, while staying linearizable:
// a session committed or deleted by any app server before a Find begins is
// seen by that Find (see The read cache in the package documentation).
// Every app server then holds every session of the prefix in memory
// (docs/performance.md, reads from memory).
//
// The store starts a goroutine for the watch, which first asks every
// endpoint its etcd version; Close stops it. The cache turns itself off,
// and reads go to etcd, on servers older than 3.4.31 or 3.5.13, whose
// progress notifications it cannot trust, and on one that refuses the
// client's user its version; ReadCacheReady says why, and Stats.CacheOff
// (etcdstoreprom's etcdstore_cache_off) that it is off.
func WithReadCache() Option {
	return func(o *options) { o.cache = true }
}

// WithAuthKeepAlive sets how often the store keeps the etcd client's
// auth token in use, on a client that logs in with a user name and
// password (clientv3.Config.Username and Password): each interval d, one
// serializable count-only read of one key of the store's prefix per
// endpoint of the client, which the client's balancer spreads over them.
// etcd forgets a simple token (its default kind) that no request to a
// member carried for --auth-token-ttl (300 s by default), and etcd 3.4
// then refuses the client's requests until the app makes a new client
// (etcd-io/etcd#13413; see Authentication in the package documentation).
// Keep d below the servers' --auth-token-ttl, with room for a read that
// is slow. Zero or negative means the default, 1 minute, a fifth of
// etcd's default TTL.
//
// The keep-alive runs in a goroutine of the store's from New until Close
// or until the client is closed. A store on a client that does not log
// in (no auth, or a client certificate's common name) starts none.
func WithAuthKeepAlive(d time.Duration) Option {
	return func(o *options) { o.keepAlive = d }
}

// WithSessionLimit caps each principal's live sessions at n (see Session
// limits in the package documentation): a commit that gives a session a
// principal it did not have, a login, makes room under policy, atomically
// across every app server: EndOldest ends the principal's oldest sessions
// (Ended then reports EndSessionLimit for them), RefuseNew fails the
// commit with an error wrapping ErrSessionLimit. Commits that keep their
// session's principal are not checked and cost nothing more; a login costs
// one more read of the principal's sessions (docs/performance.md). n of
// zero or less means no limit.
//
// It needs WithPrincipal, which names the principal: New panics without
// it.
func WithSessionLimit(n int, policy LimitPolicy) Option {
	return WithSessionLimitFunc(func(string) int { return n }, policy)
}

// WithSessionLimitFunc is WithSessionLimit with a limit for each
// principal: limit(principal), called on every login, where zero or less
// means none. limit must be safe for concurrent use, and quick: it runs
// in the commit, which holds the request. A nil limit means no limit.
func WithSessionLimitFunc(limit func(principal string) int, policy LimitPolicy) Option {
	return func(o *options) {
		o.limit = nil
		if limit != nil {
			o.limit = &sessionLimit{of: limit, policy: policy}
		}
	}
}
