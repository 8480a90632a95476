package etcdstore

import (
	"context"
	"errors"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
)

// Stats are counts of what a store has done since it was made, and how
// long its calls took, for operators: Stats returns them as database/sql's
// DB.Stats does. Counts only grow, except Leases and RememberedTokens,
// which are sizes now. The package etcdstoreprom exports them to
// Prometheus.
type Stats struct {
	Finds              int64 // calls of Find and FindCtx
	Commits            int64 // calls of Commit and CommitCtx
	Deletes            int64 // calls of Delete and DeleteCtx
	Alls               int64 // calls of All and AllCtx
	FindsByPrincipal   int64 // calls of FindByPrincipal
	DeletesByPrincipal int64 // calls of DeleteByPrincipal

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
	// CommitsShared counts commits acknowledged with the write of a later
	// commit of the same session: they arrived while another commit of
	// it by this store was in flight, and went with the others that
	// waited as one commit, of the data of the last to arrive (see
	// Concurrent commits of one session). The counts of what commits did
	// (TouchesSkipped, ResurrectionsRefused, CommitConflicts) count such
	// a shared commit once.
	CommitsShared int64
	// LimitRefused counts commits refused by the session limit
	// (WithSessionLimit's RefuseNew, ErrSessionLimit); LimitEnded the
	// sessions ended by it (EndOldest).
	LimitRefused, LimitEnded int64
	// EventsDelivered counts the session events the store's streams
	// (Events) delivered, EventResyncs their resyncs (a start without a
	// position, or a position compacted away), and EventLag is how many
	// revisions the last watch response a stream received was ahead of
	// the events it had delivered: the backlog a slow consumer leaves.
	EventsDelivered, EventResyncs, EventLag int64
	// CodecErrors counts the times the codec could not decode session
	// data the store needed to read (WithTouchInterval, WithPrincipal):
	// the data is written all the same, but its touches are not skipped
	// and no principal is indexed. Any means that WithCodec is not the
	// session manager's codec, or that something else writes under the
	// prefix.
	CodecErrors int64
	// DecryptFailures counts the stored sessions the store could not open
	// (WithEncryption): sealed under a key it was not given, or failing to
	// authenticate. Each read of one counts; the session is absent to it.
	// Any means a key was dropped too early, an app server lacks a key, or
	// something altered values under the prefix.
	DecryptFailures int64

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
	// CommitBatches counts the requests that carried several commits, and
	// BatchedCommits the commits they carried; ReadBatches and
	// BatchedReads the same of Finds (WithBatching). RefusedBatches counts
	// the batches of either kind that failed as a whole, whose calls were
	// made again alone.
	CommitBatches, BatchedCommits int64
	ReadBatches, BatchedReads     int64
	RefusedBatches                int64
	// CacheReads counts the Finds and Alls that the read cache answered
	// (WithReadCache); CacheFallbacks those it could not, which read
	// from etcd: the cache was not in sync. CacheOff is true once the
	// cache has turned itself off for good, on a server it cannot trust
	// (ReadCacheReady says which): its reads then go to etcd and are not
	// counted as fallbacks.
	CacheReads, CacheFallbacks int64
	CacheOff                   bool
	// Errors counts the calls that returned an error, by kind.
	Errors ErrorStats
	// Latency is how long the calls took, by method, errors included.
	Latency LatencyStats
}

// ErrorStats counts the calls of a store that returned an error, each
// under one kind, the first of this list that the error matches.
type ErrorStats struct {
	NoSpace  int64 // etcd out of space (rpctypes.ErrNoSpace)
	TooLarge int64 // a session too large for etcd (ErrValueTooLarge)
	// Auth counts refusals by etcd authentication: permission denied,
	// no user, a wrong password, auth not enabled, an auth revision
	// changed under the request, and a token etcd refuses (invalid or
	// expired). On etcd before 3.5, a token that expired makes every
	// request time out (see Authentication in the package
	// documentation); once the store has told that cause, two fifths
	// of WithTimeout into the first call that meets it, the calls that
	// time out count here, not as Timeout.
	Auth     int64
	Corrupt  int64 // a stored value that does not decode
	Canceled int64 // the caller's context was canceled, or the client closed
	Timeout  int64 // the call's deadline passed (context.DeadlineExceeded)
	Other    int64 // anything else, such as an invalid token or expiry
}

// LatencyBuckets are the upper bounds of the buckets of every Histogram:
// from half a millisecond, below a commit on a fast cluster, to 10 s, over
// the default WithTimeout.
var LatencyBuckets = [...]time.Duration{
	500 * time.Microsecond, time.Millisecond, 2500 * time.Microsecond,
	5 * time.Millisecond, 10 * time.Millisecond, 25 * time.Millisecond,
	50 * time.Millisecond, 100 * time.Millisecond, 250 * time.Millisecond,
	500 * time.Millisecond, time.Second, 2500 * time.Millisecond,
	5 * time.Second, 10 * time.Second,
}

// Histogram is the distribution of the durations of a method's calls.
type Histogram struct {
	Count uint64        // calls
	Sum   time.Duration // their durations, added up
	// Buckets[i] counts the calls that took at most LatencyBuckets[i];
	// the counts are cumulative, as Prometheus's are.
	Buckets [len(LatencyBuckets)]uint64
}

// LatencyStats holds a Histogram per method, both forms of each (Find
// and FindCtx) together.
type LatencyStats struct {
	Find, Commit, Delete, All, FindByPrincipal, DeleteByPrincipal Histogram
}

// stats holds the counters behind Stats. It is safe for concurrent use by
// multiple goroutines.
type stats struct {
	finds, commits, deletes, alls        atomic.Int64
	findsByPrincipal, deletesByPrincipal atomic.Int64
	touchesSkipped, refused, conflicts   atomic.Int64
	commitsShared                        atomic.Int64
	limitRefused, limitEnded             atomic.Int64
	eventsDelivered, eventResyncs        atomic.Int64
	eventLag                             atomic.Int64
	eventWatches                         atomic.Int64 // watches the streams made of their own, for tests
	codecErrors, decryptFailures         atomic.Int64
	noSpace, tooLarge, auth, corrupt     atomic.Int64
	canceled, timeout, other             atomic.Int64
	latency                              struct{ find, commit, delete, all, findByPrincipal, deleteByPrincipal histogram }
	// explain, if set, adds to a call's error what to fix (the store's
	// explain, errors.go), before it is counted.
	explain func(error) error
}

// histogram counts durations into LatencyBuckets, and those above.
type histogram struct {
	buckets [len(LatencyBuckets) + 1]atomic.Uint64 // not cumulative
	sum     atomic.Int64                           // nanoseconds
}

func (h *histogram) observe(d time.Duration) {
	i := 0
	for i < len(LatencyBuckets) && d > LatencyBuckets[i] {
		i++
	}
	h.buckets[i].Add(1)
	h.sum.Add(int64(d))
}

func (h *histogram) read() Histogram {
	var out Histogram
	var n uint64
	for i := range h.buckets {
		n += h.buckets[i].Load()
		if i < len(out.Buckets) {
			out.Buckets[i] = n
		}
	}
	out.Count, out.Sum = n, time.Duration(h.sum.Load())
	return out
}

// timing is one call of a method being timed: see begin.
type timing struct {
	c     *stats
	h     *histogram
	start time.Time
}

// begin counts a call of a method in n and starts timing it in h; the
// method defers end with its error:
//
//	defer s.stats.begin(&s.stats.finds, &s.stats.latency.find).end(&err)
func (c *stats) begin(n *atomic.Int64, h *histogram) timing {
	n.Add(1)
	return timing{c: c, h: h, start: time.Now()}
}

// end records the call's duration, and its error, if not nil, by kind,
// once explain has added what to fix to it.
func (t timing) end(err *error) {
	t.h.observe(time.Since(t.start))
	if *err != nil && t.c.explain != nil {
		*err = t.c.explain(*err)
	}
	t.c.failed(*err)
}

// failed counts err, if not nil, under its kind, and returns it.
func (c *stats) failed(err error) error {
	var n *atomic.Int64
	switch {
	case err == nil, errors.Is(err, ErrSessionLimit):
		// A refusal by the session limit is the store working as asked:
		// LimitRefused counts it.
		return err
	case errors.Is(err, rpctypes.ErrNoSpace):
		n = &c.noSpace
	case errors.Is(err, ErrValueTooLarge):
		n = &c.tooLarge
	case errors.Is(err, rpctypes.ErrPermissionDenied), errors.Is(err, rpctypes.ErrInvalidAuthToken),
		errors.Is(err, rpctypes.ErrAuthFailed), errors.Is(err, rpctypes.ErrUserEmpty),
		errors.Is(err, rpctypes.ErrAuthNotEnabled), errors.Is(err, rpctypes.ErrAuthOldRevision):
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

// Stats returns the store's counts and latencies. It is safe to call
// concurrently with every other method, and costs a lock on the lease
// table and one on the memory of tokens.
func (s *EtcdStore) Stats() Stats {
	c, l := s.stats, &s.stats.latency
	st := Stats{
		Finds:                c.finds.Load(),
		Commits:              c.commits.Load(),
		Deletes:              c.deletes.Load(),
		Alls:                 c.alls.Load(),
		FindsByPrincipal:     c.findsByPrincipal.Load(),
		DeletesByPrincipal:   c.deletesByPrincipal.Load(),
		TouchesSkipped:       c.touchesSkipped.Load(),
		ResurrectionsRefused: c.refused.Load(),
		CommitConflicts:      c.conflicts.Load(),
		CommitsShared:        c.commitsShared.Load(),
		LimitRefused:         c.limitRefused.Load(),
		LimitEnded:           c.limitEnded.Load(),
		EventsDelivered:      c.eventsDelivered.Load(),
		EventResyncs:         c.eventResyncs.Load(),
		EventLag:             c.eventLag.Load(),
		CodecErrors:          c.codecErrors.Load(),
		DecryptFailures:      c.decryptFailures.Load(),
		LeaseGrants:          s.leases.granted.Load(),
		Leases:               s.leases.len(s.now()),
		RememberedTokens:     s.tokens.len(),
		Retries:              s.calls.retries.Load(),
		Errors: ErrorStats{
			NoSpace:  c.noSpace.Load(),
			TooLarge: c.tooLarge.Load(),
			Auth:     c.auth.Load(),
			Corrupt:  c.corrupt.Load(),
			Canceled: c.canceled.Load(),
			Timeout:  c.timeout.Load(),
			Other:    c.other.Load(),
		},
		Latency: LatencyStats{
			Find:              l.find.read(),
			Commit:            l.commit.read(),
			Delete:            l.delete.read(),
			All:               l.all.read(),
			FindByPrincipal:   l.findByPrincipal.read(),
			DeleteByPrincipal: l.deleteByPrincipal.read(),
		},
	}
	if s.cache != nil {
		st.CacheReads, st.CacheFallbacks = s.cache.hits.Load(), s.cache.misses.Load()
		st.CacheOff = s.cache.off.Load() != nil
	}
	if b := s.batches; b != nil {
		st.CommitBatches, st.BatchedCommits = b.commits.counts.batches.Load(), b.commits.counts.calls.Load()
		st.ReadBatches, st.BatchedReads = b.reads.counts.batches.Load(), b.reads.counts.calls.Load()
		st.RefusedBatches = b.commits.counts.refused.Load() + b.reads.counts.refused.Load()
	}
	return st
}
