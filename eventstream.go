package etcdstore

import (
	"cmp"
	"container/heap"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// An event stream (Events): what it tracks, its watch or its share of the
// read cache's, and its expiries.

// tracked is what a stream knows of one stored session.
type tracked struct {
	token     string
	rev       int64 // mod revision of the write the stream saw last
	expiry    time.Time
	principal string
	reported  bool // expired, and delivered as such
	at        int  // its index in the expiry heap, or -1
}

// eventStream is one consumer's stream: the sessions it tracks, its
// position, and the consumer.
type eventStream struct {
	s     *EtcdStore
	opts  eventOptions
	yield func(Event, error) bool
	pos   Position
	live  map[string]*tracked
	// expiries orders the expiries of the tracked sessions not reported,
	// one entry a session.
	expiries expiryHeap
	// waiting, if not nil, is a due session whose key a write changed
	// after the one the stream saw: no expiry is delivered until the
	// watch brings that write (the session's tracked state changes), so
	// that the position's expiry never passes a write not yet delivered.
	waiting *tracked
	// feed, when not nil, is the stream's share of the read cache's watch
	// (WithReadCache), which it follows instead of a watch of its own.
	feed *cacheFeed
}

// setLive tracks t as its token's session, in place of what the stream
// tracked of it.
func (st *eventStream) setLive(t *tracked) {
	st.drop(t.token)
	st.live[t.token] = t
	if !t.expiry.IsZero() && !t.reported {
		heap.Push(&st.expiries, t)
	}
}

// drop stops tracking token's session.
func (st *eventStream) drop(token string) {
	if old := st.live[token]; old != nil {
		if old.at >= 0 {
			heap.Remove(&st.expiries, old.at)
		}
		delete(st.live, token)
	}
}

// reset tracks nothing.
func (st *eventStream) reset(size int) {
	st.live, st.expiries, st.waiting = make(map[string]*tracked, size), nil, nil
}

// errStopped ends a stream whose consumer stopped ranging.
var errStopped = errors.New("consumer stopped")

// errFeedEnded says the read cache's watch, which the stream followed,
// ended.
var errFeedEnded = errors.New("the read cache's watch ended")

// run delivers events until ctx ends, the consumer stops, or an error the
// stream cannot outlive.
func (st *eventStream) run(ctx context.Context) error {
	if err := clientErr(st.s.client); err != nil {
		return err
	}
	defer func() {
		if st.feed != nil {
			st.s.cache.leave(st.feed)
		}
	}()
	if err := st.start(ctx); err != nil {
		return st.outcome(err)
	}
	for ctx.Err() == nil {
		if err := clientErr(st.s.client); err != nil {
			return err
		}
		var err error
		if st.feed != nil {
			// Until the cache's watch ends, or a read fails; then a watch
			// of the stream's own, from where it is.
			err = st.follow(ctx)
			st.s.cache.leave(st.feed)
			st.feed = nil
			if errors.Is(err, errFeedEnded) {
				continue
			}
		} else {
			err = st.watch(ctx)
		}
		if restart(err) {
			if err = st.resync(ctx); err == nil {
				continue
			}
		}
		if fatal(err) {
			return st.outcome(err)
		}
		if st.s.calls.clock.Sleep(ctx, eventRetry) != nil {
			return nil
		}
	}
	return nil
}

// outcome is the error run returns for err: none when the consumer
// stopped or ctx ended.
func (st *eventStream) outcome(err error) error {
	if errors.Is(err, errStopped) || errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// fatal reports whether err ends a stream: the client closed, or etcd
// refused the user. Other errors (no leader, a lost connection, a
// deadline) are waited out.
func fatal(err error) bool {
	return errors.Is(err, errStopped) || errors.Is(err, ErrClientClosed) || errors.Is(err, context.Canceled) ||
		errors.Is(err, rpctypes.ErrPermissionDenied) || errors.Is(err, rpctypes.ErrUserEmpty) || errors.Is(err, rpctypes.ErrAuthFailed)
}

// restart reports whether err says the stream's position is gone from
// etcd's history: compacted away, or ahead of it (a cluster restored from
// an older backup). The stream then resyncs.
func restart(err error) bool {
	return errors.Is(err, rpctypes.ErrCompacted) || errors.Is(err, rpctypes.ErrFutureRev)
}

// start reads the sessions as of the stream's position: a zero position,
// or one gone from etcd's history, starts with a resync.
func (st *eventStream) start(ctx context.Context) error {
	for {
		var err error
		if st.pos.Revision == 0 {
			err = st.resync(ctx)
		} else if err = st.load(ctx, st.pos.Revision); restart(err) {
			err = st.resync(ctx)
		}
		if err == nil || fatal(err) || ctx.Err() != nil {
			return err
		}
		if err := st.s.calls.clock.Sleep(ctx, eventRetry); err != nil {
			return err
		}
	}
}

// loadAt reads the sessions stored at revision rev (0: now) and tracks
// them, and returns the revision read at.
func (st *eventStream) loadAt(ctx context.Context, rev int64) (int64, error) {
	s := st.s
	st.reset(0)
	return s.keys.listAt(ctx, s.client, s.calls, s.calls.newCall(ctx), rev, func(_ call, kvs []*mvccpb.KeyValue) error {
		for _, kv := range kvs {
			if !isTombstone(kv.Value) {
				st.setLive(st.track(kv))
			}
		}
		return nil
	})
}

// load tracks the sessions stored at the stream's position, rev; those
// whose expiry the position says was delivered are marked so.
func (st *eventStream) load(ctx context.Context, rev int64) error {
	if _, err := st.loadAt(ctx, rev); err != nil {
		return err
	}
	for _, t := range st.live {
		if !t.expiry.IsZero() && expiredBy(t.expiry, t.token, st.pos) {
			st.markReported(t)
		}
	}
	return nil
}

// resync tracks the sessions stored now and delivers them as one
// EventResync: the stream starts there. With the read cache in sync, it
// takes them from the cache's copy, with no request, and follows the
// cache's watch from there.
func (st *eventStream) resync(ctx context.Context) error {
	var rev int64
	joined := false
	if c := st.s.cache; c != nil {
		if st.feed != nil {
			c.leave(st.feed)
		}
		type stored struct {
			token string
			kv    storedKV
		}
		var copied []stored
		// Copied out under the cache's lock, decoded after it.
		st.feed, joined = c.join(st.s.calls.newCall(ctx), func(values map[string]storedKV, at int64) {
			rev, copied = at, make([]stored, 0, len(values))
			for token, kv := range values {
				if !isTombstone(kv.value) {
					copied = append(copied, stored{token, kv})
				}
			}
		})
		if joined {
			st.reset(len(copied))
			for _, e := range copied {
				st.setLive(st.trackValue(e.token, e.kv.value, e.kv.mod))
			}
		}
	}
	if !joined {
		var err error
		if rev, err = st.loadAt(ctx, 0); err != nil {
			return err
		}
	}
	now := st.s.now()
	st.pos = Position{Revision: rev, Expiry: now}
	var live []Event
	for _, t := range st.live {
		if !t.expiry.IsZero() && !now.Before(t.expiry) {
			st.markReported(t) // expired before the stream began
			continue
		}
		live = append(live, Event{Kind: EventCreated, Token: t.token, Principal: t.principal, Expiry: t.expiry, Revision: t.rev})
	}
	slices.SortFunc(live, func(a, b Event) int { return cmp.Compare(a.Token, b.Token) })
	st.s.stats.eventResyncs.Add(1)
	return st.deliver(Event{Kind: EventResync, Revision: rev, Live: live})
}

// track returns what the stream tracks of the stored session kv.
func (st *eventStream) track(kv *mvccpb.KeyValue) *tracked {
	return st.trackValue(st.s.keys.token(kv.Key), kv.Value, kv.ModRevision)
}

// trackValue returns what the stream tracks of token's session stored
// with value, written at revision mod.
func (st *eventStream) trackValue(token string, stored []byte, mod int64) *tracked {
	t := &tracked{token: token, rev: mod, at: -1}
	t.expiry, _ = envelopeExpiry(stored)
	if st.s.index != nil {
		if value, err := st.s.plain(st.s.keys.key(token), stored); err == nil {
			if _, _, data, err := decodeEnvelope(value); err == nil {
				t.principal, _ = st.s.index.decode(data)
			}
		}
	}
	return t
}

// deliver hands ev, at the stream's position, to the consumer.
func (st *eventStream) deliver(ev Event) error {
	ev.Position = st.pos
	st.s.stats.eventsDelivered.Add(1)
	if !st.yield(ev, nil) {
		return errStopped
	}
	return nil
}

// watch watches the range from the stream's position and delivers what it
// sees, and the expiries as they pass, until the watch fails or ctx ends.
func (st *eventStream) watch(ctx context.Context) error {
	s := st.s
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	skip := st.pos.Skip
	s.stats.eventWatches.Add(1)
	ch := s.client.Watch(wctx, s.keys.prefix, clientv3.WithRange(s.keys.end), clientv3.WithRev(st.pos.Revision+1))
	return drain(ctx, st, ch, ctx.Err, func(resp clientv3.WatchResponse) error {
		if resp.CompactRevision != 0 {
			return fmt.Errorf("watch from revision %d: %w", st.pos.Revision+1, rpctypes.ErrCompacted)
		}
		if err := resp.Err(); err != nil {
			return err
		}
		s.stats.eventLag.Store(max(0, resp.Header.Revision-st.pos.Revision))
		return st.handle(resp.Events, &skip)
	})
}

// follow follows the read cache's watch, through the stream's feed, and
// delivers what it sees, and the expiries as they pass, until the feed
// ends (errFeedEnded), a read fails, or ctx ends.
func (st *eventStream) follow(ctx context.Context) error {
	skip := 0
	ended := func() error { return errFeedEnded }
	return drain(ctx, st, st.feed.ch, ended, func(events []*clientv3.Event) error {
		return st.handle(events, &skip)
	})
}

// drain hands what ch brings to on, and delivers st's expiries as they
// pass, until on fails, ctx ends, or ch is closed: it then returns what
// closed returns.
func drain[T any](ctx context.Context, st *eventStream, ch <-chan T, closed func() error, on func(T) error) error {
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		if err := st.expire(ctx); err != nil {
			return err
		}
		timer.Reset(st.nextExpiry())
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-timer.C:
		case v, ok := <-ch:
			if !ok {
				return closed()
			}
			if err := on(v); err != nil {
				return err
			}
		}
	}
}

// handle delivers what the writes events, one watch response's, did, and
// moves the position past each. The first *skip writes of the revision
// after the position were delivered before the stream stopped: they are
// applied again, to what the stream tracks, without being delivered.
func (st *eventStream) handle(events []*clientv3.Event, skip *int) error {
	for i, ev := range events {
		if ev.Kv.ModRevision <= st.pos.Revision {
			continue // before the stream's position: a feed's first response may hold them
		}
		if ev.Kv.ModRevision == st.pos.Revision+1 && *skip > 0 {
			*skip--
			if err := st.apply(ev, false); err != nil {
				return err
			}
			continue
		}
		*skip = 0
		last := i == len(events)-1 || events[i+1].Kv.ModRevision != ev.Kv.ModRevision
		if last {
			st.pos.Revision, st.pos.Skip = ev.Kv.ModRevision, 0
		} else {
			st.pos.Revision, st.pos.Skip = ev.Kv.ModRevision-1, st.pos.Skip+1
		}
		if err := st.apply(ev, true); err != nil {
			return err
		}
	}
	return nil
}

// apply tells what the write ev did to its session, and, if announce,
// delivers it.
func (st *eventStream) apply(ev *clientv3.Event, announce bool) error {
	deliver := func(e Event) error {
		if !announce {
			return nil
		}
		return st.deliver(e)
	}
	token := st.s.keys.token(ev.Kv.Key)
	t := st.live[token]
	was := t != nil && !t.reported // a live session, as far as the stream knows
	rev := ev.Kv.ModRevision
	if ev.Type == clientv3.EventTypeDelete || isTombstone(ev.Kv.Value) {
		st.drop(token)
		if !was {
			return nil
		}
		reason, at := EndUnknown, st.s.now() // a plain delete, by another client
		if ev.Type != clientv3.EventTypeDelete {
			reason, at = tombstoneReason(ev.Kv.Value)
			if at.IsZero() {
				at = st.s.now() // a tombstone of an earlier release
			}
		}
		if !t.expiry.IsZero() && !at.Before(t.expiry) {
			// Its expiry came first (a lease's end, or an end of an
			// expired session), before the stream's clock confirmed it.
			return deliver(Event{Kind: EventExpired, Token: token, Principal: t.principal, Expiry: t.expiry, Reason: EndExpired, At: t.expiry, Revision: rev})
		}
		return deliver(Event{Kind: EventEnded, Token: token, Principal: t.principal, Expiry: t.expiry, Reason: reason, At: at, Revision: rev})
	}
	n := st.track(ev.Kv)
	st.setLive(n)
	switch {
	case !was:
		return deliver(Event{Kind: EventCreated, Token: token, Principal: n.principal, Expiry: n.expiry, Revision: rev})
	case st.opts.changes:
		return deliver(Event{Kind: EventChanged, Token: token, Principal: n.principal, Expiry: n.expiry, Revision: rev})
	}
	return nil
}
