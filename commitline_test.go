package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sync/errgroup"

	"github.com/etcdstore/etcdstore/internal/etcdtest"
)

// waiting returns how many commits of token wait in s's line to go next.
func waiting(s *EtcdStore, token string) int {
	s.lines.mu.Lock()
	defer s.lines.mu.Unlock()
	if line := s.lines.byToken[token]; line != nil && line.next != nil {
		return line.next.waiters
	}
	return 0
}

// TestBurstOfCommitsSharesWrites: 32 goroutines commit one session 10
// times each, all at once, through one store, with batching on and off.
// None fails, none conflicts with another, the session holds the data of
// one of the last commits in flight (no commit began after it returned),
// and each commit either wrote or shared a later one's write.
func TestBurstOfCommitsSharesWrites(t *testing.T) {
	t.Parallel()
	for _, batching := range []bool{true, false} {
		t.Run("batching="+strconv.FormatBool(batching), func(t *testing.T) {
			t.Parallel()
			s, c := newOwnStore(t, WithBatching(batching))
			expiry := time.Now().Add(time.Hour)
			if err := s.Commit("tok", []byte("first"), expiry); err != nil {
				t.Fatal(err)
			}
			const goroutines, each = 32, 10
			type span struct{ start, end time.Time }
			spans := make([]span, goroutines*each)
			before := etcdtest.Revision(t, c)
			start := make(chan struct{})
			var g errgroup.Group
			for i := range goroutines {
				g.Go(func() error {
					<-start
					for j := range each {
						k := i*each + j
						t0 := time.Now()
						if err := s.Commit("tok", []byte(strconv.Itoa(k)), expiry); err != nil {
							return fmt.Errorf("commit %d: %w", k, err)
						}
						spans[k] = span{t0, time.Now()}
					}
					return nil
				})
			}
			close(start)
			if err := g.Wait(); err != nil {
				t.Fatal(err)
			}
			writes := etcdtest.Revision(t, c) - before
			st := s.Stats()
			t.Logf("%d commits: %d writes, %d shared, %d conflicts", len(spans), writes, st.CommitsShared, st.CommitConflicts)
			// Each commit wrote or was acknowledged with a later one's
			// write. How many share depends on the schedule (a loaded
			// machine queues fewer a write); BenchmarkBurst measures it.
			if writes+st.CommitsShared != int64(len(spans)) {
				t.Errorf("%d commits: %d writes and %d shared, want them to add up", len(spans), writes, st.CommitsShared)
			}
			if st.CommitConflicts != 0 || st.CommitsShared == 0 {
				t.Errorf("%d conflicts and %d commits shared, want none and some", st.CommitConflicts, st.CommitsShared)
			}
			got, found, err := s.Find("tok")
			if err != nil || !found {
				t.Fatalf("Find = %v, %v", found, err)
			}
			k, err := strconv.Atoi(string(got))
			if err != nil || k < 0 || k >= len(spans) {
				t.Fatalf("the session holds %q, no commit's data", got)
			}
			for i, sp := range spans {
				if sp.start.After(spans[k].end) {
					t.Fatalf("the session holds commit %d's data, but commit %d began after it returned", k, i)
				}
			}
			waitFor(t, "the line forgotten", func() bool { return s.lines.len() == 0 })
		})
	}
}

// TestBurstWaiterLeaves: while a commit of a session is held in a stalled
// link, three more queue behind it. One whose context is canceled returns
// at once, and one whose deadline passes returns at it, with their
// contexts' errors; neither cancels the commit that the third waits for,
// which succeeds once the link heals, with the data of the last to arrive
// (the one that left at its deadline), under the latest deadline. A
// commit whose context ended before it arrived does not join the line.
func TestBurstWaiterLeaves(t *testing.T) {
	t.Parallel()
	for _, batching := range []bool{true, false} {
		t.Run("batching="+strconv.FormatBool(batching), func(t *testing.T) {
			t.Parallel()
			srv := etcdtest.Start(t, etcdtest.Own())
			p := srv.Proxy(t)
			u := p.URL()
			s := NewWithPrefix(etcdtest.NewClient(t, clientv3.Config{Endpoints: []string{u.String()}}), testPrefix(t),
				WithBatching(batching), WithTimeout(20*time.Second))
			expiry := time.Now().Add(time.Hour)
			if err := s.Commit("tok", []byte("warm"), expiry); err != nil {
				t.Fatal(err)
			}
			type result struct {
				err  error
				took time.Duration
			}
			commit := func(ctx context.Context, data string) chan result {
				ch := make(chan result, 1)
				go func() {
					start := time.Now()
					err := s.CommitCtx(ctx, "tok", []byte(data), expiry)
					ch <- result{err, time.Since(start)}
				}()
				return ch
			}
			wait := func(what string, ch chan result) result {
				t.Helper()
				select {
				case r := <-ch:
					return r
				case <-time.After(10 * time.Second):
					t.Fatalf("%s: no answer after 10 s", what)
					return result{}
				}
			}

			p.Hold()
			first := commit(context.Background(), "first")
			waitFor(t, "the first commit in flight", func() bool { return s.lines.len() == 1 })
			patient := commit(context.Background(), "patient")
			waitFor(t, "one waiting", func() bool { return waiting(s, "tok") == 1 })
			cctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			canceled := commit(cctx, "canceled")
			waitFor(t, "two waiting", func() bool { return waiting(s, "tok") == 2 })
			const patience = 300 * time.Millisecond
			dctx, dcancel := context.WithTimeout(context.Background(), patience)
			defer dcancel()
			late := commit(dctx, "late")
			waitFor(t, "three waiting", func() bool { return waiting(s, "tok") == 3 })
			gone, goneCancel := context.WithCancel(context.Background())
			goneCancel()
			if err := s.CommitCtx(gone, "tok", []byte("gone"), expiry); !errors.Is(err, context.Canceled) || waiting(s, "tok") != 3 {
				t.Errorf("commit with a canceled context = %v, %d waiting; want context.Canceled, and it not in line", err, waiting(s, "tok"))
			}

			start := time.Now()
			cancel()
			if r := wait("canceled waiter", canceled); !errors.Is(r.err, context.Canceled) || time.Since(start) > time.Second {
				t.Errorf("canceled waiter = %v, %v after its cancel; want context.Canceled at once", r.err, time.Since(start))
			}
			if r := wait("waiter with a deadline", late); !errors.Is(r.err, context.DeadlineExceeded) || r.took < patience-50*time.Millisecond || r.took > patience+time.Second {
				t.Errorf("waiter with a deadline in %v = %v after %v; want context.DeadlineExceeded at it", patience, r.err, r.took)
			}
			select {
			case r := <-first:
				t.Fatalf("first commit returned while its link held: %v", r.err)
			case r := <-patient:
				t.Fatalf("patient waiter returned while the link held: %v", r.err)
			default:
			}
			p.Heal()
			for what, ch := range map[string]chan result{"first commit": first, "patient waiter": patient} {
				if r := wait(what, ch); r.err != nil {
					t.Errorf("%s: %v", what, r.err)
				}
			}
			if got, found, err := s.Find("tok"); err != nil || !found || string(got) != "late" {
				t.Errorf("Find = %q, %v, %v; want the last arrival's data, %q", got, found, err, "late")
			}
			if st := s.Stats(); st.CommitsShared != 1 {
				t.Errorf("%d commits shared, want 1 (the patient waiter's)", st.CommitsShared)
			}
			waitFor(t, "the line forgotten", func() bool { return s.lines.len() == 0 })
		})
	}
}

// TestBurstOfFindsSharesReads: 32 goroutines find one session 20 times
// each, all at once: the Finds queued together ride one Get, so the store
// makes far fewer read requests than Finds, and each finds the session.
func TestBurstOfFindsSharesReads(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t)
	if err := s.Commit("tok", []byte("data"), time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	start := make(chan struct{})
	var g errgroup.Group
	for range 32 {
		g.Go(func() error {
			<-start
			for range 20 {
				if got, found, err := s.Find("tok"); err != nil || !found || string(got) != "data" {
					return fmt.Errorf("Find = %q, %v, %v", got, found, err)
				}
			}
			return nil
		})
	}
	close(start)
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	st := s.Stats()
	// Requests that carried one Find, and those that carried several.
	requests := st.Finds - st.BatchedReads + st.ReadBatches
	t.Logf("%d Finds in %d read requests (%d carrying %d)", st.Finds, requests, st.ReadBatches, st.BatchedReads)
	if requests*4 > st.Finds {
		t.Errorf("%d Finds of one session made %d read requests, want at most a quarter as many", st.Finds, requests)
	}
}

// TestLinearizableBurst: goroutines of two stores on one member commit,
// delete and find two sessions at a time, so that each store lines up its
// own commits of a session and shares its reads of one, some with
// deadlines short enough to leave a line or a queue; the history is
// linearizable. The operations move on to fresh tokens every
// burstTokenOps, since a deleted session takes no more writes.
func TestLinearizableBurst(t *testing.T) {
	t.Parallel()
	const (
		stores, perStore = 2, 8
		maxOps           = 100 // per goroutine
		burstTokenOps    = 200
	)
	srv := etcdtest.Start(t)
	h := &regHistory{start: time.Now()}
	var done atomic.Int64
	var wg sync.WaitGroup
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	for si := range stores {
		s := NewWithPrefix(srv.Client(t), testPrefix(t))
		for gi := range perStore {
			id := si*perStore + gi
			wg.Go(func() {
				rng := rand.New(rand.NewPCG(seed, uint64(id)))
				for n := range maxOps {
					token := fmt.Sprint("t", done.Load()/burstTokenOps+int64(rng.IntN(2)))
					timeout := 5 * time.Second
					if rng.IntN(10) == 0 {
						timeout = time.Duration(rng.IntN(3000)) * time.Microsecond
					}
					ctx, cancel := context.WithTimeout(context.Background(), timeout)
					h.randomOp(ctx, s, rng, id, n, token, 50, 5, time.Now().Add(time.Hour))
					cancel()
					done.Add(1)
				}
			})
		}
	}
	wg.Wait()
	var unknown int
	for _, op := range h.ops {
		if op.Return == unknownReturn {
			unknown++
		}
	}
	t.Logf("%d operations recorded (%d writes of unknown outcome; failed reads dropped)", len(h.ops), unknown)
	checkLinearizable(t, h.ops)
}
