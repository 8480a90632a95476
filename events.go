package etcdstore

import (
	"context"
	"fmt"
	"iter"
	"time"
)

// Session events.
//
// Events reads the store's range at a revision, then watches it from the
// next (one etcd watch per stream), and tells from each write, against
// the sessions it tracks (their token, expiry, principal and the revision
// of their last write: the stream holds every live session's, as the read
// cache does), what happened to the session: a session where there was
// none is created; a tombstone over a live session ends it, for
// the reason the tombstone carries; a session over a live one changes it.
// etcd delivers a range's writes in revision order and resumes a watch from
// any revision it has not compacted, on any member (api/v3/mvccpb,
// clientv3.Watcher), so a consumer that keeps the Position of the last
// event it handled gets every later event once, across its own restarts,
// member failures and leader changes. A position compacted away gets an
// explicit EventResync, never a silent gap.
//
// Expiries are not writes: etcd removes an expired session's key with its
// lease, up to a bucket width and more later (see Lease reuse). So the
// stream keeps the expiry of every live session and, when the earliest
// passes by its own clock, reads the due sessions' keys (one linearizable
// Txn of Gets for up to 128): a key that no write touched since the one
// the stream knows expired; one written since was extended or ended, and
// the watch delivers that write. No etcd write is made.

// EventKind is what happened to a session.
type EventKind uint8

const (
	// EventCreated: a session was written where there was none (or only a
	// tombstone, or a session that had expired).
	EventCreated EventKind = iota + 1
	// EventChanged: a live session was written again (WithChanges only).
	EventChanged
	// EventEnded: a live session was ended; Reason says how, At when.
	EventEnded
	// EventExpired: a session's expiry passed with no write since; At is
	// the expiry.
	EventExpired
	// EventResync: the stream starts, or its position was compacted away:
	// Live holds every live session as of Revision, and events follow from
	// there.
	EventResync
)

// String returns "created", "changed", "ended", "expired" or "resync".
func (k EventKind) String() string {
	switch k {
	case EventCreated:
		return "created"
	case EventChanged:
		return "changed"
	case EventEnded:
		return "ended"
	case EventExpired:
		return "expired"
	case EventResync:
		return "resync"
	}
	return fmt.Sprintf("EventKind(%d)", k)
}

// Event is one thing that happened to a session of the store, as Events
// delivers it. It carries no session data: with WithEncryption a consumer
// without the key gets the token, expiry and revision only.
type Event struct {
	Kind EventKind
	// Token is the store's token (a digest with HashTokenInStore; compare
	// StoreToken(sm, token)).
	Token string
	// Principal is the session's principal (WithPrincipal), when its data
	// names one and the store can open it; for EventEnded and
	// EventExpired, the principal it had.
	Principal string
	// Expiry is the session's expiry; zero for a value of the replaced
	// store, which has none.
	Expiry time.Time
	// Reason is why it ended (EventEnded): a plain delete of a live
	// session, by another client, is EndUnknown. EventExpired has
	// EndExpired.
	Reason EndReason
	// At is when it ended: the tombstone's time (EventEnded), or the
	// expiry (EventExpired).
	At time.Time
	// Revision is the etcd revision of the write; for EventExpired and
	// EventResync, the revision the stream had reached.
	Revision int64
	// Position is where to resume once this event is handled: pass it to
	// Events.
	Position Position
	// Live is, for EventResync, every live session as of Revision, as
	// EventCreated events.
	Live []Event
}

// Position is a point in a store's event stream: every write up to
// Revision was delivered, and the first Skip writes of the session keys at
// Revision+1 (a Txn writes several, at one revision); every expiry up to
// Expiry (and, at Expiry itself, up to Token, in token order) was
// delivered. The zero Position starts at the current revision.
type Position struct {
	Revision int64
	Skip     int
	Expiry   time.Time
	Token    string
}

// eventOptions are the options of one event stream.
type eventOptions struct {
	changes bool
}

// EventOption configures one event stream (Events).
type EventOption func(*eventOptions)

// WithChanges delivers EventChanged for every write of a live session, as
// well as the lifecycle: with SCS's IdleTimeout, one on every request.
func WithChanges() EventOption { return func(o *eventOptions) { o.changes = true } }

// eventRetry is how long a stream waits before it watches or reads again
// after a failure it outlives (no leader, a lost connection).
const eventRetry = 200 * time.Millisecond

// Events returns the store's session events after from, in order: the
// writes in revision order, each expiry when it passes by the stream's
// clock (time.Now, or the store's), within one read of etcd after it. It
// makes one watch, and reads only to start, on a compaction, and to
// confirm expiries: no write. With WithReadCache, a stream that starts
// without a position (or resyncs) while the cache is in sync takes the
// sessions from the cache's copy and follows the cache's watch instead of
// making its own, until that watch ends; it then watches for itself from
// where it is. The stream ends when ctx ends (the iterator
// then returns), when the consumer stops ranging, or on an error it cannot
// outlive, which it yields last: ErrClientClosed, a refused permission or
// login. It outlives member failures, leader changes and lost connections,
// resuming where it was. Each call makes a stream of its own; each stream
// may be ranged over once.
//
// Expiries are ordered among themselves (by expiry, then token), and each
// comes after its session's creation; an expiry that passed while the
// consumer was away comes as the stream starts, before the writes of
// other sessions it replays.
//
// What is not promised: a session that expired and was then written again
// (a request in flight that loaded it before its expiry commits it) within
// a moment of its expiry, or while the consumer was down, is reported as
// changed, not as expired and created; a session written already expired
// by a store whose clock is ahead is reported expired at once, out of
// expiry order, and may be missed by a consumer that restarts just then.
func (s *EtcdStore) Events(ctx context.Context, from Position, opts ...EventOption) iter.Seq2[Event, error] {
	mustContext(ctx, "Events")
	var o eventOptions
	for _, opt := range opts {
		opt(&o)
	}
	return func(yield func(Event, error) bool) {
		st := &eventStream{s: s, opts: o, yield: yield, pos: from}
		err := st.run(ctx)
		if err != nil && ctx.Err() == nil {
			yield(Event{}, fmt.Errorf("etcdstore: events: %w", err))
		}
	}
}
