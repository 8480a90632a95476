package main

import (
	"context"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// naiveStore keeps sessions the way github.com/alexedwards/scs/etcdstore
// does, one new lease per Commit with a TTL equal to the session's
// remaining lifetime and the raw session data as the value, made correct
// enough to measure: a failed grant is returned as an error, the TTL
// rounds up to whole seconds, an expiry already past deletes the
// session, and the plain methods work. Like the original it never revokes
// the lease a rewritten session leaves, and Find trusts etcd to have
// removed expired keys. It is the baseline of the load test.
type naiveStore struct {
	client *clientv3.Client
	prefix string
}

func (s *naiveStore) Find(token string) ([]byte, bool, error) {
	return s.FindCtx(context.Background(), token)
}

func (s *naiveStore) FindCtx(ctx context.Context, token string) ([]byte, bool, error) {
	resp, err := s.client.Get(ctx, s.prefix+token)
	if err != nil {
		return nil, false, fmt.Errorf("naive: find: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return nil, false, nil
	}
	return resp.Kvs[0].Value, true, nil
}

func (s *naiveStore) Commit(token string, b []byte, expiry time.Time) error {
	return s.CommitCtx(context.Background(), token, b, expiry)
}

func (s *naiveStore) CommitCtx(ctx context.Context, token string, b []byte, expiry time.Time) error {
	d := time.Until(expiry)
	if d <= 0 {
		return s.DeleteCtx(ctx, token)
	}
	ttl := int64((d + time.Second - 1) / time.Second)
	lease, err := s.client.Grant(ctx, ttl)
	if err != nil {
		return fmt.Errorf("naive: grant lease of %d s: %w", ttl, err)
	}
	if _, err := s.client.Put(ctx, s.prefix+token, string(b), clientv3.WithLease(lease.ID)); err != nil {
		return fmt.Errorf("naive: commit: %w", err)
	}
	return nil
}

func (s *naiveStore) Delete(token string) error {
	return s.DeleteCtx(context.Background(), token)
}

func (s *naiveStore) DeleteCtx(ctx context.Context, token string) error {
	if _, err := s.client.Delete(ctx, s.prefix+token); err != nil {
		return fmt.Errorf("naive: delete: %w", err)
	}
	return nil
}
