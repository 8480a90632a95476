package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/alexedwards/scs/v2"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"go.etcd.io/etcd/api/v3/version"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"golang.org/x/sync/errgroup"

	"github.com/etcdstore/etcdstore/internal/etcdtest"
)

// TestTakeBatch: the next batch is the queue's calls in order, each key
// once, up to the limits; a first call over the byte limit goes alone;
// dropped calls leave the queue; in a batcher that shares (reads), a
// key's later calls ride its first, beyond the limits. It does no I/O.
func TestTakeBatch(t *testing.T) {
	item := func(key string, size, state int) *batchItem[int] {
		return &batchItem[int]{key: key, size: size, state: state}
	}
	keys := func(items []*batchItem[int]) string {
		var ks []string
		for _, it := range items {
			ks = append(ks, it.key)
		}
		return strings.Join(ks, " ")
	}
	for _, tc := range []struct {
		name            string
		queue           []*batchItem[int]
		maxItems, bytes int
		share           bool
		want, rest      string
		riders          int
	}{
		{"all", []*batchItem[int]{item("a", 1, 0), item("b", 1, 0)}, 64, 100, false, "a b", "", 0},
		{"a key twice waits", []*batchItem[int]{item("a", 1, 0), item("a", 1, 0), item("b", 1, 0)}, 64, 100, false, "a b", "a", 0},
		{"dropped leave", []*batchItem[int]{item("a", 1, itemDropped), item("b", 1, 0)}, 64, 100, false, "b", "", 0},
		{"at most maxItems", []*batchItem[int]{item("a", 1, 0), item("b", 1, 0), item("c", 1, 0)}, 2, 100, false, "a b", "c", 0},
		{"at most maxBytes", []*batchItem[int]{item("a", 60, 0), item("b", 60, 0), item("c", 30, 0)}, 64, 100, false, "a c", "b", 0},
		{"a large first goes alone", []*batchItem[int]{item("a", 500, 0), item("b", 1, 0)}, 64, 100, false, "a", "b", 0},
		{"a key twice rides", []*batchItem[int]{item("a", 1, 0), item("a", 1, 0), item("b", 1, 0), item("a", 1, 0)}, 64, 100, true, "a b", "", 2},
		{"riders beyond the limits", []*batchItem[int]{item("a", 60, 0), item("b", 60, 0), item("a", 60, 0)}, 1, 100, true, "a", "b", 1},
		{"a dropped call rides nothing", []*batchItem[int]{item("a", 1, 0), item("a", 1, itemDropped)}, 64, 100, true, "a", "", 0},
		{"a key held back holds its riders", []*batchItem[int]{item("a", 1, 0), item("b", 1, 0), item("b", 1, 0)}, 1, 100, true, "a", "b b", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := &batcher[int]{queue: tc.queue, maxItems: tc.maxItems, maxBytes: tc.bytes, share: tc.share}
			got := b.takeLocked()
			if keys(got) != tc.want || keys(b.queue) != tc.rest {
				t.Errorf("took %q, left %q; want %q and %q", keys(got), keys(b.queue), tc.want, tc.rest)
			}
			riders := 0
			for _, it := range got {
				if it.state != itemSent {
					t.Errorf("%q taken in state %d", it.key, it.state)
				}
				for _, r := range it.riders {
					if r.key != it.key || r.state != itemSent {
						t.Errorf("%q rides %q in state %d", r.key, it.key, r.state)
					}
				}
				riders += len(it.riders)
			}
			if riders != tc.riders {
				t.Errorf("%d riders, want %d", riders, tc.riders)
			}
		})
	}
}

// TestBatchKeepsEachOutcome: one batch of commits against etcd, made
// directly, gives each its own outcome: a commit on the revision it saw
// succeeds, one on an old revision gets the key back, one on a deleted
// session gets its tombstone back, a new session succeeds; one raft entry
// for all.
func TestBatchKeepsEachOutcome(t *testing.T) {
	t.Parallel()
	s, c := newStore(t)
	expiry := time.Now().Add(time.Hour)
	for _, tok := range []string{"current", "stale", "deleted"} {
		if err := s.Commit(tok, []byte("v1"), expiry); err != nil {
			t.Fatal(err)
		}
	}
	if err := NewWithPrefix(c, s.keys.prefix, WithBatching(false)).Commit("stale", []byte("v2"), expiry); err != nil {
		t.Fatal(err)
	}
	if err := NewWithPrefix(c, s.keys.prefix).Delete("deleted"); err != nil {
		t.Fatal(err)
	}
	lease, err := c.Grant(ctxFor(t), 3600)
	if err != nil {
		t.Fatal(err)
	}
	var items []*batchItem[commitResult]
	for _, tok := range []string{"current", "stale", "deleted", "new"} {
		seen, known := s.tokens.last(tok)
		w := &pendingCommit{token: tok, key: s.keys.key(tok), value: encodeEnvelope(expiry, []byte("v3 "+tok)), base: seen, baseKnown: known, rev: seen.rev}
		items = append(items, &batchItem[commitResult]{key: w.key, op: s.commitTxn(w, lease.ID)})
	}
	s.batches.commits.together(ctxFor(t), items)
	for _, it := range items {
		if it.err != nil {
			t.Fatalf("%s: %v", it.key, it.err)
		}
	}
	want := []struct {
		succeeded bool
		cur       string
	}{{true, ""}, {false, "v2"}, {false, "tombstone"}, {true, ""}}
	for i, it := range items {
		r := it.res
		got := ""
		if r.cur != nil {
			got = string(r.cur.Value)
			if isTombstone(r.cur.Value) {
				got = "tombstone"
			} else if _, _, data, err := decodeEnvelope(r.cur.Value); err == nil {
				got = string(data)
			}
		}
		if r.succeeded != want[i].succeeded || got != want[i].cur {
			t.Errorf("%s: succeeded %v, key holds %q; want %v and %q", it.key, r.succeeded, got, want[i].succeeded, want[i].cur)
		}
	}
	if items[0].res.rev != items[3].res.rev {
		t.Errorf("the writes of one batch at revisions %d and %d, want one", items[0].res.rev, items[3].res.rev)
	}
}

// TestConcurrentCommitsShareRequests: commits and finds from 64
// goroutines at once go to etcd in batches, and each is what it would be
// alone: every session committed is found with its data.
func TestConcurrentCommitsShareRequests(t *testing.T) {
	t.Parallel()
	s, c := newStore(t)
	reader := NewWithPrefix(c, s.keys.prefix)
	expiry := time.Now().Add(time.Hour)
	var g errgroup.Group
	for i := range 64 {
		g.Go(func() error {
			for j := range 20 {
				tok := fmt.Sprintf("t%d-%d", i, j)
				if err := s.Commit(tok, []byte(tok), expiry); err != nil {
					return err
				}
				got, found, err := reader.Find(tok)
				if err != nil || !found || string(got) != tok {
					return fmt.Errorf("Find(%q) after its commit = %q, %v, %v", tok, got, found, err)
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	st, rd := s.Stats(), reader.Stats()
	t.Logf("%d commits in %d batches carrying %d; %d finds in %d batches carrying %d", st.Commits, st.CommitBatches, st.BatchedCommits, rd.Finds, rd.ReadBatches, rd.BatchedReads)
	if st.CommitBatches == 0 || rd.ReadBatches == 0 || st.RefusedBatches+rd.RefusedBatches > 0 {
		t.Errorf("%d commit batches, %d read batches, %d refused; want some, some and none", st.CommitBatches, rd.ReadBatches, st.RefusedBatches+rd.RefusedBatches)
	}
}

// TestConcurrentCommitsOfOneSession: requests of one browser commit one
// session at once all the time; no two go in one batch (etcd refuses a
// Txn that writes a key twice), each succeeds, and the last wins.
func TestConcurrentCommitsOfOneSession(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t)
	expiry := time.Now().Add(time.Hour)
	if err := s.Commit("tok", []byte("v0"), expiry); err != nil {
		t.Fatal(err)
	}
	var g errgroup.Group
	for i := range 16 {
		g.Go(func() error {
			for j := range 20 {
				if err := s.Commit("tok", []byte(fmt.Sprint(i, "-", j)), expiry); err != nil {
					return err
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	if st := s.Stats(); st.RefusedBatches > 0 {
		t.Errorf("%d batches refused", st.RefusedBatches)
	}
	if _, found, err := s.Find("tok"); err != nil || !found {
		t.Fatalf("Find = %v, %v", found, err)
	}
}

// TestBatchRefusedForItsSize: on a server whose --max-request-bytes is
// 64 KiB, concurrent commits of 12 KiB sessions make batches the server
// refuses whole; each commit in them is made again alone and succeeds,
// and the batches after are smaller.
func TestBatchRefusedForItsSize(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t, func(cfg *embed.Config) { cfg.MaxRequestBytes = 64 << 10 })
	s := NewWithPrefix(srv.Client(t), testPrefix(t))
	expiry := time.Now().Add(time.Hour)
	value := []byte(strings.Repeat("x", 12<<10))
	var g errgroup.Group
	for i := range 32 {
		g.Go(func() error {
			for j := range 10 {
				if err := s.Commit(fmt.Sprint("t", i, "-", j), value, expiry); err != nil {
					return err
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	st := s.Stats()
	t.Logf("%d batches, %d refused; byte limit now %d", st.CommitBatches, st.RefusedBatches, s.batches.commits.maxBytes)
	if st.RefusedBatches == 0 || s.batches.commits.maxBytes >= maxBatchBytes {
		t.Errorf("%d batches refused, byte limit %d; want some refused and the limit lowered", st.RefusedBatches, s.batches.commits.maxBytes)
	}
	all, err := s.All()
	if err != nil || len(all) != 320 {
		t.Fatalf("All = %d sessions, %v; want 320", len(all), err)
	}
}

// TestBatchWithADeniedCommit: a store whose etcd user may write its
// sessions but not their principal index (a role missing its second
// grant): the commits of sessions with a principal are refused, those
// without succeed, though they share batches.
func TestBatchWithADeniedCommit(t *testing.T) {
	t.Parallel()
	const prefix = "t/denied/"
	app := readWriteUser("app", "app-password", prefix)
	srv, _ := startAuthEtcd(t, app)
	client := authClient(t, srv, app.name, app.password)
	// A batch is a Txn of nested Txns, and etcd checked no permission
	// inside a nested Txn before 3.6.11 (3.5.27 does not either, 3.5.31
	// does): go.mod's floor, 3.5.21, lets every commit of a batch through.
	nested := clientv3.OpTxn(nil, []clientv3.Op{clientv3.OpPut(PrincipalIndexPrefix(prefix)+"probe", "")}, nil)
	switch _, err := client.Txn(context.Background()).Then(nested).Commit(); {
	case err == nil:
		t.Skipf("etcd %s checks no permission inside a nested Txn: no commit of a batch is denied", version.Version)
	case !errors.Is(err, rpctypes.ErrPermissionDenied):
		t.Fatalf("a nested Txn's put outside the role: %v, want %v", err, rpctypes.ErrPermissionDenied)
	}
	s := NewWithPrefix(client, prefix, WithPrincipal("user"))
	expiry := time.Now().Add(time.Hour)
	var mu sync.Mutex
	denied, ok := 0, 0
	indexed := gobSession(t, expiry, map[string]any{"user": "ann"})
	plain := gobSession(t, expiry, map[string]any{"n": 1})
	var g errgroup.Group
	for i := range 32 {
		g.Go(func() error {
			for j := range 10 {
				data := plain
				if i%2 == 0 {
					data = indexed
				}
				err := s.Commit(fmt.Sprint("t", i, "-", j), data, expiry)
				mu.Lock()
				switch {
				case err == nil && i%2 == 1:
					ok++
				case errors.Is(err, rpctypes.ErrPermissionDenied) && i%2 == 0:
					denied++
				default:
					mu.Unlock()
					return fmt.Errorf("commit %d of goroutine %d: %v", j, i, err)
				}
				mu.Unlock()
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	st := s.Stats()
	t.Logf("%d committed, %d denied; %d batches, %d refused", ok, denied, st.CommitBatches, st.RefusedBatches)
	if ok != 160 || denied != 160 {
		t.Errorf("%d committed and %d denied, want 160 of each", ok, denied)
	}
}

// TestQueuedCommitLeavesAtItsDeadline: while the store's requests are
// held in a stalled link, as many as it has in flight, a commit that
// queues behind them returns at its own deadline, dropped from the queue:
// it is never written, even once the link heals.
func TestQueuedCommitLeavesAtItsDeadline(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t, etcdtest.Own())
	p := srv.Proxy(t)
	u := p.URL()
	// Each held attempt lasts 4 s: the held requests keep their places
	// throughout (TestStuckRequestHoldsNoPlace is the other case), so the
	// queued commit is never sent, however slowly the machine runs.
	s := NewWithPrefix(etcdtest.NewClient(t, clientv3.Config{Endpoints: []string{u.String()}}), testPrefix(t), WithTimeout(20*time.Second))
	s.batches.commits.stall = time.Hour
	expiry := time.Now().Add(time.Hour)
	if err := s.Commit("warm", []byte("x"), expiry); err != nil {
		t.Fatal(err)
	}
	p.Hold()
	held := make(chan error, commitsInFlight)
	for i := range commitsInFlight {
		go func() { held <- s.Commit(fmt.Sprint("held", i), []byte("x"), expiry) }()
	}
	waitFor(t, "the held commits in flight", func() bool {
		s.batches.commits.mu.Lock()
		defer s.batches.commits.mu.Unlock()
		return s.batches.commits.sending == commitsInFlight
	})
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := s.CommitCtx(ctx, "queued", []byte("x"), expiry)
	if took := time.Since(start); !errors.Is(err, context.DeadlineExceeded) || took > time.Second {
		t.Fatalf("queued commit = %v after %v, want DeadlineExceeded after about 200ms", err, took)
	}
	p.Heal()
	for range commitsInFlight {
		if err := <-held; err != nil {
			t.Fatalf("held commit: %v", err)
		}
	}
	if _, found, err := s.Find("queued"); err != nil || found {
		t.Fatalf("Find of the dropped commit = %v, %v; want not found", found, err)
	}
}

// TestStuckRequestHoldsNoPlace: one member reached through two links, A
// and B, the client's balancer sending each request to the next; A holds.
// A request that went into A waits for its attempt's deadline (2 s here),
// but once it has waited stalledAfter it no longer holds back the calls
// queued behind it: commits begun while A holds go on through B, about
// half of them at once, as they would without batching.
func TestStuckRequestHoldsNoPlace(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t, etcdtest.Own())
	a, b := srv.Proxy(t), srv.Proxy(t)
	ua, ub := a.URL(), b.URL()
	client := etcdtest.NewClient(t, clientv3.Config{Endpoints: []string{ua.String(), ub.String()}})
	s := NewWithPrefix(client, testPrefix(t), WithTimeout(10*time.Second))
	expiry := time.Now().Add(time.Hour)
	for i := range 4 { // a connection through each link, the bucket's lease
		if err := s.Commit(fmt.Sprint("warm", i), []byte("x"), expiry); err != nil {
			t.Fatal(err)
		}
	}
	// A commit every 10 ms, each in its own goroutine, as requests come.
	const commits, every, quick = 100, 10 * time.Millisecond, 300 * time.Millisecond
	a.Hold()
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		fast  int // commits that succeeded within quick
		other []string
	)
	for i := range commits {
		wg.Go(func() {
			start := time.Now()
			err := s.Commit(fmt.Sprint("c", i), []byte("x"), expiry)
			took := time.Since(start)
			mu.Lock()
			defer mu.Unlock()
			// A commit whose every attempt the balancer sent into A fails
			// at its deadline, as it would without batching.
			if err != nil && !errors.Is(err, context.DeadlineExceeded) {
				other = append(other, err.Error())
			}
			if err == nil && took < quick {
				fast++
			}
		})
		time.Sleep(every)
	}
	wg.Wait()
	a.Heal()
	if len(other) > 0 {
		t.Errorf("%d commits failed, the first: %s", len(other), other[0])
	}
	t.Logf("%d of %d commits begun while A held succeeded within %v", fast, commits, quick)
	if fast < commits/4 {
		t.Errorf("%d of %d commits begun while A held succeeded within %v, want at least %d: requests stuck in A held back the others", fast, commits, quick, commits/4)
	}
}

// waitFor polls cond until it holds, failing the test after 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after 10 s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// gobSession is what SCS's GobCodec writes for a session of values.
func gobSession(t *testing.T, deadline time.Time, values map[string]any) []byte {
	t.Helper()
	b, err := scs.GobCodec{}.Encode(deadline, values)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
