package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Deadlines and retries.
//
// SCS calls the store with the request's context, which has no deadline,
// and the etcd client waits for a connection for as long as the context
// lives (it calls with gRPC's WaitForReady, client/v3 options.go). So
// every call gets the store's timeout (WithTimeout) as its deadline,
// unless the caller's context ends sooner, and every request of the call
// shares it (the read cache's wait, a legacy session's lease check, a
// commit made again after a conflict); All gets one per page.
//
// Within that deadline a call is tried again while its failure says the
// request may not have reached a working leader: the connection was cut
// or refused, the member has no leader or saw the leader change, the
// server timed out a proposal, or the attempt's own deadline passed. Each
// attempt but the last gets a fifth of the call's time, so that a request
// that hangs on a connection to a member that stopped answering, or on a
// proposal lost in an election, leaves room to ask again: the client's
// balancer sends each request to the next member, and with a third, all
// three attempts of some commits went to a blackholed member
// (TestKeepaliveSkipsDeadEndpoint). Retrying is safe because every commit
// is conditional on the state it was made against (commit.go): an attempt
// that lands after a later one, or after a delete, writes nothing; a
// delete puts its tombstone again; a read reads again (see Deadlines and
// retries in doc.go for what a caller sees).

const (
	// attemptShare is the share of a call's time that one attempt gets,
	// as its inverse.
	attemptShare = 5
	// firstBackoff and maxBackoff bound the wait between attempts, which
	// doubles from the first, with jitter.
	firstBackoff = 25 * time.Millisecond
	maxBackoff   = 500 * time.Millisecond
)

// call is one call of the store: the context it was made with, carrying
// clientv3.WithRequireLeader, and the deadline that every request it makes
// shares (see Deadlines and retries in doc.go).
type call struct {
	ctx      context.Context
	deadline time.Time
	share    time.Duration // the most one attempt gets while time remains
}

// retrier makes the calls of a store: their deadlines, attempts and
// backoff. It is safe for concurrent use by multiple goroutines.
type retrier struct {
	timeout time.Duration // WithTimeout
	clock   clock
	retries atomic.Int64 // attempts made again, for Stats
	// stalled, if set, is called when an attempt times out: a client
	// that logs in then asks whether etcd refuses its token (login.go).
	stalled func()
}

// clock is the time the retrier reads and waits on; tests give it one that
// does not wait. The deadlines of the attempts' contexts, which gRPC
// enforces, run on the system's clock.
type clock interface {
	Now() time.Time
	// Sleep waits d, or until ctx ends, and returns ctx's error if so.
	Sleep(ctx context.Context, d time.Duration) error
}

// wallClock is the system's clock.
type wallClock struct{}

func (wallClock) Now() time.Time { return time.Now() }

func (wallClock) Sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// attemptEnd is when an attempt of c that starts at now ends: after one
// share of the call's time, or at its deadline if less than two shares
// would be left.
func (c call) attemptEnd(now time.Time) time.Time {
	end := now.Add(c.share)
	if c.deadline.Sub(end) < c.share {
		end = c.deadline
	}
	return end
}

// alive reports whether c may still make a request: its context has not
// ended and its deadline has not passed.
func (c call) alive() bool {
	return c.ctx.Err() == nil && time.Now().Before(c.deadline)
}

// newCall starts a call made with ctx: its deadline is the store's timeout
// from now, or ctx's deadline if sooner. Every request of the call asks
// for a leader (clientv3.WithRequireLeader): a member cut off from the
// others answers at once that it has none, rather than holding the
// request, and the next attempt goes to another member.
func (r *retrier) newCall(ctx context.Context) call {
	start := r.clock.Now()
	deadline := start.Add(r.timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	return call{ctx: clientv3.WithRequireLeader(ctx), deadline: deadline, share: deadline.Sub(start) / attemptShare}
}

// pause waits before pass (> 0) of a read-decide-write loop whose Txn a
// concurrent change failed: a random time below 1 ms << pass, at most
// maxBackoff, so that calls that failed together do not come back
// together. It reports whether c may go on: false once its context ended
// or its deadline passed.
func (r *retrier) pause(c call, pass int) bool {
	wait := rand.N(min(time.Millisecond<<min(pass, 20), maxBackoff))
	return r.clock.Sleep(c.ctx, wait) == nil && c.alive()
}

// do calls attempt until it succeeds, fails in a way no retry can fix, or
// c's deadline passes. Each attempt's context ends at the deadline, or,
// while more than two shares of the call's time remain, after one share.
// An attempt that ends at the deadline, or by the end of c's context,
// returns an error that wraps both the reason and the last attempt's
// error; a deadline passed before the first attempt returns
// context.DeadlineExceeded.
func (r *retrier) do(c call, attempt func(ctx context.Context) error) error {
	if !r.clock.Now().Before(c.deadline) {
		return callError(c.ctx, context.DeadlineExceeded, 1)
	}
	backoff := firstBackoff
	for n := 1; ; n++ {
		actx, cancel := context.WithDeadline(c.ctx, c.attemptEnd(r.clock.Now()))
		err := attempt(actx)
		cancel()
		if err == nil {
			return nil
		}
		if r.stalled != nil && errors.Is(err, context.DeadlineExceeded) {
			r.stalled()
		}
		if c.ctx.Err() != nil || !r.clock.Now().Before(c.deadline) {
			return callError(c.ctx, err, n)
		}
		if !retryable(err) {
			return err
		}
		// Jitter: calls that failed together do not come back together.
		wait := min(backoff/2+rand.N(backoff/2+1), c.deadline.Sub(r.clock.Now()))
		if r.clock.Sleep(c.ctx, wait) != nil || !r.clock.Now().Before(c.deadline) {
			return callError(c.ctx, err, n)
		}
		backoff = min(2*backoff, maxBackoff)
		r.retries.Add(1)
	}
}

// retryValue is do for an attempt that returns a value: the value of the
// attempt that succeeded.
func retryValue[T any](r *retrier, c call, attempt func(ctx context.Context) (T, error)) (T, error) {
	var v T
	err := r.do(c, func(ctx context.Context) (err error) {
		v, err = attempt(ctx)
		return err
	})
	return v, err
}

// callError is the error of a call that ctx ended, or its deadline,
// after n attempts, the last of which failed with err: it wraps both.
func callError(ctx context.Context, err error, n int) error {
	reason := ctx.Err()
	if reason == nil {
		reason = context.DeadlineExceeded
	}
	switch {
	case n > 1:
		return fmt.Errorf("%w after %d attempts; the last: %w", reason, n, err)
	case errors.Is(err, reason):
		return err
	default:
		return fmt.Errorf("%w: %w", reason, err)
	}
}

// retryable reports whether err says that a request may not have reached
// a working leader, so that trying again may succeed: the attempt's own
// deadline passed, the connection failed (gRPC Unavailable), or the
// server answered with one of its Unavailable errors (no leader, leader
// changed, request timed out, server stopped, unhealthy cluster;
// api/v3rpc/rpctypes/error.go) or too many requests.
func retryable(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, rpctypes.ErrTooManyRequests) {
		return true
	}
	var etcdErr rpctypes.EtcdError
	if errors.As(err, &etcdErr) {
		return etcdErr.Code() == codes.Unavailable
	}
	return status.Code(err) == codes.Unavailable
}
