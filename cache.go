package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// The read cache: linearizable reads from memory.
//
// With WithReadCache, one watch keeps a copy of the store's prefix range
// in memory, and Find and All answer from it after a barrier, as
// Kubernetes' apiserver serves consistent reads from its watch cache
// (KEP-2340): a linearizable request made after the read began tells
// etcd's current revision, and the read waits until the watch has
// delivered everything up to it, asking etcd for a progress notification
// when no event would come (clientv3.Watcher.RequestProgress). A write
// that completed before the read began has a revision no later than the
// barrier's, so the read sees it. Concurrent reads share one barrier
// request: a read joins the next request to start, never one already in
// flight, which may have started before it.
//
// The copy starts from a range read at one revision and watches from the
// next; on compaction, a lost leader (the watch requires one) or a broken
// stream it lists again. While it is not in sync, and whenever a barrier
// or the wait for the watch fails, reads go to etcd directly, within what
// is left of their deadline, so the cache never fails a read that a Get
// would have answered.
//
// Before etcd 3.4.25 and 3.5.8 a requested progress notification could
// overtake an event of the same revision (etcd#15220, fixed by
// etcd#15237 and its backports); Kubernetes enables consistent reads from
// its cache only on 3.4.31 and 3.5.13 or later, where etcd#17507 also
// fixed progress notifications on watches of a key range (KEP-2340). The
// cache asks every endpoint its version first and stays off, every read
// going to etcd, unless all that answer are at least those; an endpoint
// that does not answer is asked again before each list, and the watch
// applies only what members it has checked send.

const (
	// cacheCatchUp bounds how long a read waits for the watch to reach
	// its barrier before it asks etcd directly.
	cacheCatchUp = time.Second
	// cacheRetry is how long the watch waits before it lists again after a
	// failure.
	cacheRetry = 100 * time.Millisecond
	// cacheAskAgain is how often a read that waits for the watch asks for
	// a progress notification again: one may have crossed a notification.
	cacheAskAgain = 50 * time.Millisecond
)

// readCache is the watch-fed copy of a store's prefix range. It is built
// by newReadCache and runs from start to close; read is safe for
// concurrent use by multiple goroutines.
type readCache struct {
	client *clientv3.Client
	keys   keyspace
	calls  *retrier // the store's: deadlines, and each page's retries
	// afterList, if set before start, runs after each list, before the
	// watch starts; tests use it to compact the revisions it will need.
	afterList func()

	ctx       context.Context // the watch's, for RequestProgress
	cancel    context.CancelFunc
	started   atomic.Bool
	done      chan struct{} // closed when run returns, once started
	closeOnce sync.Once

	mu      sync.RWMutex // protects values, rev, synced and changed
	values  map[string]storedKV
	rev     int64 // every event up to rev is applied
	synced  bool
	changed chan struct{} // closed, and replaced, when rev moves or sync is lost

	bmu      sync.Mutex // protects inFlight, next and closed
	inFlight bool
	closed   bool
	next     *barrier // the barrier the next request will serve

	progress atomic.Bool    // a progress request is being sent
	wg       sync.WaitGroup // barrier and progress requests

	hits, misses atomic.Int64

	// feeds are the event streams (events.go) that follow the watch, under
	// mu: each gets every response's events after the revision it joined
	// at, until the watch ends or it falls behind.
	feeds map[*cacheFeed]bool

	// off, once set, says why the cache turned itself off for good: a
	// server it cannot trust. decided is closed once it is set, or the
	// copy is first in sync, or the cache is closed.
	off         atomic.Pointer[cacheOffError]
	decided     chan struct{}
	decidedOnce sync.Once
}

// cacheOffError says why the read cache is off; it wraps ErrReadCacheOff.
type cacheOffError struct{ reason string }

func (e *cacheOffError) Error() string { return ErrReadCacheOff.Error() + ": " + e.reason }
func (e *cacheOffError) Unwrap() error { return ErrReadCacheOff }

// ErrReadCacheOff is wrapped by the error ReadCacheReady returns when the
// read cache does not serve reads: the store was made without
// WithReadCache, is closed, or turned the cache off for an etcd server
// it cannot trust (the error names it, with its version).
var ErrReadCacheOff = errors.New("etcdstore: read cache off")

// decide closes decided, once.
func (c *readCache) decide() {
	c.decidedOnce.Do(func() { close(c.decided) })
}

// barrier is one linearizable revision request, shared by the reads that
// began before it started.
type barrier struct {
	done chan struct{}
	rev  int64
	err  error
}

// newReadCache returns a cache of the sessions in keys, read through
// client within the deadlines of calls, not yet started: reads fall back
// to etcd until start and its first list.
func newReadCache(client *clientv3.Client, keys keyspace, calls *retrier) *readCache {
	ctx, cancel := context.WithCancel(context.Background())
	return &readCache{client: client, keys: keys, calls: calls, ctx: ctx, cancel: cancel, done: make(chan struct{}), changed: make(chan struct{}), decided: make(chan struct{})}
}

// start starts the goroutine that keeps the copy in sync.
func (c *readCache) start() {
	c.started.Store(true)
	go c.run(c.ctx)
}

// close stops the watch and waits for its goroutine, once.
func (c *readCache) close() {
	c.closeOnce.Do(func() {
		c.cancel()
		if c.started.Load() {
			<-c.done
		}
		c.bmu.Lock()
		c.closed = true // no request starts after this
		c.bmu.Unlock()
		c.wg.Wait()
	})
}

// run keeps the copy in sync until ctx ends, unless an endpoint runs an
// etcd whose progress notifications it cannot trust.
func (c *readCache) run(ctx context.Context) {
	defer close(c.done)
	defer c.decide()
	v := versions{endpoints: make(map[string]bool), members: make(map[uint64]bool)}
	for ctx.Err() == nil {
		if off := c.checkVersions(ctx, v); off != nil {
			c.off.Store(off)
			c.decide()
			return
		}
		if len(v.members) > 0 {
			rev, err := c.list(ctx)
			if err == nil {
				if c.afterList != nil {
					c.afterList()
				}
				c.watch(ctx, rev, v.members)
			}
			c.unsync()
		}
		select {
		case <-ctx.Done():
		case <-time.After(cacheRetry):
		}
	}
}

// versions is what the cache learned of its endpoints' etcd versions:
// the endpoints checked and the IDs of the members whose version it
// trusts, the only ones whose watch responses it applies.
type versions struct {
	endpoints map[string]bool
	members   map[uint64]bool
}

// checkVersions asks each endpoint not yet checked its etcd version, and
// records those it trusts; it returns why the cache must stay off once
// one answers with a version it does not trust, or refuses to tell its
// version to the client's user. An endpoint that does not answer within
// an attempt's share of the store's timeout is asked again next time.
func (c *readCache) checkVersions(ctx context.Context, v versions) *cacheOffError {
	for _, ep := range c.client.Endpoints() {
		if v.endpoints[ep] {
			continue
		}
		sctx, cancel := context.WithTimeout(ctx, c.calls.timeout/attemptShare)
		st, err := c.client.Status(sctx, ep)
		cancel()
		if errors.Is(err, rpctypes.ErrPermissionDenied) {
			return &cacheOffError{fmt.Sprintf("etcd at %s refuses its status, and so its version, to user %q: etcd 3.5.28 to 3.5.31 and 3.6.0 to 3.6.11 give it to the root role alone (etcd-io/etcd#21663; etcd PR #21666 gives it to any user from 3.5.32 and 3.6.12); upgrade etcd, or leave WithReadCache out", ep, c.client.Username)}
		}
		if err != nil {
			continue
		}
		if !progressTrusted(st.Version) {
			return &cacheOffError{fmt.Sprintf("etcd at %s runs %s, whose progress notifications the cache does not trust (etcd#15220, etcd#17507): it needs 3.4.31, 3.5.13 or later; reads go to etcd", ep, st.Version)}
		}
		v.endpoints[ep], v.members[st.Header.MemberId] = true, true
	}
	return nil
}

// progressTrusted reports whether an etcd server of version (as Status
// gives it, "3.5.13") is one whose progress notifications Kubernetes
// trusts: 3.4.31 or later in 3.4, 3.5.13 or later in 3.5, any later minor.
func progressTrusted(version string) bool {
	parts := strings.SplitN(version, ".", 3)
	if len(parts) != 3 {
		return false
	}
	var v [3]int
	for i, p := range parts {
		p, _, _ = strings.Cut(p, "-")
		n, err := strconv.Atoi(p)
		if err != nil {
			return false
		}
		v[i] = n
	}
	switch {
	case v[0] != 3:
		return v[0] > 3
	case v[1] == 4:
		return v[2] >= 31
	case v[1] == 5:
		return v[2] >= 13
	default:
		return v[1] > 5
	}
}

// list reads the prefix range at one revision into a new copy.
func (c *readCache) list(ctx context.Context) (int64, error) {
	values := make(map[string]storedKV)
	rev, err := c.keys.list(ctx, c.client, c.calls, c.calls.newCall(ctx), func(_ call, kvs []*mvccpb.KeyValue) error {
		for _, kv := range kvs {
			values[c.keys.token(kv.Key)] = kvOf(kv)
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	c.mu.Lock()
	c.values, c.rev, c.synced = values, rev, true
	c.notifyLocked()
	c.mu.Unlock()
	c.decide()
	return rev, nil
}

// watch applies the events after rev until the watch ends, or until a
// response comes from a member not in trusted: the client may resume a
// broken watch on another endpoint, one that did not answer when the
// versions were checked, and the copy is then listed again once it has.
func (c *readCache) watch(ctx context.Context, rev int64, trusted map[uint64]bool) {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	for resp := range c.client.Watch(wctx, c.keys.prefix, clientv3.WithRange(c.keys.end), clientv3.WithRev(rev+1)) {
		if resp.Err() != nil || resp.Canceled || !trusted[resp.Header.MemberId] {
			return
		}
		c.mu.Lock()
		for _, ev := range resp.Events {
			token := c.keys.token(ev.Kv.Key)
			if ev.Type == clientv3.EventTypeDelete {
				delete(c.values, token)
			} else {
				c.values[token] = kvOf(ev.Kv)
			}
			c.rev = max(c.rev, ev.Kv.ModRevision)
		}
		if resp.IsProgressNotify() {
			c.rev = max(c.rev, resp.Header.Revision)
		}
		if len(resp.Events) > 0 {
			c.feedLocked(resp.Events)
		}
		c.notifyLocked()
		c.mu.Unlock()
	}
}

// unsync marks the copy out of sync: reads go to etcd until the next list.
// The feeds end: their streams watch for themselves from where they are.
func (c *readCache) unsync() {
	c.mu.Lock()
	c.synced = false
	c.values = nil
	for f := range c.feeds {
		close(f.ch)
	}
	c.feeds = nil
	c.notifyLocked()
	c.mu.Unlock()
}

// notifyLocked wakes the reads waiting for the copy; c.mu is held.
func (c *readCache) notifyLocked() {
	close(c.changed)
	c.changed = make(chan struct{})
}

// read runs f on the copy once it has caught up with a barrier started
// after the call, and reports false when it could not: the caller then
// reads from etcd within what is left of rc's deadline.
func (c *readCache) read(rc call, f func(values map[string]storedKV, rev int64)) bool {
	if c.off.Load() != nil {
		return false // off by design: not a fallback
	}
	c.mu.RLock()
	synced := c.synced
	c.mu.RUnlock()
	if !synced {
		c.misses.Add(1)
		return false
	}
	rev, err := c.barrier(rc)
	if err != nil || c.waitRLocked(rc, rev) != nil {
		c.misses.Add(1)
		return false
	}
	defer c.mu.RUnlock()
	f(c.values, c.rev)
	c.hits.Add(1)
	return true
}

// barrier returns a revision of etcd's that a linearizable request,
// started after the call, read, or an error once rc's share of its time
// passes: a barrier sent to a member that stopped answering would hold
// the read, which falls back to a Get that tries the other members.
func (c *readCache) barrier(rc call) (int64, error) {
	c.bmu.Lock()
	b := c.next
	if b == nil {
		b = &barrier{done: make(chan struct{})}
		c.next = b
	}
	if !c.inFlight {
		c.startLocked()
	}
	c.bmu.Unlock()
	deadline := time.NewTimer(min(rc.share, time.Until(rc.deadline)))
	defer deadline.Stop()
	select {
	case <-b.done:
		return b.rev, b.err
	case <-rc.ctx.Done():
		return 0, rc.ctx.Err()
	case <-deadline.C:
		return 0, context.DeadlineExceeded
	}
}

// startLocked sends the request of the next barrier; c.bmu is held.
func (c *readCache) startLocked() {
	b := c.next
	c.next = nil
	if c.closed || c.ctx.Err() != nil {
		b.err = errNotSynced
		close(b.done)
		return
	}
	c.inFlight = true
	c.wg.Go(func() {
		// A count-only read of one key: linearizable, and it reads no
		// data. It gets an attempt's share of the store's timeout; its
		// readers wait for it no longer than theirs.
		ctx, cancel := context.WithTimeout(clientv3.WithRequireLeader(c.ctx), c.calls.timeout/attemptShare)
		resp, err := c.client.Get(ctx, c.keys.prefix, clientv3.WithCountOnly())
		cancel()
		if err == nil {
			b.rev = resp.Header.Revision
		}
		b.err = err
		close(b.done)
		c.bmu.Lock()
		c.inFlight = false
		if c.next != nil {
			c.startLocked()
		}
		c.bmu.Unlock()
	})
}

// waitRLocked returns holding c.mu's read lock once the copy has applied
// every event up to rev, or returns an error, without the lock, when the
// copy is out of sync or has not caught up within cacheCatchUp or by rc's
// deadline.
func (c *readCache) waitRLocked(rc call, rev int64) error {
	deadline := time.NewTimer(min(cacheCatchUp, time.Until(rc.deadline)))
	defer deadline.Stop()
	ask := time.NewTicker(cacheAskAgain)
	defer ask.Stop()
	for {
		c.mu.RLock()
		if !c.synced {
			c.mu.RUnlock()
			return errNotSynced
		}
		if c.rev >= rev {
			return nil
		}
		changed := c.changed
		c.mu.RUnlock()
		c.requestProgress()
		select {
		case <-changed:
		case <-rc.ctx.Done():
			return rc.ctx.Err()
		case <-deadline.C:
			return errNotSynced
		case <-ask.C:
		}
	}
}

// requestProgress asks etcd for a progress notification on the watch's
// stream, unless a request is being sent already. It sends in the
// background: the stream may be reconnecting, and the read must not wait
// on it past its deadline.
func (c *readCache) requestProgress() {
	c.bmu.Lock()
	defer c.bmu.Unlock()
	if c.closed || c.ctx.Err() != nil || !c.progress.CompareAndSwap(false, true) {
		return
	}
	c.wg.Go(func() {
		defer c.progress.Store(false)
		// The watch's own context, so that the request goes on its
		// stream (clientv3 keys streams by the context's metadata).
		c.client.RequestProgress(clientv3.WithRequireLeader(c.ctx))
	})
}

// ReadCacheReady waits until the read cache (WithReadCache) has asked the
// etcd servers their versions and, if it trusts them, read the sessions
// once, or until ctx ends. It returns nil once the cache serves reads
// from memory; an error wrapping ErrReadCacheOff that says why when the
// cache turned itself off (an endpoint and its version, or a server that
// refuses the client's user its status), when the store was made
// without WithReadCache, or when it is closed; else ctx's error. An app
// can log its answer at start: the cache turns itself off without a
// word, and its reads then go to etcd.
func (s *EtcdStore) ReadCacheReady(ctx context.Context) error {
	mustContext(ctx, "ReadCacheReady")
	if s.cache == nil {
		return fmt.Errorf("%w: the store was made without WithReadCache", ErrReadCacheOff)
	}
	select {
	case <-s.cache.decided:
	case <-ctx.Done():
		return ctx.Err()
	}
	if off := s.cache.off.Load(); off != nil {
		return off
	}
	if s.cache.ctx.Err() != nil {
		return fmt.Errorf("%w: the store is closed", ErrReadCacheOff)
	}
	return nil
}
