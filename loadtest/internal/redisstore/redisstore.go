// Package redisstore is a minimal SCS session store on Redis, the
// baseline of etcdstore's load test: it does what SCS's goredisstore does,
// a SET with a millisecond expiry per commit, a GET per find and a DEL per
// delete, through github.com/redis/go-redis/v9.
package redisstore

import (
	"context"
	"errors"
	"time"

	"github.com/redis/go-redis/v9"
)

// Store keeps each session at Prefix+token, expiring when the session
// does. It is safe for concurrent use by multiple goroutines.
type Store struct {
	Client *redis.Client
	Prefix string
}

// Find returns the session's data, as FindCtx does with
// context.Background().
func (s *Store) Find(token string) ([]byte, bool, error) {
	return s.FindCtx(context.Background(), token)
}

// FindCtx returns the session's data with one GET, and false when Redis
// holds none (it expired, or never was).
func (s *Store) FindCtx(ctx context.Context, token string) ([]byte, bool, error) {
	b, err := s.Client.Get(ctx, s.Prefix+token).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	return b, true, nil
}

// Commit writes the session, as CommitCtx does with context.Background().
func (s *Store) Commit(token string, b []byte, expiry time.Time) error {
	return s.CommitCtx(context.Background(), token, b, expiry)
}

// CommitCtx writes the session with a time to live of the time until
// expiry, in milliseconds (SET ... PX).
func (s *Store) CommitCtx(ctx context.Context, token string, b []byte, expiry time.Time) error {
	ttl := time.Until(expiry)
	if ttl < time.Millisecond {
		return s.DeleteCtx(ctx, token)
	}
	return s.Client.Set(ctx, s.Prefix+token, b, ttl).Err()
}

// Delete removes the session, as DeleteCtx does with context.Background().
func (s *Store) Delete(token string) error {
	return s.DeleteCtx(context.Background(), token)
}

// DeleteCtx removes the session with one DEL.
func (s *Store) DeleteCtx(ctx context.Context, token string) error {
	return s.Client.Del(ctx, s.Prefix+token).Err()
}
