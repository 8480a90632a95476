package etcdstore

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
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
// or the wait for the watch fails, reads go to etcd directly, so the cache
// never fails a read that a Get would have answered.
//
// Before etcd 3.4.25 and 3.5.8 a requested progress notification could
// overtake an event of the same revision (etcd#15220), which would let a
// read miss a write; Kubernetes trusts the feature from etcd 3.4.31 and
// 3.5.13 (KEP-2340). The cache asks every endpoint its version first, and
// stays off, every read going to etcd, unless all are at least those.

// cacheCatchUp bounds how long a read waits for the watch to reach its
// barrier before it asks etcd directly.
const cacheCatchUp = time.Second

// cacheRetry is how long the watch waits before it lists again after a
// failure.
const cacheRetry = 100 * time.Millisecond

// WithReadCache makes Find and All answer from a copy of the store's
// sessions in memory, kept by one etcd watch, while staying linearizable:
// a session committed or deleted by any app server before a Find begins is
// seen by that Find (see The read cache in the package documentation).
// Every app server then holds every session of the prefix in memory:
// about 400 bytes a session of 256 bytes, 5 KB one of 4 KiB
// (BenchmarkCacheMemory).
//
// The store starts a goroutine for the watch; Close stops it. The cache
// turns itself off, and reads go to etcd, on servers older than 3.4.31 or
// 3.5.13, whose progress notifications it cannot trust.
func WithReadCache() Option {
	return func(o *options) { o.cache = true }
}

// readCache is the watch-fed copy of a store's prefix range.
type readCache struct {
	s      *EtcdStore
	cancel context.CancelFunc
	done   chan struct{}
	ctx    context.Context // the watch's, for RequestProgress

	mu      sync.RWMutex
	values  map[string]cachedKV // token -> what etcd holds
	rev     int64               // every event up to rev is applied
	synced  bool
	changed chan struct{} // closed, and replaced, when rev moves or sync is lost

	bmu      sync.Mutex // protects inFlight, next and closed
	inFlight bool
	closed   bool
	next     *barrier // the barrier the next request will serve

	progress atomic.Bool    // a progress request is being sent
	wg       sync.WaitGroup // barrier and progress requests

	hits, misses atomic.Int64

	// afterList, if set, runs after each list, before the watch starts;
	// tests use it to compact the revisions the watch will need.
	afterList func()
}

// cachedKV is a session as etcd holds it: its stored value (the
// envelope), its lease and its key's mod revision.
type cachedKV struct {
	value []byte
	lease int64
	mod   int64
}

// kvOf is the cachedKV of a key-value read from etcd.
func kvOf(kv *mvccpb.KeyValue) cachedKV {
	return cachedKV{value: kv.Value, lease: kv.Lease, mod: kv.ModRevision}
}

// barrier is one linearizable revision request, shared by the reads that
// began before it started.
type barrier struct {
	done chan struct{}
	rev  int64
	err  error
}

func newReadCache(s *EtcdStore) *readCache {
	ctx, cancel := context.WithCancel(context.Background())
	c := &readCache{s: s, cancel: cancel, done: make(chan struct{}), ctx: ctx, changed: make(chan struct{}), afterList: s.cacheAfterList}
	go c.run(ctx)
	return c
}

// close stops the watch and waits for its goroutine.
func (c *readCache) close() {
	c.cancel()
	<-c.done
	c.bmu.Lock()
	c.closed = true // no request starts after this
	c.bmu.Unlock()
	c.wg.Wait()
}

// run keeps the copy in sync until ctx ends.
func (c *readCache) run(ctx context.Context) {
	defer close(c.done)
	if !c.trusted(ctx) {
		return
	}
	for ctx.Err() == nil {
		rev, err := c.list(ctx)
		if err == nil {
			if c.afterList != nil {
				c.afterList()
			}
			c.watch(ctx, rev)
		}
		c.unsync()
		select {
		case <-ctx.Done():
		case <-time.After(cacheRetry):
		}
	}
}

// trusted reports whether every endpoint's etcd sends progress
// notifications that no event of the same revision can overtake.
func (c *readCache) trusted(ctx context.Context) bool {
	for _, ep := range c.s.client.Endpoints() {
		var version string
		for ctx.Err() == nil {
			sctx, cancel := context.WithTimeout(ctx, c.s.timeout)
			st, err := c.s.client.Status(sctx, ep)
			cancel()
			if err == nil {
				version = st.Version
				break
			}
			select {
			case <-ctx.Done():
			case <-time.After(cacheRetry):
			}
		}
		if !progressTrusted(version) {
			return false
		}
	}
	return ctx.Err() == nil
}

// progressTrusted reports whether an etcd server of version (as Status
// gives it, "3.5.13") has the fix of etcd#15220 that Kubernetes requires:
// 3.4.31 or later in 3.4, 3.5.13 or later in 3.5, any later minor.
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
	values := make(map[string]cachedKV)
	var rev int64
	from := c.s.prefix
	for {
		resp, err := c.s.page(c.s.newCall(ctx), from, rev)
		if err != nil {
			return 0, err
		}
		if rev == 0 {
			rev = resp.Header.Revision
		}
		for _, kv := range resp.Kvs {
			values[tokenFor(c.s.prefix, kv.Key)] = kvOf(kv)
		}
		if !resp.More || len(resp.Kvs) == 0 {
			break
		}
		from = nextKey(resp.Kvs[len(resp.Kvs)-1].Key)
	}
	c.mu.Lock()
	c.values, c.rev, c.synced = values, rev, true
	c.notifyLocked()
	c.mu.Unlock()
	return rev, nil
}

// watch applies the events after rev until the watch ends.
func (c *readCache) watch(ctx context.Context, rev int64) {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	for resp := range c.s.client.Watch(wctx, c.s.prefix, clientv3.WithRange(c.s.end), clientv3.WithRev(rev+1)) {
		if resp.Err() != nil || resp.Canceled {
			return
		}
		c.mu.Lock()
		for _, ev := range resp.Events {
			token := tokenFor(c.s.prefix, ev.Kv.Key)
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
		c.notifyLocked()
		c.mu.Unlock()
	}
}

// unsync marks the copy out of sync: reads go to etcd until the next list.
func (c *readCache) unsync() {
	c.mu.Lock()
	c.synced = false
	c.values = nil
	c.notifyLocked()
	c.mu.Unlock()
}

func (c *readCache) notifyLocked() {
	close(c.changed)
	c.changed = make(chan struct{})
}

// barrier returns a revision of etcd's that a linearizable request,
// started after the call, read, or an error once rc's share of its time
// passes.
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
	// No longer than an attempt's share: a barrier sent to a member that
	// stopped answering would hold the read, which falls back to a Get
	// that tries the other members.
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
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		ctx, cancel := context.WithTimeout(clientv3.WithRequireLeader(c.ctx), c.s.timeout/attemptShare)
		// A count of one key that never exists: linearizable, and it
		// reads no data. Its readers wait for it no longer than their
		// own deadlines.
		resp, err := c.s.client.Get(ctx, c.s.prefix, clientv3.WithCountOnly())
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
	}()
}

// errNotSynced says the copy cannot serve a read now.
var errNotSynced = errors.New("read cache not in sync")

// wait returns once the copy has applied every event up to rev, holding
// the read lock, or an error, without it, when the copy is out of sync or
// has not caught up within cacheCatchUp or by rc's deadline.
func (c *readCache) wait(rc call, rev int64) error {
	deadline := time.NewTimer(min(cacheCatchUp, time.Until(rc.deadline)))
	defer deadline.Stop()
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
		case <-time.After(50 * time.Millisecond):
			// The progress request may have crossed a notification:
			// ask again.
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
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		defer c.progress.Store(false)
		// The watch's own context, so that the request goes on its
		// stream (clientv3 keys streams by the context's metadata).
		c.s.client.RequestProgress(clientv3.WithRequireLeader(c.ctx))
	}()
}

// read runs f on the copy once it has caught up with a barrier started
// after the call, and reports false when it could not: the caller then
// reads from etcd within what is left of rc's deadline.
func (c *readCache) read(rc call, f func(values map[string]cachedKV, rev int64)) bool {
	c.mu.RLock()
	synced := c.synced
	c.mu.RUnlock()
	if !synced {
		c.misses.Add(1)
		return false
	}
	rev, err := c.barrier(rc)
	if err != nil || c.wait(rc, rev) != nil {
		c.misses.Add(1)
		return false
	}
	defer c.mu.RUnlock()
	f(c.values, c.rev)
	c.hits.Add(1)
	return true
}

// Close stops what the store runs in the background: the watch of
// WithReadCache. It does not close the etcd client. The store keeps
// working after Close, reading from etcd. Close is safe to call more
// than once, and on a store without a read cache.
func (s *EtcdStore) Close() error {
	if s.cache != nil {
		s.cacheOnce.Do(s.cache.close)
	}
	return nil
}
