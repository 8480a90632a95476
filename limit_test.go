package etcdstore

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/etcdstore/etcdstore/internal/etcdtest"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Session limits (limit.go), against real etcd.

// TestPlanLimit: the pure decision of a login.
func TestPlanLimit(t *testing.T) {
	c := func(token string, created int64, live bool) limitCandidate {
		return limitCandidate{token: token, created: created, live: live}
	}
	tokens := func(cs []limitCandidate) []string {
		var out []string
		for _, c := range cs {
			out = append(out, c.token)
		}
		return out
	}
	cands := []limitCandidate{c("b", 20, true), c("x", 5, false), c("a", 10, true), c("c", 30, true)}
	for _, tc := range []struct {
		n            int
		policy       LimitPolicy
		refuse       bool
		oldest, gone []string
	}{
		{1, EndOldest, false, []string{"a", "b", "c"}, []string{"x"}},
		{2, EndOldest, false, []string{"a", "b"}, []string{"x"}},
		{3, EndOldest, false, []string{"a"}, []string{"x"}},
		{4, EndOldest, false, nil, []string{"x"}},
		{9, EndOldest, false, nil, []string{"x"}},
		{3, RefuseNew, true, nil, nil},
		{4, RefuseNew, false, nil, []string{"x"}},
	} {
		p := planLimit(slices.Clone(cands), tc.n, tc.policy)
		if p.refuse != tc.refuse || !slices.Equal(tokens(p.oldest), tc.oldest) || !slices.Equal(tokens(p.gone), tc.gone) || p.live != 3 {
			t.Errorf("limit %d, %v: refuse %v, oldest %v, gone %v, live %d; want %v, %v, %v, 3", tc.n, tc.policy, p.refuse, tokens(p.oldest), tokens(p.gone), p.live, tc.refuse, tc.oldest, tc.gone)
		}
	}
}

// TestSessionLimitEndsOldest: with a limit of 2, a third login ends the
// first; the ended session's request in flight does not bring it back;
// the reason is readable.
func TestSessionLimitEndsOldest(t *testing.T) {
	t.Parallel()
	stores, _ := appServers(t, 2, WithPrincipal("user"), WithSessionLimit(2, EndOldest))
	a, b := stores[0], stores[1]
	ctx := ctxFor(t)
	exp := time.Now().Add(time.Hour)
	for _, tok := range []string{"first", "second"} {
		if err := a.CommitCtx(ctx, tok, userData(t, "ann", tok), exp); err != nil {
			t.Fatal(err)
		}
	}
	// A request of "first" is in flight on a: it loaded the session.
	if _, found, err := a.FindCtx(ctx, "first"); err != nil || !found {
		t.Fatalf("Find(first) = %v, %v", found, err)
	}
	if err := b.CommitCtx(ctx, "third", userData(t, "ann", "third"), exp); err != nil {
		t.Fatal(err)
	}
	if err := a.CommitCtx(ctx, "first", userData(t, "ann", "first again"), exp); err != nil {
		t.Fatalf("the ended session's request: %v", err)
	}
	got, err := b.FindByPrincipal(ctx, "ann")
	if err != nil {
		t.Fatal(err)
	}
	if keys := slices.Sorted(mapsKeys(got)); !slices.Equal(keys, []string{"second", "third"}) {
		t.Fatalf("ann's sessions: %v, want [second third]", keys)
	}
	e, ok, err := a.Ended(ctx, "first")
	if err != nil || !ok || e.Reason != EndSessionLimit || time.Since(e.At) > time.Minute {
		t.Fatalf("Ended(first) = %+v, %v, %v; want EndSessionLimit, just now", e, ok, err)
	}
	if st := b.Stats(); st.LimitEnded != 1 {
		t.Errorf("Stats.LimitEnded = %d, want 1", st.LimitEnded)
	}
}

// TestSessionLimitSkipsCommitsThatKeepTheUser: a commit whose session
// keeps its principal is not checked, even when the principal is over its
// limit (three sessions written by a store without one): none ends.
func TestSessionLimitSkipsCommitsThatKeepTheUser(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t)
	free := NewWithPrefix(srv.Client(t), testPrefix(t), WithPrincipal("user"))
	limited := NewWithPrefix(srv.Client(t), testPrefix(t), WithPrincipal("user"), WithSessionLimit(2, EndOldest))
	ctx := ctxFor(t)
	exp := time.Now().Add(time.Hour)
	for _, tok := range []string{"a", "b", "c"} {
		if err := free.CommitCtx(ctx, tok, userData(t, "ann", tok), exp); err != nil {
			t.Fatal(err)
		}
	}
	if _, found, err := limited.FindCtx(ctx, "c"); err != nil || !found {
		t.Fatalf("Find(c) = %v, %v", found, err)
	}
	if err := limited.CommitCtx(ctx, "c", userData(t, "ann", "c, later"), exp); err != nil {
		t.Fatal(err)
	}
	if got, err := limited.FindByPrincipal(ctx, "ann"); err != nil || len(got) != 3 {
		t.Fatalf("ann's sessions after a commit that kept the user: %d, %v; want all 3", len(got), err)
	}
	if st := limited.Stats(); st.LimitEnded != 0 {
		t.Errorf("LimitEnded = %d, want 0", st.LimitEnded)
	}
}

// TestSessionLimitRefusesNew: with RefuseNew, a login over the limit fails
// with ErrSessionLimit and writes nothing; after a logout it succeeds.
func TestSessionLimitRefusesNew(t *testing.T) {
	t.Parallel()
	s, c := newStore(t, WithPrincipal("user"), WithSessionLimitFunc(func(p string) int {
		if p == "bob" {
			return 1
		}
		return 0
	}, RefuseNew))
	ctx := ctxFor(t)
	exp := time.Now().Add(time.Hour)
	if err := s.CommitCtx(ctx, "b1", userData(t, "bob", "1"), exp); err != nil {
		t.Fatal(err)
	}
	err := s.CommitCtx(ctx, "b2", userData(t, "bob", "2"), exp)
	if !errors.Is(err, ErrSessionLimit) {
		t.Fatalf("second login of bob: %v, want ErrSessionLimit", err)
	}
	t.Logf("the refusal: %v", err)
	if v := rawValue(t, c, s, "b2"); v != nil {
		t.Fatalf("a refused login wrote %q", v.value)
	}
	// Others have no limit.
	for i := range 3 {
		if err := s.CommitCtx(ctx, fmt.Sprint("c", i), userData(t, "carol", "x"), exp); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.DeleteCtx(ctx, "b1"); err != nil {
		t.Fatal(err)
	}
	if err := s.CommitCtx(ctx, "b2", userData(t, "bob", "2"), exp); err != nil {
		t.Fatalf("a login after the logout: %v", err)
	}
	st := s.Stats()
	if st.LimitRefused != 1 || st.Errors.Other != 0 {
		t.Errorf("Stats: LimitRefused %d, Errors.Other %d; want 1, 0", st.LimitRefused, st.Errors.Other)
	}
}

// TestSessionLimitEndsExpired: a session whose expiry passed but whose key
// etcd still holds is ended by the next login, with EndExpired, so that
// its request in flight cannot commit it back past the limit.
func TestSessionLimitEndsExpired(t *testing.T) {
	t.Parallel()
	stores, _ := appServers(t, 2, WithPrincipal("user"), WithSessionLimit(1, RefuseNew))
	a, b := stores[0], stores[1]
	ctx := ctxFor(t)
	now := time.Now()
	setClock(now, a, b)
	if err := a.CommitCtx(ctx, "old", userData(t, "dan", "old"), now.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if _, found, err := a.FindCtx(ctx, "old"); err != nil || !found {
		t.Fatalf("Find(old) = %v, %v", found, err)
	}
	// Its expiry passes while its request runs; dan logs in elsewhere.
	setClock(now.Add(2*time.Minute), a, b)
	if err := b.CommitCtx(ctx, "new", userData(t, "dan", "new"), now.Add(time.Hour)); err != nil {
		t.Fatalf("login with only an expired session: %v", err)
	}
	if err := a.CommitCtx(ctx, "old", userData(t, "dan", "old"), now.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if _, found, _ := b.FindCtx(ctx, "old"); found {
		t.Fatal("the expired session's request brought it back past the limit")
	}
	if e, ok, err := b.Ended(ctx, "old"); err != nil || !ok || e.Reason != EndExpired {
		t.Fatalf("Ended(old) = %+v, %v, %v; want EndExpired", e, ok, err)
	}
}

// TestSessionLimitNeedsPrincipal: the option without WithPrincipal is a
// configuration error, said at New.
func TestSessionLimitNeedsPrincipal(t *testing.T) {
	c := etcdtest.Start(t).Client(t)
	defer func() {
		if r := recover(); r == nil {
			t.Fatal("no panic")
		} else {
			t.Logf("New panics: %v", r)
		}
	}()
	New(c, WithSessionLimit(1, EndOldest))
}

// liveOf counts the sessions of principal that s's keyspace held live at
// revision rev (0: now), as of s's clock.
func liveOf(t *testing.T, c *clientv3.Client, s *EtcdStore, principal string, rev int64) []string {
	t.Helper()
	resp, err := c.Get(ctxFor(t), s.keys.prefix, clientv3.WithPrefix(), clientv3.WithRev(rev))
	if err != nil {
		t.Fatal(err)
	}
	var live []string
	for _, kv := range resp.Kvs {
		if _, names, ok, err := s.storedPrincipal(kv, principal); err != nil {
			t.Fatal(err)
		} else if names && ok {
			live = append(live, string(kv.Key[len(s.keys.prefix):]))
		}
	}
	return live
}

// mapsKeys returns the keys of m, for slices.Sorted.
func mapsKeys[V any](m map[string]V) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// loginTrials runs trials of simultaneous logins of one principal (a user
// of its own each trial), logins of them spread over stores, under limit
// n and policy, and checks each trial against etcd's history: at no
// revision does the principal have more than n live sessions; with
// EndOldest every login succeeds and the n last written survive; with
// RefuseNew exactly the logins over n are refused, and those written
// survive. during, if not nil, runs in a goroutine during trial 1 (a
// fault). It returns how many logins were refused.
func loginTrials(t *testing.T, c *clientv3.Client, stores []*EtcdStore, trials, logins, n int, policy LimitPolicy, during func()) int {
	t.Helper()
	refusedAll := 0
	for trial := range trials {
		user := fmt.Sprintf("u%d", trial)
		from := etcdtest.Head(t, c)
		var wg sync.WaitGroup
		start := make(chan struct{})
		errs := make([]error, logins)
		for i := range logins {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				s := stores[i%len(stores)]
				errs[i] = s.CommitCtx(ctxFor(t), fmt.Sprintf("%s-%d", user, i), userData(t, user, "login"), time.Now().Add(time.Hour))
			}()
		}
		if trial == 1 && during != nil {
			go during()
		}
		close(start)
		wg.Wait()
		var written []string
		refused := 0
		for i, err := range errs {
			switch {
			case errors.Is(err, ErrSessionLimit):
				refused++
			case err != nil:
				t.Fatalf("trial %d, login %d: %v", trial, i, err)
			default:
				written = append(written, fmt.Sprintf("%s-%d", user, i))
			}
		}
		refusedAll += refused
		to := etcdtest.Head(t, c)
		for rev := from; rev <= to; rev++ {
			if live := liveOf(t, c, stores[0], user, rev); len(live) > n {
				t.Fatalf("trial %d: at revision %d %s has %d live sessions, over the limit of %d: %v", trial, rev, user, len(live), n, live)
			}
		}
		live := liveOf(t, c, stores[0], user, 0)
		slices.Sort(live)
		var want []string
		switch policy {
		case EndOldest:
			if refused > 0 {
				t.Fatalf("trial %d: %d logins refused under EndOldest", trial, refused)
			}
			// The last n written: by their keys' create revisions.
			created := make(map[string]int64)
			for _, tok := range written {
				resp, err := c.Get(ctxFor(t), stores[0].keys.key(tok))
				if err != nil || len(resp.Kvs) == 0 {
					t.Fatalf("get %s: %v", tok, err)
				}
				created[tok] = resp.Kvs[0].CreateRevision
			}
			byCreation := slices.Clone(written)
			slices.SortFunc(byCreation, func(a, b string) int { return int(created[a] - created[b]) })
			want = byCreation[max(0, len(byCreation)-n):]
		case RefuseNew:
			if refused != logins-n {
				t.Fatalf("trial %d: %d of %d logins refused under a limit of %d, want %d", trial, refused, logins, n, logins-n)
			}
			want = written
		}
		want = slices.Sorted(slices.Values(want))
		if !slices.Equal(live, want) {
			t.Fatalf("trial %d: live sessions %v, want %v", trial, live, want)
		}
	}
	return refusedAll
}

// TestSessionLimitConcurrentLogins: three app servers, six simultaneous
// logins of one user, trial after trial, limits 1 and 2, both policies.
func TestSessionLimitConcurrentLogins(t *testing.T) {
	t.Parallel()
	for _, n := range []int{1, 2} {
		for _, policy := range []LimitPolicy{EndOldest, RefuseNew} {
			t.Run(fmt.Sprintf("limit=%d/%s", n, policy), func(t *testing.T) {
				t.Parallel()
				stores, c := appServers(t, 3, WithPrincipal("user"), WithSessionLimit(n, policy))
				loginTrials(t, c, stores, 8, 6, n, policy, nil)
			})
		}
	}
}

// TestSessionLimitLeaderKill: the same on a three-member cluster whose
// leader is killed during the second trial.
func TestSessionLimitLeaderKill(t *testing.T) {
	t.Parallel()
	for _, policy := range []LimitPolicy{EndOldest, RefuseNew} {
		t.Run(policy.String(), func(t *testing.T) {
			t.Parallel()
			cl := etcdtest.StartCluster(t, 3)
			stores := make([]*EtcdStore, 3)
			for i := range stores {
				stores[i] = NewWithPrefix(cl.Client(t), testPrefix(t), WithPrincipal("user"), WithSessionLimit(2, policy))
			}
			c := cl.Client(t)
			loginTrials(t, c, stores, 5, 6, 2, policy, func() { cl.Kill(cl.Leader()) })
		})
	}
}

// TestSessionLimitRandomSchedules: random schedules of logins, requests
// that load a session and commit it later, logouts, logouts everywhere
// and expiries, by workers on three app servers, for one user with a limit
// of 2. At no revision of etcd's history does the user have more than 2
// live sessions. Sessions last a minute; halfway, every store's clock
// jumps two minutes, so that each then is expired while etcd still holds
// its key and requests in flight commit it again. The seed is logged.
func TestSessionLimitRandomSchedules(t *testing.T) {
	t.Parallel()
	for _, policy := range []LimitPolicy{EndOldest, RefuseNew} {
		t.Run(policy.String(), func(t *testing.T) {
			t.Parallel()
			const n, workers, steps = 2, 6, 60
			seed := uint64(time.Now().UnixNano())
			t.Logf("seed %d", seed)
			var skew atomic.Int64
			stores, c := appServers(t, 3, WithPrincipal("user"), WithSessionLimit(n, policy))
			for _, s := range stores {
				s.now = func() time.Time { return time.Now().Add(time.Duration(skew.Load())) }
			}
			from := etcdtest.Head(t, c)
			var jumpedAt atomic.Int64 // the revision before the jump
			var wg sync.WaitGroup
			var done atomic.Int64
			for w := range workers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					rnd := rand.New(rand.NewPCG(seed, uint64(w)))
					s := stores[w%len(stores)]
					var mine []string
					for i := range steps {
						if done.Add(1) == workers*steps/2 {
							jumpedAt.Store(etcdtest.Head(t, c))
							skew.Store(int64(2 * time.Minute))
						}
						ctx := ctxFor(t)
						var err error
						switch op := rnd.IntN(20); {
						case op < 6 || len(mine) == 0: // a login
							tok := fmt.Sprintf("w%d-%d", w, i)
							mine = append(mine, tok)
							err = s.CommitCtx(ctx, tok, userData(t, "eve", tok), s.now().Add(time.Minute))
						case op < 16: // a request: load, work, commit
							tok := mine[rnd.IntN(len(mine))]
							var found bool
							if _, found, err = s.FindCtx(ctx, tok); err == nil && found {
								time.Sleep(time.Duration(rnd.IntN(5)) * time.Millisecond)
								err = s.CommitCtx(ctx, tok, userData(t, "eve", tok), s.now().Add(time.Minute))
							}
						case op < 19: // a logout
							err = s.DeleteCtx(ctx, mine[rnd.IntN(len(mine))])
						default: // log out everywhere
							_, err = s.DeleteByPrincipal(ctx, "eve")
						}
						if err != nil && !errors.Is(err, ErrSessionLimit) {
							t.Errorf("worker %d, step %d: %v", w, i, err)
							return
						}
					}
				}()
			}
			wg.Wait()
			to := etcdtest.Head(t, c)
			jump := jumpedAt.Load()
			checked := 0
			for rev := from; rev <= to; rev++ {
				// Each revision as of its own time: before the jump, the
				// clock without it (some seconds late, well within the
				// minute); after, with it. A commit that read its clock
				// before the jump and landed after counts as expired, which
				// can only undercount.
				skewAt := time.Duration(0)
				if rev > jump {
					skewAt = 2 * time.Minute
				}
				stores[0].now = func() time.Time { return time.Now().Add(skewAt) }
				if live := liveOf(t, c, stores[0], "eve", rev); len(live) > n {
					t.Fatalf("seed %d: at revision %d eve has %d live sessions, over the limit of %d: %v", seed, rev, len(live), n, live)
				}
				checked++
			}
			t.Logf("%d revisions checked; limit ended %d, refused %d", checked,
				stores[0].Stats().LimitEnded+stores[1].Stats().LimitEnded+stores[2].Stats().LimitEnded,
				stores[0].Stats().LimitRefused+stores[1].Stats().LimitRefused+stores[2].Stats().LimitRefused)
		})
	}
}

// TestSessionLimitReusedEntry: a login that writes an index entry left
// behind again (a Delete by a store that did not remember the session's
// principal leaves it; the tombstone's lease ends before the entry's)
// keeps the entry's create revision, which the range compare does not
// see; a concurrent login's compare of that entry's mod revision does.
// Before, both logins succeeded under a limit of 1.
func TestSessionLimitReusedEntry(t *testing.T) {
	t.Parallel()
	opts := []Option{WithPrincipal("user"), WithSessionLimit(1, RefuseNew)}
	sA, c := newStore(t, opts...)
	prefix := sA.keys.prefix
	sB := NewWithPrefix(c, prefix, opts...)
	sC := NewWithPrefix(c, prefix, opts...)
	ctx := ctxFor(t)
	exp := time.Now().Add(time.Hour)
	if err := sB.CommitCtx(ctx, "s", userData(t, "ann", "s"), exp); err != nil {
		t.Fatal(err)
	}
	// Logged out on a server that does not remember s: tombstone, entry kept.
	if err := sC.DeleteCtx(ctx, "s"); err != nil {
		t.Fatal(err)
	}
	// The tombstone's lease ends (request bound) while the entry's lives.
	if _, err := c.Delete(ctx, sA.keys.key("s")); err != nil {
		t.Fatal(err)
	}
	// Login of a on A: the read and the plan.
	data := userData(t, "ann", "a")
	now := time.Now()
	w := &pendingCommit{token: "a", key: sA.keys.key("a"), data: data, now: now, expiry: exp}
	w.value = sA.seal(exp, w.key, data)
	w.principal, w.hasPrincipal, w.digests = sA.index.of(tokenState{}, false, data)
	entries, kvs, rev, err := sA.principalSessions(sA.calls.newCall(ctx), "ann")
	if err != nil {
		t.Fatal(err)
	}
	cands, guards, err := sA.limitCandidates(w, entries, kvs)
	if err != nil {
		t.Fatal(err)
	}
	plan := planLimit(cands, 1, RefuseNew)
	plan.guards = guards
	// Meanwhile B commits s (a request in flight): a login, checked too.
	if err := sB.CommitCtx(ctx, "s", userData(t, "ann", "s2"), exp); err != nil {
		t.Fatal(err)
	}
	r, err := sA.limitedOnce(ctx, w, plan, rev)
	if err != nil {
		t.Fatal(err)
	}
	live, err := sA.FindByPrincipal(ctx, "ann")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("A's limited Txn succeeded=%v; ann's live sessions: %d", r.succeeded, len(live))
	if len(live) > 1 {
		t.Fatalf("ann has %d live sessions, over the limit of 1", len(live))
	}
}
