// Package naive is the baseline etcdstore is measured against: sessions kept
// the way github.com/alexedwards/scs/etcdstore keeps them, one new lease per
// Commit. The benchmarks and the load test use it.
package naive

import (
	"context"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Store keeps sessions the way github.com/alexedwards/scs/etcdstore
// does, one new lease per Commit with a TTL equal to the session's
// remaining lifetime and the raw session data as the value, made correct
// enough to measure: a failed grant is returned as an error, the TTL
// rounds up to whole seconds, an expiry already past deletes the
// session, and the plain methods work. Like the original it never revokes
// the lease a rewritten session leaves, and Find trusts etcd to have
// removed expired keys. It is safe for concurrent use by multiple goroutines.
type Store struct {
	Client *clientv3.Client
	Prefix string
}

func (s *Store) Find(token string) ([]byte, bool, error) {
	return s.FindCtx(context.Background(), token)
}

func (s *Store) FindCtx(ctx context.Context, token string) ([]byte, bool, error) {
	resp, err := s.Client.Get(ctx, s.Prefix+token)
	if err != nil {
		return nil, false, fmt.Errorf("naive: find: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return nil, false, nil
	}
	return resp.Kvs[0].Value, true, nil
}

func (s *Store) Commit(token string, b []byte, expiry time.Time) error {
	return s.CommitCtx(context.Background(), token, b, expiry)
}

func (s *Store) CommitCtx(ctx context.Context, token string, b []byte, expiry time.Time) error {
	d := time.Until(expiry)
	if d <= 0 {
		return s.DeleteCtx(ctx, token)
	}
	ttl := int64((d + time.Second - 1) / time.Second)
	lease, err := s.Client.Grant(ctx, ttl)
	if err != nil {
		return fmt.Errorf("naive: grant lease of %d s: %w", ttl, err)
	}
	if _, err := s.Client.Put(ctx, s.Prefix+token, string(b), clientv3.WithLease(lease.ID)); err != nil {
		return fmt.Errorf("naive: commit: %w", err)
	}
	return nil
}

func (s *Store) Delete(token string) error {
	return s.DeleteCtx(context.Background(), token)
}

func (s *Store) DeleteCtx(ctx context.Context, token string) error {
	if _, err := s.Client.Delete(ctx, s.Prefix+token); err != nil {
		return fmt.Errorf("naive: delete: %w", err)
	}
	return nil
}
