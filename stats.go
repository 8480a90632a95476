package etcdstore

import (
	"context"
	"errors"
	"sync/atomic"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
)

// Stats are counts of what a store has done since it was made, for
// operators: Stats returns them as database/sql's DB.Stats does. Counts
// only grow, except Leases and RememberedTokens, which are sizes now.
type Stats struct {
	Finds   int64 // calls of Find and FindCtx
	Commits int64 // calls of Commit and CommitCtx
	Deletes int64 // calls of Delete and DeleteCtx
	Alls    int64 // calls of All and AllCtx

	// TouchesSkipped counts commits that wrote nothing because they only
	// pushed an unchanged session's expiry back by less than the touch
	// interval (WithTouchInterval).
	TouchesSkipped int64
	// ResurrectionsRefused counts commits that wrote nothing because the
	// session had been deleted: the store saw it deleted, or the commit
	// found its tombstone. Requests in flight that a logout or a delete
	// elsewhere overtook.
	ResurrectionsRefused int64

	// CommitConflicts counts the times a commit found its session
	// changed since the store saw it (another request's commit of it
	// came first, or the store did not remember the token) and was made
	// again on the new revision: one more round trip each.
	CommitConflicts int64

	LeaseGrants int64 // leases granted
	// Leases is how many granted leases the store may still attach
	// sessions to: one per bucket of expiries in use.
	Leases int
	// RememberedTokens is how many tokens the store remembers now (see
	// WithRememberedTokens).
	RememberedTokens int

	// Retries counts etcd requests tried again after a failure that a
	// leader change or a lost connection explains.
	Retries int64
	// CacheReads counts the Finds and Alls that the read cache answered
	// (WithReadCache); CacheFallbacks those it could not, which read
	// from etcd: the cache was not in sync, or off on an old server.
	CacheReads, CacheFallbacks int64
	// Errors counts the calls that returned an error, by kind.
	Errors ErrorStats
}

// ErrorStats counts the calls of a store that returned an error, each
// under one kind, the first of this list that the error matches.
type ErrorStats struct {
	NoSpace  int64 // etcd out of space (rpctypes.ErrNoSpace)
	TooLarge int64 // a session too large for etcd (ErrValueTooLarge)
	// Auth counts refusals by etcd authentication: permission denied,
	// an invalid or expired token, failed authentication.
	Auth     int64
	Corrupt  int64 // a stored value that does not decode
	Canceled int64 // the caller's context was canceled, or the client closed
	Timeout  int64 // the call's deadline passed (context.DeadlineExceeded)
	Other    int64 // anything else, such as an invalid token or expiry
}

// stats holds the counters behind Stats.
type stats struct {
	finds, commits, deletes, alls atomic.Int64
	touchesSkipped, refused       atomic.Int64
	conflicts                     atomic.Int64
	retries                       atomic.Int64

	noSpace, tooLarge, auth, corrupt, canceled, timeout, other atomic.Int64
}

// errCorrupt marks the error of a stored value that does not decode.
var errCorrupt = errors.New("etcdstore: corrupt session value")

// failed counts err, if not nil, under its kind, and returns it.
func (c *stats) failed(err error) error {
	var n *atomic.Int64
	switch {
	case err == nil:
		return nil
	case errors.Is(err, rpctypes.ErrNoSpace):
		n = &c.noSpace
	case errors.Is(err, ErrValueTooLarge):
		n = &c.tooLarge
	case errors.Is(err, rpctypes.ErrPermissionDenied), errors.Is(err, rpctypes.ErrInvalidAuthToken),
		errors.Is(err, rpctypes.ErrAuthFailed), errors.Is(err, rpctypes.ErrUserEmpty):
		n = &c.auth
	case errors.Is(err, errCorrupt):
		n = &c.corrupt
	case errors.Is(err, context.Canceled):
		n = &c.canceled
	case errors.Is(err, context.DeadlineExceeded):
		n = &c.timeout
	default:
		n = &c.other
	}
	n.Add(1)
	return err
}

// Stats returns the store's counts. It is safe to call concurrently with
// every other method, and costs a lock on the lease table and one on the
// memory of tokens.
func (s *EtcdStore) Stats() Stats {
	c := &s.stats
	return Stats{
		Finds:                c.finds.Load(),
		Commits:              c.commits.Load(),
		Deletes:              c.deletes.Load(),
		Alls:                 c.alls.Load(),
		TouchesSkipped:       c.touchesSkipped.Load(),
		ResurrectionsRefused: c.refused.Load(),
		CommitConflicts:      c.conflicts.Load(),
		LeaseGrants:          s.leases.granted.Load(),
		Leases:               s.leases.len(s.now()),
		RememberedTokens:     s.memory.len(),
		Retries:              c.retries.Load(),
		CacheReads:           s.cacheHits(),
		CacheFallbacks:       s.cacheMisses(),
		Errors: ErrorStats{
			NoSpace:  c.noSpace.Load(),
			TooLarge: c.tooLarge.Load(),
			Auth:     c.auth.Load(),
			Corrupt:  c.corrupt.Load(),
			Canceled: c.canceled.Load(),
			Timeout:  c.timeout.Load(),
			Other:    c.other.Load(),
		},
	}
}

func (s *EtcdStore) cacheHits() int64 {
	if s.cache == nil {
		return 0
	}
	return s.cache.hits.Load()
}

func (s *EtcdStore) cacheMisses() int64 {
	if s.cache == nil {
		return 0
	}
	return s.cache.misses.Load()
}
