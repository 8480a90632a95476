package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/bits"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sync/singleflight"
)

// Lease reuse.
//
// A lease grant is a raft write, as costly as the Put it serves, and every
// live lease costs the etcd server memory and, at its end, revoke work
// (see docs/performance.md). So sessions share leases: each session's
// expiry falls in a bucket, a span of time of width w aligned to multiples
// of w, and all sessions in a bucket ride one lease whose TTL reaches the
// bucket's end. A key therefore outlives its session by less than w plus
// one second of rounding (plus the leader's expiry lag); the value
// envelope hides it from Find and All in the meantime.
//
// w is a fraction (1/20, Kubernetes' apiserver uses 5% too) of the
// session's remaining lifetime, rounded down to a power of two seconds,
// and at least 1 s and at most maxBucket (60 s by default, as in
// Kubernetes' apiserver, pkg/storage/etcd3/lease_manager.go). Powers of two
// keep the number of distinct bucket widths small, so sessions of slightly
// different lifetimes still share. WithLeaseBucket fixes w instead.

const (
	// defaultMaxBucket caps the adaptive bucket width.
	defaultMaxBucket = 60 * time.Second
	// bucketFraction is the inverse of the share of a session's remaining
	// lifetime that its bucket may span.
	bucketFraction = 20
	// shareAttempts bounds how often a commit waits on a shared grant
	// whose lease other commits then fill before falling back to a grant
	// of its own.
	shareAttempts = 4
)

// bucket names the span of expiries that may share a lease: the
// half-open interval (end-width, end], with end a multiple of width
// since the Unix epoch.
type bucket struct {
	width time.Duration
	end   int64 // Unix nanoseconds
}

// bucketFor returns the bucket of a session that expires at expiry, as
// seen at now. fixed > 0 sets the width; otherwise it adapts to the
// remaining lifetime, capped at maxWidth. The caller guarantees
// expiry.After(now).
func bucketFor(now, expiry time.Time, fixed, maxWidth time.Duration) bucket {
	w := fixed
	if w <= 0 {
		w = adaptiveWidth(expiry.Sub(now), maxWidth)
	}
	e := expiry.UnixNano()
	// Round e up to a multiple of w: an expiry exactly on a boundary
	// belongs to the bucket that ends there.
	end := e - e%int64(w)
	if end < e {
		if end > math.MaxInt64-int64(w) {
			// The next boundary is past the envelope's range: the last
			// bucket ends at the latest expiry itself.
			end = math.MaxInt64
		} else {
			end += int64(w)
		}
	}
	return bucket{width: w, end: end}
}

// adaptiveWidth is the bucket width for a session with the given
// remaining lifetime: remaining/bucketFraction rounded down to a power of
// two seconds, at least 1 s, and maxWidth when it would reach maxWidth.
func adaptiveWidth(remaining, maxWidth time.Duration) time.Duration {
	w := remaining / bucketFraction
	if w >= maxWidth {
		return maxWidth
	}
	s := uint64(w / time.Second)
	if s < 1 {
		return time.Second
	}
	return time.Duration(1<<(bits.Len64(s)-1)) * time.Second
}

// ttlSeconds converts a duration to a lease TTL in whole seconds, rounding
// up so that the lease never ends before the duration does.
func ttlSeconds(d time.Duration) int64 {
	s := int64(d / time.Second)
	if d%time.Second > 0 {
		s++
	}
	return s
}

// leaseEntry is a lease the store granted and may still attach keys to.
type leaseEntry struct {
	id   clientv3.LeaseID
	keys int // keys attached so far; an upper bound on the keys it holds
	// end is when the lease ends at the latest, on the monotonic clock:
	// its TTL after the grant was asked for.
	end time.Duration
}

// leaseTable maps buckets to their current lease. It does no I/O and is
// not safe for concurrent use: leaseManager guards it.
type leaseTable struct {
	entries map[bucket]*leaseEntry
}

// take reuses the lease of bucket b when it has room for one more key
// under maxKeys and lasts until until on the monotonic clock, counting
// the key, and reports whether it did. A lease granted before the wall
// clock stepped back ends before the sessions of its bucket now expire:
// it fails the second test, and the bucket gets a new lease.
func (t *leaseTable) take(b bucket, maxKeys int, until time.Duration) (clientv3.LeaseID, bool) {
	e := t.entries[b]
	if e == nil || e.keys >= maxKeys || e.end < until {
		return 0, false
	}
	e.keys++
	return e.id, true
}

// current returns the lease now serving bucket b, or 0 when there is none.
func (t *leaseTable) current(b bucket) clientv3.LeaseID {
	if e := t.entries[b]; e != nil {
		return e.id
	}
	return 0
}

// add makes id, granted for bucket b with keys already attached and
// ending at end on the monotonic clock, the lease of b, replacing one
// that is full or ends too soon. It first drops every bucket that
// ended at or before now, since no session that expires after now falls
// in it: this keeps the table to the buckets of live sessions without a
// background goroutine, and costs nothing on the commits that reuse a
// lease.
func (t *leaseTable) add(now time.Time, b bucket, id clientv3.LeaseID, keys int, end time.Duration) {
	if t.entries == nil {
		t.entries = make(map[bucket]*leaseEntry)
	}
	n := now.UnixNano()
	for k := range t.entries {
		if k.end <= n {
			delete(t.entries, k)
		}
	}
	t.entries[b] = &leaseEntry{id: id, keys: keys, end: end}
}

// len returns how many buckets that end after now have a lease.
func (t *leaseTable) len(now time.Time) int {
	n := 0
	for k := range t.entries {
		if k.end > now.UnixNano() {
			n++
		}
	}
	return n
}

// forget drops lease id, which etcd no longer knows, so that no further
// key is attached to it.
func (t *leaseTable) forget(id clientv3.LeaseID) {
	for k, e := range t.entries {
		if e.id == id {
			delete(t.entries, k)
		}
	}
}

// leaseManager hands out shared leases. It is safe for concurrent use by
// multiple goroutines and holds no lock across an RPC.
type leaseManager struct {
	lease    clientv3.Lease
	fixed    time.Duration // WithLeaseBucket, or 0
	maxWidth time.Duration
	maxKeys  int
	// mono reads the monotonic clock, which no wall clock step moves: the
	// time since the manager was made.
	mono func() time.Duration

	grants  singleflight.Group
	granted atomic.Int64 // leases granted, for Stats

	mu    sync.Mutex // protects table
	table leaseTable
}

// newLeaseManager returns a manager of leases from lease, with buckets of
// width fixed (0: adaptive) and at most maxKeys keys a lease.
func newLeaseManager(lease clientv3.Lease, fixed time.Duration, maxKeys int) *leaseManager {
	start := time.Now()
	return &leaseManager{
		lease:    lease,
		fixed:    fixed,
		maxWidth: defaultMaxBucket,
		maxKeys:  maxKeys,
		mono:     func() time.Duration { return time.Since(start) },
	}
}

// acquire returns a lease that outlives expiry, as the wall clock reads
// now, and attaches one key to it, granting a lease when the session's
// bucket has none with room that lasts long enough. Concurrent commits
// that need the same new lease share one Grant. Its errors have no
// package prefix: the caller adds it.
func (m *leaseManager) acquire(ctx context.Context, now, expiry time.Time) (clientv3.LeaseID, error) {
	b := bucketFor(now, expiry, m.fixed, m.maxWidth)
	mono := m.mono()
	until := mono + expiry.Sub(now)
	for range shareAttempts {
		m.mu.Lock()
		id, ok := m.table.take(b, m.maxKeys, until)
		var prev clientv3.LeaseID
		if !ok {
			prev = m.table.current(b)
		}
		m.mu.Unlock()
		if ok {
			return id, nil
		}
		// Keyed by the full (or missing) lease it replaces, so commits
		// that find the same lease full share one grant, and a commit
		// that arrives after the replacement has filled up asks anew.
		key := strconv.FormatInt(int64(b.width), 36) + ":" + strconv.FormatInt(b.end, 36) + ":" + strconv.FormatInt(int64(prev), 36)
		ch := m.grants.DoChan(key, func() (any, error) {
			// A grant for prev may have ended between our look at the
			// table and this call, which singleflight then no longer
			// knows of: the table has moved on, so take from it again.
			m.mu.Lock()
			moved := m.table.current(b) != prev
			m.mu.Unlock()
			if moved {
				return nil, nil
			}
			id, end, err := m.grant(ctx, now, mono, b)
			if err != nil {
				return nil, err
			}
			m.mu.Lock()
			m.table.add(now, b, id, 0, end)
			m.mu.Unlock()
			return nil, nil
		})
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("wait for lease grant: %w", ctx.Err())
		case r := <-ch:
			// A shared grant that failed because the commit that started
			// it gave up says nothing about this one: try again.
			if r.Err != nil && !(r.Shared && isContextErr(r.Err)) {
				return 0, r.Err
			}
		}
	}
	// Others filled every shared lease first: grant one of our own and
	// let later commits share its remaining room.
	id, end, err := m.grant(ctx, now, mono, b)
	if err != nil {
		return 0, err
	}
	m.mu.Lock()
	m.table.add(now, b, id, 1, end)
	m.mu.Unlock()
	return id, nil
}

// grant asks etcd for a lease that lasts at least until the end of b,
// and returns it with its end at the latest on the monotonic clock. The
// TTL is counted from when the server grants, which is after now (mono on
// the monotonic clock), so the lease ends no earlier than b does.
func (m *leaseManager) grant(ctx context.Context, now time.Time, mono time.Duration, b bucket) (clientv3.LeaseID, time.Duration, error) {
	ttl := ttlSeconds(time.Unix(0, b.end).Sub(now))
	resp, err := m.lease.Grant(ctx, ttl)
	if err != nil {
		return 0, 0, fmt.Errorf("grant lease of %d s: %w", ttl, err)
	}
	m.granted.Add(1)
	return resp.ID, mono + time.Duration(ttl)*time.Second, nil
}

// len returns how many leases serve buckets that end after now.
func (m *leaseManager) len(now time.Time) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.table.len(now)
}

// forget drops lease id after etcd reported it unknown (revoked
// elsewhere, or the cluster restored from an older backup).
func (m *leaseManager) forget(id clientv3.LeaseID) {
	m.mu.Lock()
	m.table.forget(id)
	m.mu.Unlock()
}

// isContextErr reports whether err comes from a canceled or expired
// context.
func isContextErr(err error) bool {
	return errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}
