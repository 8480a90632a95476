package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestRetryable: failures that a leader change or a lost connection
// explains are tried again; those that trying again cannot fix are not.
func TestRetryable(t *testing.T) {
	tests := []struct {
		err  error
		want bool
	}{
		{rpctypes.ErrNoLeader, true},
		{rpctypes.ErrLeaderChanged, true},
		{rpctypes.ErrTimeout, true},
		{rpctypes.ErrTimeoutDueToLeaderFail, true},
		{rpctypes.ErrTimeoutDueToConnectionLost, true},
		{rpctypes.ErrStopped, true},
		{rpctypes.ErrTooManyRequests, true},
		{status.Error(codes.Unavailable, "connection refused"), true},
		{fmt.Errorf("grant lease: %w", context.DeadlineExceeded), true},
		{context.Canceled, false},
		{rpctypes.ErrPermissionDenied, false},
		{rpctypes.ErrRequestTooLarge, false},
		{rpctypes.ErrNoSpace, false},
		{rpctypes.ErrCompacted, false},
		{rpctypes.ErrLeaseNotFound, false},
		{status.Error(codes.ResourceExhausted, "trying to send message larger than max"), false},
		{errCorrupt, false},
	}
	for _, tt := range tests {
		t.Run(tt.err.Error(), func(t *testing.T) {
			if got := retryable(tt.err); got != tt.want {
				t.Errorf("retryable(%v) = %v, want %v", tt.err, got, tt.want)
			}
		})
	}
}

// fakeClock is a clock that waits for nothing: Sleep moves it on, and so
// may the attempts of a test.
type fakeClock struct {
	now    time.Time
	sleeps []time.Duration
}

func (c *fakeClock) Now() time.Time { return c.now }

func (c *fakeClock) Sleep(ctx context.Context, d time.Duration) error {
	c.sleeps = append(c.sleeps, d)
	c.now = c.now.Add(d)
	return ctx.Err()
}

// TestRetryStopsAtDeadline: a call whose attempts keep failing in a
// retryable way ends at its deadline with an error that wraps both the
// deadline and the last failure, backing off from 25 ms and doubling to
// 500 ms, with jitter; one that fails otherwise is not tried again; one
// that succeeds after failures returns nil. On a clock that waits for
// nothing.
func TestRetryStopsAtDeadline(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		fail     error
		failures int           // before a success; -1: all
		takes    time.Duration // of the fake clock, per attempt
		minN     int
		maxN     int
		wantErr  []error
	}{
		{"no leader, at once", rpctypes.ErrNoLeader, -1, 0, 12, 25, []error{context.DeadlineExceeded, rpctypes.ErrNoLeader}},
		{"no answer within a share", context.DeadlineExceeded, -1, time.Second, 4, 5, []error{context.DeadlineExceeded}},
		{"permission denied", rpctypes.ErrPermissionDenied, -1, 0, 1, 1, []error{rpctypes.ErrPermissionDenied}},
		{"success after two failures", rpctypes.ErrLeaderChanged, 2, 0, 3, 3, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clock := &fakeClock{now: time.Now()}
			r := &retrier{timeout: 5 * time.Second, clock: clock}
			n := 0
			err := r.do(r.newCall(context.Background()), func(context.Context) error {
				n++
				clock.now = clock.now.Add(tc.takes)
				if tc.failures >= 0 && n > tc.failures {
					return nil
				}
				return tc.fail
			})
			if n < tc.minN || n > tc.maxN {
				t.Errorf("%d attempts, want %d to %d", n, tc.minN, tc.maxN)
			}
			for _, want := range tc.wantErr {
				if !errors.Is(err, want) {
					t.Errorf("error %v does not wrap %v", err, want)
				}
			}
			if tc.wantErr == nil && err != nil {
				t.Errorf("error %v, want nil", err)
			}
			if got := r.retries.Load(); got != int64(len(clock.sleeps)) && got != int64(len(clock.sleeps)-1) {
				t.Errorf("%d retries counted after %d backoffs", got, len(clock.sleeps))
			}
			for i, d := range clock.sleeps {
				b := min(firstBackoff<<i, maxBackoff)
				if i < len(clock.sleeps)-1 && (d < b/2 || d > b) {
					t.Errorf("backoff %d: %v, want %v to %v", i, d, b/2, b)
				}
			}
		})
	}
}

// TestRetryValue: the value is the successful attempt's.
func TestRetryValue(t *testing.T) {
	r := &retrier{timeout: time.Second, clock: &fakeClock{now: time.Now()}}
	n := 0
	v, err := retryValue(r, r.newCall(context.Background()), func(context.Context) (int, error) {
		n++
		if n < 3 {
			return n, rpctypes.ErrNoLeader
		}
		return n, nil
	})
	if v != 3 || err != nil {
		t.Errorf("retryValue = %d, %v; want 3, nil", v, err)
	}
}
