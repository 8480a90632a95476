package etcdstore

import (
	"bytes"
	"context"
	"sync"
	"time"
)

// Concurrent commits of one session.
//
// A page that fires many requests at once with one cookie makes as many
// concurrent commits of one session: with SCS's IdleTimeout, one a
// request. Made independently, each that loses the race to another is made
// again on the new revision (Conditional writes, commit.go), so n of them
// cost O(n²) attempts, and they cannot share a batch, which writes a key
// once (batch.go). So a store lines up its own commits of a token: while
// one is in flight, the commits of the token that arrive wait, and when
// it ends, all that waited go as one commit, of the data and expiry of
// the last to arrive, and each gets its result. Every one of them was in
// flight while that commit was made, so each may take effect at its write,
// overwritten at once by the next in the order they arrived: acknowledging
// them all with it is linearizable. A store's concurrent commits of one
// token thus never conflict with each other; those of other stores are
// still ordered by the conditional writes.
//
// The shared commit is planned when it runs, by commitToken as CommitCtx
// makes it, after the commit before it recorded its outcome in the token
// memory: touch coalescing, the revision its write is conditional on and
// the principal index see the latest state.
//
// Deadlines. Each waiter waits no longer than its own call's deadline
// (the store's timeout from its arrival, or its context's deadline if
// sooner: retrier.newCall) and leaves as soon as its context ends, with
// the error it would have had, as a call leaves a batch's queue. The
// shared commit is made under context.WithoutCancel of the last arrival's
// context, which keeps its values, with the latest of the waiters'
// deadlines: no waiter that leaves cancels what the others wait for, and
// the commit has as long as the most patient of them, no less than the
// last arrival, whose data it writes. So a waiter that left, with a
// canceled context or at its deadline, may see its data, or a later
// waiter's, written after it returned: as with every commit that returns
// an error, the session may have been written or not.
//
// The first commit of a line is made in its caller's goroutine and
// context, as without the line; the shared commits after it in one
// goroutine, which ends with the last of them, when no commit waits: the
// line is then forgotten. No lock is held across a request.

// commitLines are a store's commits in flight, by token. The zero value is
// ready to use. It is safe for concurrent use by multiple goroutines.
type commitLines struct {
	mu      sync.Mutex             // protects byToken and its lines' next
	byToken map[string]*commitLine // the tokens with a commit in flight
}

// commitLine is the commits of one token: one in flight, and next, those
// that wait to go as one when it ends, if any.
type commitLine struct {
	next *sharedCommit
}

// sharedCommit is commits of one token that go as one.
type sharedCommit struct {
	// ctx, b and expiry are the last arrival's; b is a copy, for its
	// caller may leave before it is written.
	ctx    context.Context
	b      []byte
	expiry time.Time
	// deadline is the latest of the waiters' deadlines.
	deadline time.Time
	// waiters is how many joined: the n-th to arrive was the last if n
	// equals it once done is closed.
	waiters int
	done    chan struct{} // closed once err is set
	err     error
}

// commitInLine is commitToken for a commit of token that CommitCtx
// checked, at now, in line with the store's other commits of token: at
// once if none is in flight, else with those that wait (see Concurrent
// commits of one session). The errors of a waiter that leaves are those
// of a commit whose context ended or whose deadline passed.
func (s *EtcdStore) commitInLine(ctx context.Context, token string, b []byte, now, expiry time.Time) error {
	l := &s.lines
	l.mu.Lock()
	line, busy := l.byToken[token]
	if !busy {
		if l.byToken == nil {
			l.byToken = make(map[string]*commitLine)
		}
		l.byToken[token] = &commitLine{}
		l.mu.Unlock()
		defer s.nextInLine(token)
		return s.commitToken(ctx, token, b, now, expiry)
	}
	deadline := s.calls.newCall(ctx).deadline
	if err := ctx.Err(); err != nil || !time.Now().Before(deadline) {
		// Gone before it arrived: it joins no commit, as a call whose
		// context has ended makes no request.
		l.mu.Unlock()
		if err == nil {
			err = context.DeadlineExceeded
		}
		return commitError(err)
	}
	sc := line.next
	if sc == nil {
		sc = &sharedCommit{done: make(chan struct{})}
		line.next = sc
	}
	sc.waiters++
	me := sc.waiters
	sc.ctx, sc.b, sc.expiry = ctx, bytes.Clone(b), expiry
	if deadline.After(sc.deadline) {
		sc.deadline = deadline
	}
	l.mu.Unlock()

	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	select {
	case <-sc.done:
		if me < sc.waiters {
			s.stats.commitsShared.Add(1)
		}
		return sc.err
	case <-ctx.Done():
		return commitError(ctx.Err())
	case <-timer.C:
		return commitError(context.DeadlineExceeded)
	}
}

// nextInLine is called when a commit of token ends: it starts the
// commits that waited for it, if any, and forgets the line if none did.
func (s *EtcdStore) nextInLine(token string) {
	if sc := s.lines.next(token); sc != nil {
		go s.commitShared(token, sc)
	}
}

// commitShared makes sc, and after it the commits of token that wait,
// until none does.
func (s *EtcdStore) commitShared(token string, sc *sharedCommit) {
	for ; sc != nil; sc = s.lines.next(token) {
		ctx, cancel := context.WithDeadline(context.WithoutCancel(sc.ctx), sc.deadline)
		if now := s.now(); sc.expiry.After(now) {
			sc.err = s.commitToken(ctx, token, sc.b, now, sc.expiry)
		} else {
			// It expired while it waited: CommitCtx deletes it so.
			sc.err = s.delete(ctx, token, "commit expired session", EndExpired)
		}
		cancel()
		close(sc.done)
	}
}

// next takes the commits of token that wait to go next, or, if none
// does, forgets token's line and returns nil.
func (l *commitLines) next(token string) *sharedCommit {
	l.mu.Lock()
	defer l.mu.Unlock()
	line := l.byToken[token]
	sc := line.next
	if sc == nil {
		delete(l.byToken, token)
		return nil
	}
	line.next = nil
	return sc
}

// len returns how many tokens have a commit in flight.
func (l *commitLines) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.byToken)
}
