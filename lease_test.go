package etcdstore

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sync/errgroup"

	"github.com/etcdstore/etcdstore/internal/etcdtest"
)

var t0 = time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)

// forever is the monotonic end of a lease that outlives every test.
const forever = time.Duration(1<<63 - 1)

func TestAdaptiveWidth(t *testing.T) {
	tests := []struct {
		remaining time.Duration
		want      time.Duration
	}{
		{0, time.Second},
		{500 * time.Millisecond, time.Second},
		{19 * time.Second, time.Second},
		{40 * time.Second, 2 * time.Second},
		{59 * time.Second, 2 * time.Second},
		{80 * time.Second, 4 * time.Second},
		{10 * time.Minute, 16 * time.Second},   // 30 s rounds down to 16 s
		{20 * time.Minute, 60 * time.Second},   // 60 s reaches the cap
		{19 * time.Minute, 32 * time.Second},   // 57 s rounds down to 32 s
		{24 * time.Hour, 60 * time.Second},     // capped
		{1 << 62, 60 * time.Second},            // no overflow
		{20*time.Minute - 1, 32 * time.Second}, // just under the cap
	}
	for i, tt := range tests {
		t.Run(tt.remaining.String(), func(t *testing.T) {
			if got := adaptiveWidth(tt.remaining, defaultMaxBucket); got != tt.want {
				t.Errorf("#%d: adaptiveWidth(%v) = %v, want %v", i, tt.remaining, got, tt.want)
			}
		})
	}
}

func TestBucketFor(t *testing.T) {
	tests := []struct {
		name   string
		now    time.Time
		expiry time.Time
		fixed  time.Duration
		want   bucket
	}{
		{"24h session, 60 s buckets", t0, t0.Add(24*time.Hour + 10*time.Second), 0,
			bucket{time.Minute, t0.Add(24*time.Hour + time.Minute).UnixNano()}},
		{"expiry on a boundary ends its bucket", t0, t0.Add(24 * time.Hour), 0,
			bucket{time.Minute, t0.Add(24 * time.Hour).UnixNano()}},
		{"one nanosecond past a boundary starts the next", t0, t0.Add(24*time.Hour + 1), 0,
			bucket{time.Minute, t0.Add(24*time.Hour + time.Minute).UnixNano()}},
		{"sub-second session, 1 s bucket", t0, t0.Add(300 * time.Millisecond), 0,
			bucket{time.Second, t0.Add(time.Second).UnixNano()}},
		{"latest expiry: the bucket end does not overflow", t0, latestExpiry, 0,
			bucket{time.Minute, latestExpiry.UnixNano()}},
		{"fixed width", t0, t0.Add(24*time.Hour + time.Second), 10 * time.Minute,
			bucket{10 * time.Minute, t0.Add(24*time.Hour + 10*time.Minute).UnixNano()}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := bucketFor(tt.now, tt.expiry, tt.fixed, defaultMaxBucket)
			if got != tt.want {
				t.Errorf("%s: bucketFor = {%v %v}, want {%v %v}", tt.name,
					got.width, time.Unix(0, got.end).UTC(), tt.want.width, time.Unix(0, tt.want.end).UTC())
			}
		})
	}
}

// TestBucketBounds checks the two promises of a bucket for many expiries:
// the lease granted for it outlives the session, and by less than one
// bucket width plus one second of TTL rounding.
func TestBucketBounds(t *testing.T) {
	for i := range 2000 {
		// Spread remaining lifetimes from 1 ms to about 70 days.
		remaining := time.Millisecond + time.Duration(i)*time.Duration(i)*time.Duration(i%97+1)*time.Millisecond*7
		now := t0.Add(time.Duration(i) * 7919 * time.Microsecond)
		expiry := now.Add(remaining)
		b := bucketFor(now, expiry, 0, defaultMaxBucket)
		leaseEnd := now.Add(time.Duration(ttlSeconds(time.Unix(0, b.end).Sub(now))) * time.Second)
		if leaseEnd.Before(expiry) {
			t.Fatalf("#%d: lease ends %v, before the session's expiry %v", i, leaseEnd, expiry)
		}
		if over := leaseEnd.Sub(expiry); over >= b.width+time.Second {
			t.Fatalf("#%d: lease outlives the session by %v, bucket width %v", i, over, b.width)
		}
	}
}

func TestTTLSeconds(t *testing.T) {
	tests := []struct {
		d    time.Duration
		want int64
	}{
		{0, 0},
		{1, 1},
		{900 * time.Millisecond, 1}, // never truncated to 0
		{time.Second, 1},
		{time.Second + 1, 2},
		{24 * time.Hour, 86400},
	}
	for i, tt := range tests {
		t.Run(tt.d.String(), func(t *testing.T) {
			if got := ttlSeconds(tt.d); got != tt.want {
				t.Errorf("#%d: ttlSeconds(%v) = %d, want %d", i, tt.d, got, tt.want)
			}
		})
	}
}

// TestLeaseTableReuse is the reuse decision, step by step, on a table
// with no I/O: equal-lifetime sessions share their bucket's lease until
// it is full, a new bucket gets its own lease, and buckets that have
// ended leave the table when a lease is added.
func TestLeaseTableReuse(t *testing.T) {
	const maxKeys = 3
	var tab leaseTable
	now := t0
	b1 := bucketFor(now, now.Add(24*time.Hour), 0, defaultMaxBucket)

	if _, ok := tab.take(b1, maxKeys, 0); ok {
		t.Fatal("empty table: take reused a lease")
	}
	tab.add(now, b1, 1, 0, forever)
	for i := range maxKeys {
		id, ok := tab.take(b1, maxKeys, 0)
		if !ok || id != 1 {
			t.Fatalf("key %d: take = %d, %v; want lease 1", i, id, ok)
		}
	}
	if id, ok := tab.take(b1, maxKeys, 0); ok {
		t.Fatalf("full lease: take = %d, want a new grant", id)
	}
	if got := tab.current(b1); got != 1 {
		t.Fatalf("current = %d, want the full lease 1 (it keys the next grant)", got)
	}

	// A session committed 10 s later still falls in the same 60 s
	// bucket; after the replacement grant it shares lease 2.
	later := now.Add(10 * time.Second)
	b := bucketFor(later, later.Add(24*time.Hour-10*time.Second), 0, defaultMaxBucket)
	if b != b1 {
		t.Fatalf("bucket moved: %v, want %v", b, b1)
	}
	tab.add(later, b1, 2, 0, forever)
	if id, _ := tab.take(b1, maxKeys, 0); id != 2 {
		t.Fatalf("after replacement: take = %d, want 2", id)
	}

	// A minute on, the next bucket needs its own lease.
	next := now.Add(time.Minute)
	b2 := bucketFor(next, next.Add(24*time.Hour), 0, defaultMaxBucket)
	if b2 == b1 {
		t.Fatal("a minute later, same bucket")
	}
	if _, ok := tab.take(b2, maxKeys, 0); ok {
		t.Fatal("new bucket reused another bucket's lease")
	}
	tab.add(next, b2, 3, 0, forever)

	// Once b1 has ended, adding a lease drops it.
	end := time.Unix(0, b1.end)
	tab.add(end, bucketFor(end, end.Add(24*time.Hour), 0, defaultMaxBucket), 4, 0, forever)
	if _, ok := tab.entries[b1]; ok {
		t.Fatal("bucket that ended is still in the table")
	}
	if _, ok := tab.entries[b2]; !ok {
		t.Fatal("live bucket was dropped")
	}

	tab.forget(3)
	if got := tab.current(b2); got != 0 {
		t.Fatalf("after forget: current = %d, want none", got)
	}
}

// TestLeaseTableClockSteps: a lease is reused only while it lasts, on
// the monotonic clock, until the session's expiry, however the wall clock
// has stepped since the grant.
func TestLeaseTableClockSteps(t *testing.T) {
	tests := []struct {
		name    string
		step    time.Duration // wall clock step after the grant
		elapsed time.Duration // monotonic time since the grant
		reused  bool
	}{
		{"no step", 0, 10 * time.Second, true},
		{"forward 50 s", 50 * time.Second, 10 * time.Second, true},
		{"back 50 s", -50 * time.Second, 10 * time.Second, false},
		{"back 5 s", -5 * time.Second, 10 * time.Second, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var tab leaseTable
			granted := time.Duration(0) // monotonic reading at the grant
			b := bucketFor(t0, t0.Add(24*time.Hour), 0, defaultMaxBucket)
			tab.add(t0, b, 1, 0, granted+time.Duration(ttlSeconds(time.Unix(0, b.end).Sub(t0)))*time.Second)

			// A session of the same lifetime, committed once the wall
			// clock reads t0+elapsed+step, in the bucket of its expiry.
			now := t0.Add(tt.elapsed + tt.step)
			expiry := now.Add(24 * time.Hour)
			if bucketFor(now, expiry, 0, defaultMaxBucket) != b {
				expiry = time.Unix(0, b.end) // keep it in b: the case under test
			}
			until := granted + tt.elapsed + expiry.Sub(now)
			_, ok := tab.take(b, 1000, until)
			if ok != tt.reused {
				t.Errorf("take after a %v step and %v: reused = %v, want %v", tt.step, tt.elapsed, ok, tt.reused)
			}
		})
	}
}

func TestLeaseTableForgetsOnlyThatLease(t *testing.T) {
	var tab leaseTable
	ba := bucketFor(t0, t0.Add(time.Hour), 0, defaultMaxBucket)
	bb := bucketFor(t0, t0.Add(2*time.Hour), 0, defaultMaxBucket)
	tab.add(t0, ba, clientv3.LeaseID(7), 0, forever)
	tab.add(t0, bb, clientv3.LeaseID(8), 0, forever)
	tab.forget(7)
	if tab.current(ba) != 0 || tab.current(bb) != 8 {
		t.Fatalf("forget(7): a=%d b=%d, want a=0 b=8", tab.current(ba), tab.current(bb))
	}
}

// Lease reuse against a real etcd.

// TestLeasesShared: thousands of concurrent commits of 24 h sessions
// create a handful of leases, one per 1000 keys, where the upstream store
// grants one per commit and never revokes them.
func TestLeasesShared(t *testing.T) {
	t.Parallel()
	s, c := newOwnStore(t)
	const commits, workers = 3000, 32
	// A fixed clock keeps every session in one bucket, whenever the test
	// runs.
	now := time.Now()
	s.now = func() time.Time { return now }
	var g errgroup.Group
	for w := range workers {
		g.Go(func() error {
			for i := w; i < commits; i += workers {
				if err := s.Commit(fmt.Sprintf("tok%05d", i), []byte("x"), now.Add(24*time.Hour)); err != nil {
					return err
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	got := etcdtest.Leases(t, c)
	if want := commits / defaultMaxKeysPerLease; got < want || got > want+1 {
		t.Fatalf("%d commits made %d leases, want %d (or %d)", commits, got, want, want+1)
	}
	t.Logf("%d concurrent commits of 24 h sessions: %d leases", commits, got)

	// Re-committing the same sessions (as SCS does on every request with
	// IdleTimeout) keeps within one lease per 1000 commits.
	const recommits = 1000
	var rewg sync.WaitGroup
	for w := range workers {
		rewg.Add(1)
		go func() {
			defer rewg.Done()
			for i := w; i < recommits; i += workers {
				if err := s.Commit(fmt.Sprintf("tok%05d", i%100), []byte("y"), now.Add(24*time.Hour)); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	rewg.Wait()
	if after := etcdtest.Leases(t, c); after-got > recommits/defaultMaxKeysPerLease {
		t.Fatalf("%d more commits made %d more leases", recommits, after-got)
	}
}

// TestConcurrentGrantsCollapse: commits that all need the same new lease
// cause one grant.
func TestConcurrentGrantsCollapse(t *testing.T) {
	t.Parallel()
	// A grant's attempt gets a fifth of the timeout: one that a loaded
	// machine slows past it is made again, and etcd may have both.
	s, c := newOwnStore(t, WithTimeout(30*time.Second))
	now := time.Now()
	s.now = func() time.Time { return now }
	s.leases.mono = func() time.Duration { return 0 } // stopped, as the wall clock
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			if err := s.Commit(fmt.Sprint("tok", i), []byte("x"), now.Add(time.Hour)); err != nil {
				t.Error(err)
			}
		}()
	}
	close(start)
	wg.Wait()
	if n := etcdtest.Leases(t, c); n != 1 {
		t.Fatalf("64 concurrent commits of one bucket granted %d leases, want 1", n)
	}
}

// TestGrantsCollapseEveryRound: in round after round of commits that
// need one new lease, each round grants once. Before the shared grant
// looked at the table again, a commit that saw the table empty just
// before a grant ended started a second one: 1 to 4 rounds in 200.
func TestGrantsCollapseEveryRound(t *testing.T) {
	t.Parallel()
	s, _ := newOwnStore(t)
	now := time.Now()
	// Stopped, as now: a commit that came a second after the grant would
	// find the lease ending too soon for its expiry.
	s.leases.mono = func() time.Duration { return 0 }
	const rounds, commits = 600, 16
	twice := 0
	for r := range rounds {
		expiry := now.Add(time.Hour + time.Duration(r)*time.Minute) // a bucket of its own
		before := s.leases.granted.Load()
		var g errgroup.Group
		start := make(chan struct{})
		for range commits {
			g.Go(func() error {
				<-start
				_, err := s.leases.acquire(ctxFor(t), now, expiry)
				return err
			})
		}
		close(start)
		if err := g.Wait(); err != nil {
			t.Fatal(err)
		}
		if s.leases.granted.Load()-before != 1 {
			twice++
		}
	}
	if twice > 0 {
		t.Fatalf("%d of %d rounds granted more than one lease", twice, rounds)
	}
}

// TestMaxKeysPerLease: the cap holds under concurrency, and each key is
// on a lease.
func TestMaxKeysPerLease(t *testing.T) {
	t.Parallel()
	s, c := newStore(t, WithMaxKeysPerLease(5))
	now := time.Now()
	s.now = func() time.Time { return now }
	var wg sync.WaitGroup
	for i := range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.Commit(fmt.Sprint("tok", i), []byte("x"), now.Add(time.Hour)); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	resp, err := c.Get(ctxFor(t), s.keys.prefix, clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	perLease := map[int64]int{}
	for _, kv := range resp.Kvs {
		perLease[kv.Lease]++
	}
	if len(resp.Kvs) != 40 || perLease[0] != 0 {
		t.Fatalf("%d keys, %d without a lease; want 40, 0", len(resp.Kvs), perLease[0])
	}
	for id, n := range perLease {
		if n > 5 {
			t.Errorf("lease %x holds %d keys, cap 5", id, n)
		}
	}
	if len(perLease) < 8 {
		t.Errorf("40 keys on %d leases, want at least 8", len(perLease))
	}
}

// TestLeaseRevokedElsewhere: a lease revoked behind the store's back (by
// another client, or lost in a restore from backup) is forgotten and the
// commit retried on a fresh one.
func TestLeaseRevokedElsewhere(t *testing.T) {
	t.Parallel()
	s, c := newStore(t)
	ctx := ctxFor(t)
	expiry := time.Now().Add(time.Hour)
	if err := s.Commit("a", []byte("x"), expiry); err != nil {
		t.Fatal(err)
	}
	old := rawValue(t, c, s, "a").lease
	if _, err := c.Revoke(ctx, old); err != nil {
		t.Fatal(err)
	}
	if err := s.Commit("b", []byte("y"), expiry); err != nil {
		t.Fatalf("Commit after the revoke: %v", err)
	}
	kv := rawValue(t, c, s, "b")
	if kv == nil || kv.lease == old {
		t.Fatalf("after the revoke the key is %+v, want it on a new lease", kv)
	}
	if b, found, err := s.Find("b"); err != nil || !found || string(b) != "y" {
		t.Fatalf("Find = %q, %v, %v", b, found, err)
	}
}

func TestGrantFailureIsAnError(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	// The canceled grant is the first RPC of the commit.
	err := s.CommitCtx(ctx, "tok", []byte("x"), time.Now().Add(time.Hour))
	if err == nil || !strings.Contains(err.Error(), "lease") {
		t.Fatalf("Commit with a failing grant = %v, want an error about the lease", err)
	}
	if err := s.Commit("tok", []byte("x"), time.Now().Add(time.Hour)); err != nil {
		t.Fatalf("Commit after a failed grant: %v", err)
	}
}

// TestLeaseReuseAfterClockStep: after the app server's wall clock steps
// back, a session is not put on a lease granted before the step, which
// would end before the session expires; without a step, the same
// session shares that lease.
func TestLeaseReuseAfterClockStep(t *testing.T) {
	t.Parallel()
	s, c := newStore(t)
	// The wall clock reads wall; the monotonic clock does not move: the
	// commits below are, for the store, at one instant.
	minute := time.Now().Truncate(time.Minute).Add(time.Hour)
	wall := minute.Add(30 * time.Second)
	s.now = func() time.Time { return wall }
	s.leases.mono = func() time.Duration { return 0 }
	// Both sessions expire in the 60 s bucket that ends at minute+1h.
	if err := s.Commit("before", []byte("x"), minute.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	before := rawValue(t, c, s, "before").lease

	expiry := minute.Add(time.Hour - 20*time.Second)
	if err := s.Commit("same clock", []byte("x"), expiry); err != nil {
		t.Fatal(err)
	}
	if got := rawValue(t, c, s, "same clock").lease; got != before {
		t.Fatalf("no clock step: session on lease %x, want the bucket's lease %x", got, before)
	}

	wall = wall.Add(-50 * time.Second)
	if err := s.Commit("after step", []byte("x"), expiry); err != nil {
		t.Fatal(err)
	}
	after := rawValue(t, c, s, "after step").lease
	if after == before {
		t.Fatalf("after a 50 s step back: session on lease %x, granted before the step", before)
	}
	ttl, err := c.TimeToLive(ctxFor(t), after)
	if err != nil {
		t.Fatal(err)
	}
	if need := expiry.Sub(wall); time.Duration(ttl.GrantedTTL)*time.Second < need {
		t.Errorf("after a 50 s step back: lease of %d s for a session %v from expiry", ttl.GrantedTTL, need)
	}
}
