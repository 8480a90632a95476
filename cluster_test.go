package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"

	"github.com/etcdstore/etcdstore/internal/etcdtest"
)

// Fault tolerance: sessions acknowledged by Commit survive the loss of an
// etcd leader, of a member, a restart and leases revoked behind the
// store's back, and the store serves again soon after.

const (
	// faultCommitTimeout bounds each commit of a load, as the store's
	// default timeout would.
	faultCommitTimeout = 5 * time.Second
	// faultWaitTimeout bounds every wait for progress.
	faultWaitTimeout = 30 * time.Second
	// faultMaxRecovery is the longest the store may take to commit again
	// after the leader is lost: an election takes one to two election
	// timeouts (500 ms in etcdtest clusters), the rest is margin for a
	// loaded machine.
	faultMaxRecovery = 10 * time.Second
	// faultLoadCap bounds the commits of each worker of a load.
	faultLoadCap = 100000
)

// faultPrefix is a key prefix of the test's own.
func faultPrefix(t *testing.T) string {
	t.Helper()
	return "fault:" + t.Name() + ":"
}

// faultExpiry is the expiry of the sessions these tests commit: far enough
// away that no session expires during a test.
func faultExpiry() time.Time {
	return time.Now().Add(24 * time.Hour)
}

// faultData is the data committed for token, so that a session found
// later can be checked to be the one committed.
func faultData(token string) []byte {
	return []byte("data:" + token)
}

// faultWaitFor polls cond until it holds, failing the test if it does not
// within faultWaitTimeout.
func faultWaitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(faultWaitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after %v", what, faultWaitTimeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// commitOutcome is the outcome of one commit of a load.
type commitOutcome struct {
	token      string
	start, end time.Time
	err        error
	panicked   any
}

// commitLoad commits distinct sessions from several goroutines until
// stopped, each commit bounded by faultCommitTimeout.
type commitLoad struct {
	acked  atomic.Int64 // commits that returned nil
	stopc  chan struct{}
	once   sync.Once
	wg     sync.WaitGroup
	byWork [][]commitOutcome // one slice per worker, written only by it until wg is done
}

// startCommitLoad starts workers goroutines committing sessions through
// s, with tokens unique to the load. The load is stopped when the test
// ends, if the test has not stopped it.
func startCommitLoad(t *testing.T, s *EtcdStore, workers int) *commitLoad {
	t.Helper()
	l := &commitLoad{stopc: make(chan struct{}), byWork: make([][]commitOutcome, workers)}
	for w := range workers {
		l.wg.Go(func() {
			for i := range faultLoadCap {
				select {
				case <-l.stopc:
					return
				default:
				}
				r := commitOnce(s, fmt.Sprintf("w%02d-%06d", w, i))
				l.byWork[w] = append(l.byWork[w], r)
				if r.err == nil && r.panicked == nil {
					l.acked.Add(1)
					continue
				}
				// A failed commit returns at once when no member can
				// take it: pause before the next.
				select {
				case <-l.stopc:
					return
				case <-time.After(10 * time.Millisecond):
				}
			}
		})
	}
	t.Cleanup(func() { l.stop() })
	return l
}

// commitOnce commits the session token with faultData and faultExpiry,
// bounded by faultCommitTimeout, and reports how it went.
func commitOnce(s *EtcdStore, token string) (r commitOutcome) {
	r.token = token
	defer func() {
		if p := recover(); p != nil {
			r.panicked = p
			r.end = time.Now()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), faultCommitTimeout)
	defer cancel()
	r.start = time.Now()
	r.err = s.CommitCtx(ctx, token, faultData(token), faultExpiry())
	r.end = time.Now()
	return r
}

// stop stops the load, waits for its commits to return and returns them
// all.
func (l *commitLoad) stop() []commitOutcome {
	l.once.Do(func() { close(l.stopc) })
	l.wg.Wait()
	var all []commitOutcome
	for _, rs := range l.byWork {
		all = append(all, rs...)
	}
	return all
}

// loadReport counts the results of a load and checks what every load
// must satisfy: no panic, and every error from the store.
type loadReport struct {
	acked, failed int
	errs          map[string]int // error text without its varying parts, counted
}

func checkLoad(t *testing.T, results []commitOutcome) loadReport {
	t.Helper()
	rep := loadReport{errs: map[string]int{}}
	for _, r := range results {
		switch {
		case r.panicked != nil:
			t.Errorf("Commit(%q) panicked: %v", r.token, r.panicked)
			rep.failed++
		case r.err != nil:
			rep.failed++
			if !strings.HasPrefix(r.err.Error(), "etcdstore:") {
				t.Errorf("Commit(%q) = %q, want an error starting %q", r.token, r.err, "etcdstore:")
			}
			rep.errs[errorKind(r.err)]++
		default:
			rep.acked++
		}
	}
	return rep
}

// errorKind names an error by its cause, for a short log of what failed.
func errorKind(err error) string {
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return "deadline exceeded"
	case errors.Is(err, rpctypes.ErrLeaseNotFound):
		return "lease not found"
	}
	msg := err.Error()
	if i := strings.LastIndex(msg, ": "); i >= 0 {
		msg = msg[i+2:]
	}
	return msg
}

func (r loadReport) errSummary() string {
	var kinds []string
	for k, n := range r.errs {
		kinds = append(kinds, fmt.Sprintf("%d x %q", n, k))
	}
	sort.Strings(kinds)
	return strings.Join(kinds, ", ")
}

// faultAll reads every session of s, failing the test on error.
func faultAll(t *testing.T, s *EtcdStore) map[string][]byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), faultWaitTimeout)
	defer cancel()
	all, err := s.AllCtx(ctx)
	if err != nil {
		t.Fatalf("AllCtx: %v", err)
	}
	return all
}

// lostSessions returns the acknowledged commits among results whose
// session s does not hold with the data committed, reading all of them
// in one snapshot and the last acknowledged one again with Find.
func lostSessions(t *testing.T, s *EtcdStore, results []commitOutcome) []string {
	t.Helper()
	all := faultAll(t, s)
	var lost []string
	var last string
	for _, r := range results {
		if r.err != nil || r.panicked != nil {
			continue
		}
		last = r.token
		if string(all[r.token]) != string(faultData(r.token)) {
			lost = append(lost, r.token)
		}
	}
	if last != "" {
		ctx, cancel := context.WithTimeout(context.Background(), faultWaitTimeout)
		defer cancel()
		b, found, err := s.FindCtx(ctx, last)
		if err != nil || !found || string(b) != string(faultData(last)) {
			t.Errorf("FindCtx(%q) = %q, %v, %v; want %q, true, nil", last, b, found, err, faultData(last))
		}
	}
	return lost
}

// probeRecovery commits a new session every 20 ms until one succeeds, each
// in its own goroutine so that commits stuck on the lost leader until
// their timeout do not hold back the next, and returns every probe's
// result once all have returned.
func probeRecovery(t *testing.T, s *EtcdStore) []commitOutcome {
	t.Helper()
	var (
		mu      sync.Mutex
		results []commitOutcome
		wg      sync.WaitGroup
		ok      atomic.Bool
	)
	defer wg.Wait()
	deadline := time.Now().Add(faultWaitTimeout)
	for i := 0; !ok.Load(); i++ {
		if time.Now().After(deadline) {
			wg.Wait()
			t.Fatalf("no commit succeeded in the %v after the leader was lost", faultWaitTimeout)
		}
		wg.Go(func() {
			r := commitOnce(s, fmt.Sprintf("probe-%04d", i))
			if r.err == nil && r.panicked == nil {
				ok.Store(true)
			}
			mu.Lock()
			results = append(results, r)
			mu.Unlock()
		})
		time.Sleep(20 * time.Millisecond)
	}
	wg.Wait()
	return results
}

// TestLeaderLossUnderLoad crashes the leader of a three-member cluster
// while commits flow through a client given every member. No commit
// fails, each given faultCommitTimeout, none the store acknowledged is
// lost, and commits begun after the crash succeed within
// faultMaxRecovery.
func TestLeaderLossUnderLoad(t *testing.T) {
	t.Parallel()
	c := etcdtest.StartCluster(t, 3)
	s := NewWithPrefix(c.Client(t), faultPrefix(t))

	load := startCommitLoad(t, s, 8)
	faultWaitFor(t, "200 commits before the leader is lost", func() bool { return load.acked.Load() >= 200 })

	leader := c.Leader()
	lostAt := time.Now()
	c.Kill(leader)
	killTook := time.Since(lostAt)
	probes := probeRecovery(t, s)
	before := load.acked.Load()
	faultWaitFor(t, "200 more commits after the leader is lost", func() bool { return load.acked.Load() >= before+200 })
	results := append(load.stop(), probes...)

	rep := checkLoad(t, results)
	// Recovery: from the crash to the first probe, begun after it, that
	// succeeded.
	var recovered time.Time
	var probesFailed int
	for _, r := range probes {
		if r.err != nil || r.panicked != nil {
			probesFailed++
		} else if recovered.IsZero() || r.end.Before(recovered) {
			recovered = r.end
		}
	}
	recovery := recovered.Sub(lostAt)

	survivor := (leader + 1) % len(c.Members)
	check := NewWithPrefix(c.MemberClient(t, survivor), faultPrefix(t))
	lost := lostSessions(t, check, results)

	t.Logf("leader loss: %d commits acknowledged, %d failed (%d of them among the %d probes), %d lost, %d requests retried; committing again %v after the crash (stopping the member took %v); errors: %s",
		rep.acked, rep.failed, probesFailed, len(probes), len(lost), s.Stats().Retries, recovery.Round(time.Millisecond), killTook.Round(time.Millisecond), rep.errSummary())
	if len(lost) > 0 {
		t.Errorf("%d acknowledged sessions lost, first %q", len(lost), lost[0])
	}
	// Commits that reached the lost leader, or waited on the election,
	// are tried again within their deadline.
	if rep.failed > 0 {
		t.Errorf("%d commits failed across the leader change (%d retries), want none: %s", rep.failed, s.Stats().Retries, rep.errSummary())
	}
	if recovery > faultMaxRecovery {
		t.Errorf("commits succeeded again %v after the leader was lost, want at most %v", recovery, faultMaxRecovery)
	}
}

// TestMemberLostForGood loses one member of three for good: the store,
// through a client that still lists the lost member, serves every method.
func TestMemberLostForGood(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		pick func(leader, n int) int
	}{
		{"follower", func(leader, n int) int { return (leader + 1) % n }},
		{"leader", func(leader, n int) int { return leader }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := etcdtest.StartCluster(t, 3)
			s := NewWithPrefix(c.Client(t), faultPrefix(t))
			gone := tc.pick(c.Leader(), len(c.Members))
			c.Kill(gone)
			c.Leader() // a leader among the two left

			// The first commits may still meet the lost member or the
			// election; from the first success on, every call must work.
			faultWaitFor(t, "a commit after the member is lost", func() bool {
				ctx, cancel := context.WithTimeout(context.Background(), faultCommitTimeout)
				defer cancel()
				return s.CommitCtx(ctx, "probe", faultData("probe"), faultExpiry()) == nil
			})
			ctx := etcdtest.Context(t, faultWaitTimeout)
			want := map[string][]byte{"probe": faultData("probe")}
			for i := range 20 {
				token := fmt.Sprintf("s%02d", i)
				if err := s.CommitCtx(ctx, token, faultData(token), faultExpiry()); err != nil {
					t.Fatalf("CommitCtx(%q): %v", token, err)
				}
				want[token] = faultData(token)
			}
			for i := 0; i < 20; i += 2 {
				token := fmt.Sprintf("s%02d", i)
				if err := s.DeleteCtx(ctx, token); err != nil {
					t.Fatalf("DeleteCtx(%q): %v", token, err)
				}
				delete(want, token)
			}
			for i := range 20 {
				token := fmt.Sprintf("s%02d", i)
				b, found, err := s.FindCtx(ctx, token)
				if err != nil || found != (want[token] != nil) || string(b) != string(want[token]) {
					t.Errorf("FindCtx(%q) = %q, %v, %v; want %q, %v, nil", token, b, found, err, want[token], want[token] != nil)
				}
			}
			// A client made after the loss, as a process started now
			// would, given the same endpoints.
			for name, st := range map[string]*EtcdStore{"store": s, "new client": NewWithPrefix(c.Client(t), faultPrefix(t))} {
				got, err := st.AllCtx(ctx)
				if err != nil {
					t.Fatalf("%s: AllCtx: %v", name, err)
				}
				if len(got) != len(want) {
					t.Errorf("%s: AllCtx returned %d sessions, want %d", name, len(got), len(want))
				}
				for token, b := range want {
					if string(got[token]) != string(b) {
						t.Errorf("%s: AllCtx()[%q] = %q, want %q", name, token, got[token], b)
					}
				}
			}
		})
	}
}
