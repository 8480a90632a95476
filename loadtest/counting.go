package main

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/alexedwards/scs/v2"
)

// countingStore passes every call on to its store and counts the finds
// that hit a session, those that missed, and the commits, so the load
// test can check that its requests carried live sessions. The counting
// costs an atomic add per call, the same for every store.
type countingStore struct {
	store                 scs.CtxStore
	hits, misses, commits atomic.Int64
}

func (s *countingStore) Find(token string) ([]byte, bool, error) {
	return s.FindCtx(context.Background(), token)
}

func (s *countingStore) FindCtx(ctx context.Context, token string) ([]byte, bool, error) {
	b, found, err := s.store.FindCtx(ctx, token)
	if err == nil {
		if found {
			s.hits.Add(1)
		} else {
			s.misses.Add(1)
		}
	}
	return b, found, err
}

func (s *countingStore) Commit(token string, b []byte, expiry time.Time) error {
	return s.CommitCtx(context.Background(), token, b, expiry)
}

func (s *countingStore) CommitCtx(ctx context.Context, token string, b []byte, expiry time.Time) error {
	s.commits.Add(1)
	return s.store.CommitCtx(ctx, token, b, expiry)
}

func (s *countingStore) Delete(token string) error {
	return s.DeleteCtx(context.Background(), token)
}

func (s *countingStore) DeleteCtx(ctx context.Context, token string) error {
	return s.store.DeleteCtx(ctx, token)
}

// reset zeroes the counts.
func (s *countingStore) reset() {
	s.hits.Store(0)
	s.misses.Store(0)
	s.commits.Store(0)
}
