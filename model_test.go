package etcdstore

import (
	"context"
	"flag"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alexedwards/scs/v2"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdstore/etcdstore/internal/etcdtest"
)

// The model: what sessions promise an app, checked on random schedules of
// requests on several app servers (TestModel), by a pure checker
// (checkModel, model_check_test.go).
//
// A request loads a session (Find), works, and commits it (Commit) on the
// same app server, as SCS does with IdleTimeout; a logout is a Delete of
// the session's token T, a Commit of T with an expiry at or before now,
// or a DeleteByPrincipal(P) for every T committed naming principal P, by
// a commit acknowledged before DeleteByPrincipal was called, but the
// except tokens. While every request commits within the store's request
// bound of its Find (WithMaxRequestDuration):
//
//   - A logout ends T for good: once it returned nil, no Find of T that
//     starts after that finds it, and no later commit of T from a request
//     that loaded T before the logout writes it again.
//   - Expiry ends a session for readers only: no Find returns a value
//     whose commit's expiry had passed when the Find started. A request
//     that loaded the session before its expiry may still commit it
//     after, on every app server alike, whatever each remembers, and the
//     commit takes effect, unless a logout of T came meanwhile.
//   - No acknowledged commit is lost but to a later write or a logout:
//     after a commit of T (value v, expiry e) returned nil, a Find of T
//     that starts after and ends well before e (modelMargin) finds v or
//     the value of a commit of T in flight or made after (called before
//     the Find returned, not acknowledged before v's commit was called),
//     unless a logout of T was called before the Find returned.
//
// A commit that returned an error may take effect at any time after its
// call, or never; a Find that returned an error says nothing; a commit
// that races a logout may or may not take effect; a commit that returned
// nil though a logout refused it is fine. The checker times a request
// from its Find's call to its commit's return, and leaves out of the
// first rule one that took the bound or longer.

var (
	modelSeed     = flag.Uint64("model.seed", 0, "seed of TestModel's schedule; 0: from the clock")
	modelLong     = flag.Bool("model.long", false, "run TestModel on a 3-member cluster for 2 min (or -model.duration), killing the leader twice")
	modelDuration = flag.Duration("model.duration", 0, "how long TestModel starts scenarios; 0: 10 s, 2 min with -model.long")
)

// modelOptions are given to every app server of TestModel, after its own:
// the request bound.
var modelOptions = []Option{WithMaxRequestDuration(modelBound)}

const (
	// modelBound is the request bound of modelOptions; requests are
	// planned to commit well within it (a Find, at most modelPause, a
	// commit), and one that does not is left out of the check.
	modelBound = 8 * time.Second
	// modelPause bounds a request's work between its Find and its Commit.
	modelPause = 3500 * time.Millisecond
	// modelTimeout is each app server's WithTimeout.
	modelTimeout = 1500 * time.Millisecond
	// modelMargin is the check's tolerance on expiries.
	modelMargin = 300 * time.Millisecond
	// modelWorkers run scenarios at once, each at most modelSteps.
	modelWorkers = 16
	modelSteps   = 1000
	// modelPrincipals is how many users the sessions belong to.
	modelPrincipals = 8
	// modelShown is how many violations a failure shows with traces.
	modelShown = 4
)

// modelMemories are the app servers' WithRememberedTokens: the small
// ones forget a token as soon as they touch others, the large ones
// remember every token of a run.
var modelMemories = []int{1, 1, 2, 1000, 1000}

// TestModel runs random scenarios (logins, requests, slow requests whose
// session expires meanwhile, app servers made to forget, logouts, logouts
// everywhere) from modelWorkers goroutines on app servers with small
// memories, records the history and checks it against the model above.
// With -model.long it runs on a 3-member cluster whose leader it kills
// twice. A failure prints the seed: -model.seed replays the schedule (the
// timing differs).
func TestModel(t *testing.T) {
	t.Parallel()
	seed := *modelSeed
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	run := *modelDuration
	if run <= 0 {
		run = 10 * time.Second
		if *modelLong {
			run = 2 * time.Minute
		}
	}
	t.Logf("seed %d (replay: go test -run TestModel -model.seed %d), scenarios for %v", seed, seed, run)

	// Each app server has a client of its own.
	var cluster *etcdtest.Cluster
	var client func(testing.TB) *clientv3.Client
	if *modelLong {
		cluster = etcdtest.StartCluster(t, 3)
		client = cluster.Client
	} else {
		client = etcdtest.Start(t).Client
	}
	m := &modelRun{tokenByName: make(map[string]*modelToken)}
	for _, mem := range modelMemories {
		opts := append([]Option{WithPrincipal("user"), WithRememberedTokens(mem), WithTimeout(modelTimeout), WithLeaseBucket(time.Second)}, modelOptions...)
		m.servers = append(m.servers, NewWithPrefix(client(t), testPrefix(t), opts...))
	}

	start := time.Now()
	deadline := start.Add(run)
	var wg sync.WaitGroup
	// Before the clients close, should the test stop early.
	t.Cleanup(wg.Wait)
	for w := range modelWorkers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(seed, uint64(w)))
			for range modelSteps {
				if time.Now().After(deadline) {
					return
				}
				m.step(rng)
			}
		})
	}
	if cluster != nil {
		// Kill the leader at a third of the run and at two thirds, and
		// restart it half-way to the next.
		for _, frac := range []float64{1.0 / 3, 2.0 / 3} {
			time.Sleep(time.Until(start.Add(time.Duration(frac * float64(run)))))
			l := cluster.Leader()
			cluster.Kill(l)
			t.Logf("killed member %d, the leader, at %v", l, time.Since(start).Round(time.Millisecond))
			time.Sleep(run / 6)
			cluster.Restart(l)
		}
	}
	wg.Wait()

	ops := m.history()
	var errs, finds, commits, logouts, slow int
	var longest time.Duration
	for _, op := range ops {
		if op.err != nil {
			errs++
		}
		switch {
		case op.kind == mFind:
			finds++
		case op.kind == mCommit && op.logoutCommit(), op.kind == mDelete, op.kind == mDeleteByPrincipal:
			logouts++
		default:
			commits++
			d := op.ret.Sub(op.loaded)
			longest = max(longest, d)
			if d >= modelBound {
				slow++
			}
		}
	}
	t.Logf("%d operations in %v: %d finds, %d commits, %d logouts, %d errors; longest request %v, %d past the bound %v",
		len(ops), time.Since(start).Round(time.Millisecond), finds, commits, logouts, errs, longest.Round(time.Millisecond), slow, modelBound)

	violations := checkModel(ops, modelBound, modelMargin)
	if len(violations) == 0 {
		return
	}
	// The first violation of each kind, with its token's trace, then
	// others of other tokens up to modelShown, then a count of each kind.
	h := newMHistory(ops)
	shown := map[string]bool{}
	kinds := map[string]int{}
	for _, first := range []bool{true, false} {
		for _, v := range violations {
			if first {
				kinds[v.kind]++
			}
			if !shown[v.token] && (kinds[v.kind] == 1 && first || !first && len(shown) < modelShown) {
				shown[v.token] = true
				t.Errorf("%s (seed %d): %s\n%s", v.kind, seed, v.what, h.trace(v.token))
			}
		}
	}
	var counts []string
	for _, k := range slices.Sorted(maps.Keys(kinds)) {
		counts = append(counts, fmt.Sprintf("%d %s", kinds[k], k))
	}
	t.Errorf("%d violations of the model (%s) in %d operations; replay with -model.seed %d", len(violations), strings.Join(counts, ", "), len(ops), seed)
}

// modelRun is TestModel's app servers, the history they make, and what
// the scenarios know of the tokens.
type modelRun struct {
	servers       []*EtcdStore
	reqs, counter atomic.Int64 // scenarios; tokens and values

	mu          sync.Mutex // protects ops, tokens and tokenByName
	ops         []mOp
	tokens      []*modelToken
	tokenByName map[string]*modelToken
}

// modelToken is what the scenarios know of a token.
type modelToken struct {
	name, principal string
	expiry          time.Time // of its latest acknowledged commit
	gone            bool      // logged out, or found missing
	busy            int       // requests in flight
}

func (m *modelRun) history() []mOp {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.ops)
}

func (m *modelRun) record(op mOp) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.ops = append(m.ops, op)
}

// pick returns a token, one not gone and not expired if live; false if
// there is none.
func (m *modelRun) pick(rng *rand.Rand, live bool) (modelToken, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if tok := m.chooseLocked(rng, live, false); tok != nil {
		return *tok, true
	}
	return modelToken{}, false
}

// claim returns a live token for a request, two times in three one that
// no other request is on, and counts the request in; release counts it
// out.
func (m *modelRun) claim(rng *rand.Rand) (modelToken, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if tok := m.chooseLocked(rng, true, rng.IntN(3) > 0); tok != nil {
		tok.busy++
		return *tok, true
	}
	return modelToken{}, false
}

func (m *modelRun) release(token string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.tokenByName[token].busy--
}

// chooseLocked returns a token as pick does, one no request is on if
// idle, or nil. m.mu must be held.
func (m *modelRun) chooseLocked(rng *rand.Rand, live, idle bool) *modelToken {
	var from []*modelToken
	now := time.Now()
	for _, tok := range m.tokens {
		if !live || (!tok.gone && tok.expiry.After(now) && (!idle || tok.busy == 0)) {
			from = append(from, tok)
		}
	}
	if len(from) == 0 {
		return nil
	}
	return from[rng.IntN(len(from))]
}

// mark updates what the scenarios know of token after a commit to expire
// at expiry (a zero expiry: the token is gone).
func (m *modelRun) mark(token string, expiry time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	tok := m.tokenByName[token]
	if tok == nil {
		return
	}
	if expiry.IsZero() {
		tok.gone = true
	} else if expiry.After(tok.expiry) {
		tok.expiry = expiry
	}
}

// step runs one scenario.
func (m *modelRun) step(rng *rand.Rand) {
	req := int(m.reqs.Add(1))
	switch p := rng.IntN(100); {
	case p < 20:
		m.login(rng, req)
	case p < 72:
		m.request(rng, req)
	case p < 80:
		if tok, ok := m.pick(rng, true); ok {
			m.delete(req, rng.IntN(len(m.servers)), tok.name)
		}
	case p < 83:
		m.deleteByPrincipal(rng, req, rng.IntN(len(m.servers)), fmt.Sprint("p", rng.IntN(modelPrincipals)))
	default:
		// A probe, logged-out tokens included.
		if tok, ok := m.pick(rng, false); ok {
			m.find(req, rng.IntN(len(m.servers)), tok.name)
		}
	}
}

// login commits a new token of a random user on a random app server.
func (m *modelRun) login(rng *rand.Rand, req int) {
	tok := &modelToken{name: fmt.Sprint("t", m.counter.Add(1)), principal: fmt.Sprint("p", rng.IntN(modelPrincipals))}
	now := time.Now()
	tok.expiry = now.Add(between(rng, 500*time.Millisecond, 3*time.Second))
	if m.commit(req, rng.IntN(len(m.servers)), tok.name, tok.principal, now, tok.expiry) {
		m.mu.Lock()
		defer m.mu.Unlock()
		m.tokens = append(m.tokens, tok)
		m.tokenByName[tok.name] = tok
	}
}

// request loads a live token on app server a, often late in its life,
// works (past its expiry, often; forgetting it, sometimes, by touching
// others; while another app server logs it out, sometimes), commits it
// on a, and then finds it, as the user's next request, anywhere.
func (m *modelRun) request(rng *rand.Rand, req int) {
	tok, ok := m.claim(rng)
	if !ok {
		m.login(rng, req)
		return
	}
	defer m.release(tok.name)
	a := rng.IntN(len(m.servers))
	if rng.IntN(10) < 6 {
		// Load it within 0.5 s of its expiry.
		sleepUntil(tok.expiry.Add(-between(rng, 0, 500*time.Millisecond)), modelPause)
	}
	loaded := time.Now()
	expiry, found, err := m.find(req, a, tok.name)
	if err != nil || !found {
		if err == nil {
			m.mark(tok.name, time.Time{})
		}
		return
	}
	now := time.Now()
	var end time.Time
	switch rng.IntN(3) {
	case 0: // a quick request
		end = now.Add(between(rng, 0, 400*time.Millisecond))
	case 1: // its expiry passes, etcd still holds its key
		end = expiry.Add(between(rng, 0, time.Second))
	default: // etcd has likely removed its key since (a lease ends within 2.5 s of its bucket)
		end = expiry.Add(between(rng, 1500*time.Millisecond, modelPause))
	}
	if limit := now.Add(modelPause); end.After(limit) {
		end = limit
	}
	for range rng.IntN(3) {
		// Touch another token on a, so that a small memory forgets tok.
		if other, ok := m.pick(rng, false); ok && other.name != tok.name {
			m.find(req, a, other.name)
		}
	}
	if rng.IntN(10) < 3 {
		// Another app server logs it out meanwhile; half the time just
		// after its expiry, if that passes during the request.
		at := now.Add(between(rng, 0, end.Sub(now)))
		if expiry.After(now) && expiry.Before(end) && rng.IntN(2) == 0 {
			at = expiry.Add(between(rng, 0, min(600*time.Millisecond, end.Sub(expiry))))
		}
		sleepUntil(at, modelPause)
		b := (a + 1 + rng.IntN(len(m.servers)-1)) % len(m.servers)
		if rng.IntN(2) == 0 {
			m.delete(req, b, tok.name)
		} else {
			m.deleteByPrincipal(rng, req, b, tok.principal)
		}
	}
	sleepUntil(end, modelPause)
	next := time.Now().Add(between(rng, time.Second, 3*time.Second))
	if rng.IntN(12) == 0 {
		next = time.Now().Add(-between(rng, 0, time.Second)) // a logout by commit
	}
	m.commit(req, a, tok.name, tok.principal, loaded, next)
	m.find(req, rng.IntN(len(m.servers)), tok.name)
}

// find records a Find of token on app server s, and returns the expiry
// of what it found, whether it found it, and its error.
func (m *modelRun) find(req, s int, token string) (expiry time.Time, found bool, err error) {
	op := mOp{kind: mFind, server: s, req: req, token: token, call: time.Now()}
	b, found, err := m.servers[s].FindCtx(context.Background(), token)
	op.ret, op.found, op.err = time.Now(), found, err
	if found {
		op.value = "(data that does not decode)"
		if deadline, values, err := (scs.GobCodec{}).Decode(b); err == nil {
			op.value, expiry = fmt.Sprint(values["v"]), deadline
		}
	}
	m.record(op)
	return expiry, found, err
}

// commit records a commit of token of principal on app server s, with
// a new value and expiry, by a request that loaded it at loaded, and
// reports whether it returned nil.
func (m *modelRun) commit(req, s int, token, principal string, loaded, expiry time.Time) bool {
	op := mOp{kind: mCommit, server: s, req: req, token: token, principal: principal, value: fmt.Sprint("v", m.counter.Add(1)), expiry: expiry, loaded: loaded}
	b, err := scs.GobCodec{}.Encode(expiry, map[string]any{"user": principal, "v": op.value})
	if err != nil {
		panic(err) // a map of two strings always encodes
	}
	op.call = time.Now()
	op.err = m.servers[s].CommitCtx(context.Background(), token, b, expiry)
	op.ret = time.Now()
	m.record(op)
	if op.logoutCommit() {
		m.mark(token, time.Time{})
	} else if op.err == nil {
		m.mark(token, expiry)
	}
	return op.err == nil
}

// delete records a Delete of token on app server s.
func (m *modelRun) delete(req, s int, token string) {
	m.mark(token, time.Time{})
	op := mOp{kind: mDelete, server: s, req: req, token: token, call: time.Now()}
	op.err = m.servers[s].DeleteCtx(context.Background(), token)
	op.ret = time.Now()
	m.record(op)
}

// deleteByPrincipal records a DeleteByPrincipal of principal on app
// server s, keeping one of its live tokens a third of the time.
func (m *modelRun) deleteByPrincipal(rng *rand.Rand, req, s int, principal string) {
	var except []string
	m.mu.Lock()
	var keep []string
	for _, tok := range m.tokens {
		if tok.principal == principal && !tok.gone {
			keep = append(keep, tok.name)
		}
	}
	if len(keep) > 0 && rng.IntN(3) == 0 {
		except = []string{keep[rng.IntN(len(keep))]}
	}
	for _, tok := range m.tokens {
		if tok.principal == principal && !slices.Contains(except, tok.name) {
			tok.gone = true
		}
	}
	m.mu.Unlock()
	op := mOp{kind: mDeleteByPrincipal, server: s, req: req, principal: principal, except: except, call: time.Now()}
	_, op.err = m.servers[s].DeleteByPrincipal(context.Background(), principal, except...)
	op.ret = time.Now()
	m.record(op)
}

// between returns a random duration in [lo, hi), or lo if hi <= lo.
func between(rng *rand.Rand, lo, hi time.Duration) time.Duration {
	if hi <= lo {
		return lo
	}
	return lo + time.Duration(rng.Int64N(int64(hi-lo)))
}

// sleepUntil sleeps until t, at most limit.
func sleepUntil(t time.Time, limit time.Duration) {
	time.Sleep(min(time.Until(t), limit))
}
