package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdstore/etcdstore/internal/etcdtest"
)

// synced waits until the store's read cache is in sync, or fails the
// test after 10 s.
func synced(t *testing.T, s *EtcdStore) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		s.cache.mu.RLock()
		ok := s.cache.synced
		s.cache.mu.RUnlock()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("read cache not in sync after 10 s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// cachedStore returns a store with the read cache on c under the test's
// prefix, closed when the test ends, once its cache is in sync. On a
// server whose version the cache does not trust, the test is skipped.
func cachedStore(t *testing.T, c *clientv3.Client, opts ...Option) *EtcdStore {
	t.Helper()
	if st, err := c.Status(ctxFor(t), c.Endpoints()[0]); err != nil {
		t.Fatal(err)
	} else if !progressTrusted(st.Version) {
		t.Skipf("the read cache stays off on etcd %s (TestReadCacheOnlyOnTrustedServers)", st.Version)
	}
	s := NewWithPrefix(c, testPrefix(t), append(opts, WithReadCache())...)
	t.Cleanup(func() { s.Close() })
	synced(t, s)
	return s
}

func TestProgressTrusted(t *testing.T) {
	for v, want := range map[string]bool{
		"3.4.23": false, "3.4.30": false, "3.4.31": true, "3.4.40": true,
		"3.5.8": false, "3.5.12": false, "3.5.13": true, "3.5.35": true,
		"3.6.0": true, "3.6.16": true, "3.7.3": true, "4.0.0": true, "2.3.8": false,
		"3.6.0-rc.1": true, "": false, "3.5": false, "x.y.z": false,
	} {
		if got := progressTrusted(v); got != want {
			t.Errorf("progressTrusted(%q) = %v, want %v", v, got, want)
		}
	}
}

// TestReadCacheSeesWritesAtOnce: a session committed or deleted through
// another store, with its own client, is seen by the very next Find of a
// store with the read cache, thousands of times over, and the cache
// answered those Finds.
func TestReadCacheSeesWritesAtOnce(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t)
	reader := cachedStore(t, srv.Client(t))
	writer := NewWithPrefix(srv.Client(t), reader.keys.prefix)
	const rounds = 2000
	expiry := time.Now().Add(time.Hour)
	// Each token is created, overwritten, then deleted, and not used
	// again: the writer would refuse to bring a deleted session back.
	for i := range rounds {
		var token, want string
		switch i % 3 {
		case 0:
			token, want = fmt.Sprint("t", i), fmt.Sprint("new", i)
		case 1:
			token, want = fmt.Sprint("t", i-1), fmt.Sprint("changed", i)
		case 2:
			token = fmt.Sprint("t", i-2)
		}
		var err error
		if want == "" {
			err = writer.Delete(token)
		} else {
			err = writer.Commit(token, []byte(want), expiry)
		}
		if err != nil {
			t.Fatal(err)
		}
		got, found, err := reader.Find(token)
		if err != nil || string(got) != want || found != (want != "") {
			t.Fatalf("round %d: Find(%s) = %q, %v, %v right after the write of %q", i, token, got, found, err, want)
		}
	}
	st := reader.Stats()
	if st.CacheReads < rounds*9/10 {
		t.Errorf("%d of %d Finds answered from the cache (%d fell back), want nearly all", st.CacheReads, rounds, st.CacheFallbacks)
	}
	t.Logf("%d Finds from the cache, %d fell back", st.CacheReads, st.CacheFallbacks)
}

// TestReadCacheUnderLeaderLoss: the same through a three-member cluster
// whose leader is killed in the middle: every Find that returns sees the
// last write that returned before it began.
func TestReadCacheUnderLeaderLoss(t *testing.T) {
	t.Parallel()
	c := etcdtest.StartCluster(t, 3)
	reader := cachedStore(t, c.Client(t))
	writer := NewWithPrefix(c.Client(t), reader.keys.prefix)
	expiry := time.Now().Add(time.Hour)
	var killed atomic.Bool
	for i := range 1500 {
		if i == 500 {
			c.Kill(c.Leader())
			killed.Store(true)
		}
		token := fmt.Sprint("t", i%5)
		want := fmt.Sprint("v", i)
		if err := writer.Commit(token, []byte(want), expiry); err != nil {
			continue // not acknowledged: nothing to expect
		}
		got, found, err := reader.Find(token)
		if err != nil {
			continue
		}
		if !found || string(got) != want {
			t.Fatalf("round %d (leader killed: %v): Find(%s) = %q, %v right after the write of %q", i, killed.Load(), token, got, found, want)
		}
	}
	st := reader.Stats()
	t.Logf("%d Finds from the cache, %d fell back", st.CacheReads, st.CacheFallbacks)
	if st.CacheReads < 500 {
		t.Errorf("only %d Finds from the cache", st.CacheReads)
	}
}

// TestReadCacheRelistsAfterCompaction: when the revisions its watch needs
// are compacted, the cache lists again, and reads meanwhile stay right.
func TestReadCacheRelistsAfterCompaction(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t, etcdtest.Own())
	c := srv.Client(t)
	writer := NewWithPrefix(srv.Client(t), testPrefix(t))
	expiry := time.Now().Add(time.Hour)
	var lists atomic.Int64
	s := NewWithPrefix(c, testPrefix(t))
	s.cache = newReadCache(c, s.keys, s.calls)
	s.cache.afterList = func() {
		if lists.Add(1) > 1 {
			return
		}
		// Between the first list and its watch: writes, then a
		// compaction past them.
		for i := range 5 {
			if err := writer.Commit(fmt.Sprint("t", i), []byte("after"), expiry); err != nil {
				t.Error(err)
			}
		}
		resp, err := c.Get(context.Background(), "x")
		if err == nil {
			_, err = c.Compact(context.Background(), resp.Header.Revision)
		}
		if err != nil {
			t.Error(err)
		}
	}
	s.cache.start()
	t.Cleanup(func() { s.Close() })
	deadline := time.Now().Add(10 * time.Second)
	for lists.Load() < 2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if lists.Load() < 2 {
		t.Fatal("the cache did not list again after a compaction")
	}
	synced(t, s)
	for i := range 5 {
		if got, found, err := s.Find(fmt.Sprint("t", i)); err != nil || !found || string(got) != "after" {
			t.Errorf("Find(t%d) = %q, %v, %v; want the session written before the compaction", i, got, found, err)
		}
	}
	if s.Stats().CacheReads == 0 {
		t.Error("no Find from the cache after it listed again")
	}
}

// TestReadCacheDeleteEvents: sessions that etcd deletes, by a revoked
// lease, are gone from the cache; another prefix's sessions never enter
// it.
func TestReadCacheDeleteEvents(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t)
	c := srv.Client(t)
	s := cachedStore(t, c)
	expiry := time.Now().Add(time.Hour)
	for i := range 3 {
		if err := s.Commit(fmt.Sprint("t", i), []byte("x"), expiry); err != nil {
			t.Fatal(err)
		}
	}
	other := NewWithPrefix(srv.Client(t), s.keys.prefix[:len(s.keys.prefix)-1]+"-other:")
	if err := other.Commit("o", []byte("x"), expiry); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Revoke(ctxFor(t), rawValue(t, c, s, "t0").lease); err != nil {
		t.Fatal(err)
	}
	all, err := s.All()
	if err != nil || len(all) != 0 {
		t.Errorf("All after the lease was revoked = %d sessions, %v; want none", len(all), err)
	}
	if _, found, err := s.Find("t1"); err != nil || found {
		t.Errorf("Find after the lease was revoked = %v, %v", found, err)
	}
	s.cache.mu.RLock()
	n := len(s.cache.values)
	s.cache.mu.RUnlock()
	if n != 0 {
		t.Errorf("the cache holds %d sessions, want none (another prefix's are not its)", n)
	}
	if st := s.Stats(); st.CacheReads < 2 {
		t.Errorf("%d reads from the cache, want 2", st.CacheReads)
	}
}

// TestReadCacheMemberRestart: through a restart of the member, reads are
// right (from etcd while the cache is out of sync) and the cache serves
// again after.
func TestReadCacheMemberRestart(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t, etcdtest.Own())
	s := cachedStore(t, srv.Client(t), WithTimeout(2*time.Second))
	expiry := time.Now().Add(time.Hour)
	if err := s.Commit("before", []byte("x"), expiry); err != nil {
		t.Fatal(err)
	}
	srv.Stop()
	srv.Start()
	// The client reconnects with backoff: the first commits may time out.
	for i := 0; ; i++ {
		err := s.Commit("after", []byte("y"), expiry)
		if err == nil {
			break
		}
		if i == 10 {
			t.Fatalf("commit after the restart: %v", err)
		}
	}
	for _, tok := range []string{"before", "after"} {
		if _, found, err := s.Find(tok); err != nil || !found {
			t.Errorf("Find(%s) after a restart = %v, %v", tok, found, err)
		}
	}
	synced(t, s)
	before := s.Stats().CacheReads
	if _, found, err := s.Find("after"); err != nil || !found {
		t.Errorf("Find(after) = %v, %v", found, err)
	}
	if s.Stats().CacheReads == before {
		t.Error("the cache did not serve again after the restart")
	}
}

// TestReadCacheFallback: a closed cache, or one that is not in sync,
// sends reads to etcd; the store keeps working.
func TestReadCacheFallback(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t)
	s := cachedStore(t, srv.Client(t))
	if err := s.Commit("tok", []byte("x"), time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s.Close() // twice is fine
	if got, found, err := s.Find("tok"); err != nil || !found || string(got) != "x" {
		t.Fatalf("Find after Close = %q, %v, %v", got, found, err)
	}
	if all, err := s.All(); err != nil || len(all) != 1 {
		t.Fatalf("All after Close = %v, %v", all, err)
	}
	if st := s.Stats(); st.CacheFallbacks != 2 || st.CacheOff {
		t.Errorf("%d reads fell back to etcd after Close, CacheOff %v; want 2, false", st.CacheFallbacks, st.CacheOff)
	}
	if err := s.ReadCacheReady(ctxFor(t)); !errors.Is(err, ErrReadCacheOff) || !strings.Contains(err.Error(), "closed") {
		t.Errorf("ReadCacheReady after Close = %v, want ErrReadCacheOff: closed", err)
	}
	if err := NewWithPrefix(srv.Client(t), testPrefix(t)).ReadCacheReady(ctxFor(t)); !errors.Is(err, ErrReadCacheOff) || !strings.Contains(err.Error(), "without WithReadCache") {
		t.Errorf("ReadCacheReady without WithReadCache = %v, want ErrReadCacheOff", err)
	}
}

// TestReadCacheOnlyOnTrustedServers: on a server whose progress
// notifications the cache cannot trust (Debian's etcd 3.4.23 among them,
// when ETCDSTORE_TEST_ENDPOINTS points at it), the cache stays off, every
// read goes to etcd, and the store says so: ReadCacheReady names the
// server and its version, Stats.CacheOff is true, and no read counts as
// a fallback; on others it serves.
func TestReadCacheOnlyOnTrustedServers(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t)
	c := srv.Client(t)
	st, err := c.Status(ctxFor(t), c.Endpoints()[0])
	if err != nil {
		t.Fatal(err)
	}
	s := NewWithPrefix(c, testPrefix(t), WithReadCache())
	t.Cleanup(func() { s.Close() })
	if err := s.Commit("tok", []byte("x"), time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	ready := s.ReadCacheReady(ctxFor(t))
	if !progressTrusted(st.Version) {
		if want := "runs " + st.Version + ", whose progress notifications the cache does not trust"; !errors.Is(ready, ErrReadCacheOff) || !strings.Contains(ready.Error(), want) {
			t.Errorf("ReadCacheReady on etcd %s = %v, want ErrReadCacheOff saying %q", st.Version, ready, want)
		}
		if _, found, err := s.Find("tok"); err != nil || !found {
			t.Fatalf("Find on etcd %s = %v, %v", st.Version, found, err)
		}
		if got := s.Stats(); got.CacheReads != 0 || got.CacheFallbacks != 0 || !got.CacheOff {
			t.Errorf("etcd %s: %d reads from the cache, %d fallbacks, CacheOff %v; want 0, 0, true", st.Version, got.CacheReads, got.CacheFallbacks, got.CacheOff)
		}
		return
	}
	if ready != nil {
		t.Errorf("ReadCacheReady on etcd %s = %v", st.Version, ready)
	}
	synced(t, s)
	if _, found, err := s.Find("tok"); err != nil || !found || s.Stats().CacheReads != 1 || s.Stats().CacheOff {
		t.Errorf("etcd %s: Find = %v, %v, %d from the cache, CacheOff %v; want it from the cache", st.Version, found, err, s.Stats().CacheReads, s.Stats().CacheOff)
	}
}

// TestReadCacheOffOnRealServers: TestReadCacheOnlyOnTrustedServers against
// each etcd daemon of etcdtest.Daemons (Debian's etcd 3.4.23 by default),
// the way the example's -cache meets it: the cache's refusal names the
// server and its version.
func TestReadCacheOffOnRealServers(t *testing.T) {
	t.Parallel()
	for _, bin := range etcdtest.Daemons(t) {
		endpoint, version := etcdtest.StartDaemon(t, bin)
		s := NewWithPrefix(etcdtest.NewClient(t, clientv3.Config{Endpoints: []string{endpoint}}), testPrefix(t), WithReadCache())
		t.Cleanup(func() { s.Close() })
		err := s.ReadCacheReady(ctxFor(t))
		if progressTrusted(version) {
			if err != nil {
				t.Errorf("ReadCacheReady on etcd %s = %v", version, err)
			}
			continue
		}
		want := "etcdstore: read cache off: etcd at " + endpoint + " runs " + version + ", whose progress notifications the cache does not trust (etcd#15220, etcd#17507): it needs 3.4.31, 3.5.13 or later"
		if !errors.Is(err, ErrReadCacheOff) || !strings.Contains(err.Error(), want) || !s.Stats().CacheOff {
			t.Errorf("ReadCacheReady on etcd %s = %v, CacheOff %v; want ErrReadCacheOff saying %q", version, err, s.Stats().CacheOff, want)
		}
	}
}

// TestCachedReadsWithinTimeout: with the store's only endpoint blackholed
// (its link held, nothing closed), a Find or All through the read cache
// returns an error wrapping context.DeadlineExceeded within the store's
// timeout, or the context's deadline if sooner: the barrier, the wait for
// the watch and the fallback to etcd share one deadline.
func TestCachedReadsWithinTimeout(t *testing.T) {
	t.Parallel()
	const timeout = time.Second
	srv := etcdtest.Start(t, etcdtest.Own())
	p := srv.Proxy(t)
	u := p.URL()
	s := cachedStore(t, etcdtest.NewClient(t, clientv3.Config{Endpoints: []string{u.String()}}), WithTimeout(timeout))
	if err := s.Commit("tok", []byte("x"), time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if _, found, err := s.Find("tok"); err != nil || !found || s.Stats().CacheReads == 0 {
		t.Fatalf("Find before the fault = %v, %v, with %d cache reads; want it found in the cache", found, err, s.Stats().CacheReads)
	}
	p.Hold()
	t.Cleanup(p.Heal)

	for _, tc := range []struct {
		name  string
		bound time.Duration // the context's deadline, if below timeout
		call  func(ctx context.Context) error
	}{
		{"Find", timeout, func(ctx context.Context) error { _, _, err := s.FindCtx(ctx, "tok"); return err }},
		{"All", timeout, func(ctx context.Context) error { _, err := s.AllCtx(ctx); return err }},
		{"Find, context deadline 300ms", 300 * time.Millisecond, func(ctx context.Context) error { _, _, err := s.FindCtx(ctx, "tok"); return err }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background() // SCS's request context has no deadline
			if tc.bound < timeout {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tc.bound)
				defer cancel()
			}
			start := time.Now()
			err := tc.call(ctx)
			took := time.Since(start)
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("%s with the endpoint blackholed = %v, want an error wrapping context.DeadlineExceeded", tc.name, err)
			}
			// Not much after the bound, on a loaded machine: the store
			// itself adds nothing to it. A 300 ms bound may run 400 ms
			// over, still short of the store's timeout it must not wait.
			if took < tc.bound-50*time.Millisecond || took > tc.bound+max(tc.bound/2, 400*time.Millisecond) {
				t.Errorf("%s with the endpoint blackholed returned after %v, want about %v", tc.name, took, tc.bound)
			}
		})
	}
}

// TestCachedReadsFailOver: with one of the client's two links to its
// member blackholed, the read cache's barrier may be sent into it. A read
// waits for it no longer than an attempt's share of its time, then reads
// from etcd, which tries the other link: every Find succeeds.
func TestCachedReadsFailOver(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t, etcdtest.Own())
	a, b := srv.Proxy(t), srv.Proxy(t)
	ua, ub := a.URL(), b.URL()
	s := cachedStore(t, etcdtest.NewClient(t, clientv3.Config{Endpoints: []string{ua.String(), ub.String()}}))
	if err := s.Commit("tok", []byte("x"), time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	a.Hold()
	t.Cleanup(a.Heal)
	for i := range 6 {
		start := time.Now()
		if got, found, err := s.Find("tok"); err != nil || !found || string(got) != "x" {
			t.Fatalf("Find %d with one link blackholed = %q, %v, %v after %v; want x", i, got, found, err, time.Since(start))
		}
	}
	st := s.Stats()
	t.Logf("%d reads from the cache, %d from etcd, %d retries", st.CacheReads, st.CacheFallbacks, st.Retries)
}

// TestReadCacheWithAMemberDown: a store started while one of its
// endpoints' members is down asks the others their version and turns its
// cache on; it asks the one that was down again before each list.
func TestReadCacheWithAMemberDown(t *testing.T) {
	t.Parallel()
	c := etcdtest.StartCluster(t, 3)
	down := (c.Leader() + 1) % len(c.Members)
	c.Stop(down)
	s := NewWithPrefix(c.Client(t), testPrefix(t), WithReadCache())
	t.Cleanup(func() { s.Close() })
	synced(t, s)
	if err := s.Commit("tok", []byte("x"), time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, found, err := s.Find("tok"); err != nil || !found {
			t.Fatalf("Find = %v, %v", found, err)
		}
	}
	if st := s.Stats(); st.CacheReads == 0 {
		t.Errorf("no read from the cache with a member down (%d fallbacks)", st.CacheFallbacks)
	}
}
