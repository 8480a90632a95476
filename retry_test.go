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

// TestRetryStopsAtDeadline: a call whose attempts keep failing in a
// retryable way ends at its deadline with an error that wraps both the
// deadline and the last failure; one that fails otherwise is not tried
// again.
func TestRetryStopsAtDeadline(t *testing.T) {
	t.Parallel()
	s := &EtcdStore{timeout: 300 * time.Millisecond}
	var n int
	err := s.retry(context.Background(), func(context.Context) error { n++; return rpctypes.ErrNoLeader })
	if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, rpctypes.ErrNoLeader) || n < 2 {
		t.Errorf("after %d attempts: %v; want several, and an error wrapping the deadline and the last failure", n, err)
	}
	if got := s.stats.retries.Load(); got != int64(n-1) {
		t.Errorf("%d retries counted after %d attempts", got, n)
	}

	n = 0
	err = s.retry(context.Background(), func(context.Context) error { n++; return rpctypes.ErrPermissionDenied })
	if n != 1 || !errors.Is(err, rpctypes.ErrPermissionDenied) {
		t.Errorf("permission denied: %d attempts, %v; want 1 and the error as is", n, err)
	}
}
