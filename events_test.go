package etcdstore

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/etcdstore/etcdstore/internal/etcdtest"
)

// Session events (events.go), against real etcd.

// eventTimeout bounds the wait for one event.
const eventTimeout = 15 * time.Second

// stream runs s.Events from from in a goroutine and returns its events,
// and a function that stops it and waits for it to end.
func stream(t *testing.T, s *EtcdStore, from Position, opts ...EventOption) (<-chan Event, func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan Event, 1024)
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer close(ch)
		for ev, err := range s.Events(ctx, from, opts...) {
			if err != nil {
				t.Errorf("events: %v", err)
				return
			}
			select {
			case ch <- ev:
			case <-ctx.Done():
				return
			}
		}
	}()
	stop := func() { cancel(); <-done }
	t.Cleanup(stop)
	return ch, stop
}

// next returns the next event of ch, failing the test after eventTimeout.
func next(t *testing.T, ch <-chan Event) Event {
	t.Helper()
	select {
	case ev, ok := <-ch:
		if !ok {
			t.Fatal("the event stream ended")
		}
		return ev
	case <-time.After(eventTimeout):
		t.Fatal("no event within", eventTimeout)
	}
	return Event{}
}

// expect reads the next event of ch and checks its kind, token and, for
// EventEnded, reason.
func expect(t *testing.T, ch <-chan Event, kind EventKind, token string, reason EndReason) Event {
	t.Helper()
	ev := next(t, ch)
	if ev.Kind != kind || ev.Token != token || (kind == EventEnded && ev.Reason != reason) {
		t.Fatalf("event %v %s (%v), want %v %s (%v)", ev.Kind, ev.Token, ev.Reason, kind, token, reason)
	}
	return ev
}

// TestEventsLifecycle: each way a session begins and ends, in order, with
// its principal, reason and revision; an expiry when it passes, and none
// for a session a commit extended.
func TestEventsLifecycle(t *testing.T) {
	t.Parallel()
	for _, cached := range []bool{false, true} {
		t.Run(fmt.Sprint("cache=", cached), func(t *testing.T) {
			t.Parallel()
			testEventsLifecycle(t, cached)
		})
	}
}

// testEventsLifecycle is TestEventsLifecycle, with the read cache on if
// cached: the stream then follows the cache's watch and makes none of its
// own.
func testEventsLifecycle(t *testing.T, cached bool) {
	opts := []Option{WithPrincipal("user"), WithSessionLimit(1, EndOldest)}
	var s *EtcdStore
	if cached {
		s = cachedStore(t, etcdtest.Start(t).Client(t), opts...)
	} else {
		s, _ = newStore(t, opts...)
	}
	ctx := ctxFor(t)
	if err := s.CommitCtx(ctx, "before", userData(t, "zoe", "x"), time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	ch, _ := stream(t, s, Position{})
	if ev := next(t, ch); ev.Kind != EventResync || len(ev.Live) != 1 || ev.Live[0].Token != "before" || ev.Live[0].Principal != "zoe" {
		t.Fatalf("first event %+v, want a resync with the session before", ev)
	}
	exp := time.Now().Add(time.Hour)
	commit := func(token, user string, expiry time.Time) {
		t.Helper()
		if err := s.CommitCtx(ctx, token, userData(t, user, token), expiry); err != nil {
			t.Fatal(err)
		}
	}
	commit("a", "ann", exp)
	if ev := expect(t, ch, EventCreated, "a", 0); ev.Principal != "ann" || !ev.Expiry.Equal(exp) || ev.Revision == 0 {
		t.Fatalf("created %+v", ev)
	}
	commit("a", "ann", exp.Add(time.Second)) // a change: not delivered without WithChanges
	commit("b", "ann", exp)                  // the limit ends a, in the same Txn
	expect(t, ch, EventCreated, "b", 0)
	expect(t, ch, EventEnded, "a", EndSessionLimit)
	if err := s.DeleteCtx(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	expect(t, ch, EventEnded, "b", EndLogout)
	commit("c", "cyd", exp)
	expect(t, ch, EventCreated, "c", 0)
	if _, err := s.DeleteByPrincipal(ctx, "cyd"); err != nil {
		t.Fatal(err)
	}
	expect(t, ch, EventEnded, "c", EndLogoutEverywhere)

	// Expiries: d expires; e is extended before it would.
	soon := time.Now().Add(3 * time.Second)
	commit("d", "dan", soon)
	commit("e", "eve", soon)
	expect(t, ch, EventCreated, "d", 0)
	expect(t, ch, EventCreated, "e", 0)
	commit("e", "eve", exp)
	if !time.Now().Before(soon) {
		t.Fatal("e was extended after its expiry")
	}
	ev := expect(t, ch, EventExpired, "d", EndExpired)
	late := time.Since(ev.At)
	t.Logf("expiry delivered %v after it", late)
	if !ev.At.Equal(soon) || late < 0 || late > 2*time.Second {
		t.Fatalf("expired at %v, %v after the expiry %v", ev.At, late, soon)
	}
	commit("f", "fay", exp) // a marker: nothing came for e before it
	expect(t, ch, EventCreated, "f", 0)
	if st := s.Stats(); st.EventsDelivered < 10 || st.EventResyncs != 1 {
		t.Errorf("Stats: EventsDelivered %d, EventResyncs %d", st.EventsDelivered, st.EventResyncs)
	}
	if n := s.stats.eventWatches.Load(); cached != (n == 0) {
		t.Errorf("the stream made %d watches of its own, with the read cache %v", n, cached)
	}
}

// TestEventsChanges: WithChanges delivers each write of a live session.
func TestEventsChanges(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t)
	ch, _ := stream(t, s, Position{}, WithChanges())
	next(t, ch) // the resync
	ctx := ctxFor(t)
	for i := range 3 {
		if err := s.CommitCtx(ctx, "a", []byte(fmt.Sprint(i)), time.Now().Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
	}
	expect(t, ch, EventCreated, "a", 0)
	expect(t, ch, EventChanged, "a", 0)
	expect(t, ch, EventChanged, "a", 0)
}

// TestEventsResume: a consumer that stops after any event and resumes
// from its Position gets every later event once, the writes in order,
// including the rest of a revision that ended several sessions at once,
// and the expiries in expiry order.
func TestEventsResume(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t, WithPrincipal("user"))
	later := skewable(s)
	ctx := ctxFor(t)
	ch, stop := stream(t, s, Position{})
	start := next(t, ch).Position
	stop()
	// The writes, made while no one watches: 3 sessions of ann, ended in
	// one Txn; 2 that expire; 1 logout.
	now := time.Now()
	var want []string
	for _, tok := range []string{"a1", "a2", "a3"} {
		if err := s.CommitCtx(ctx, tok, userData(t, "ann", tok), now.Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
		want = append(want, "created "+tok)
	}
	if n, err := s.DeleteByPrincipal(ctx, "ann"); err != nil || n != 3 {
		t.Fatalf("DeleteByPrincipal = %d, %v", n, err)
	}
	want = append(want, "ended a1", "ended a2", "ended a3")
	for _, tok := range []string{"x1", "x2"} {
		if err := s.CommitCtx(ctx, tok, userData(t, "xi", tok), now.Add(time.Minute)); err != nil {
			t.Fatal(err)
		}
		want = append(want, "created "+tok)
	}
	if err := s.CommitCtx(ctx, "z", userData(t, "zed", "z"), now.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteCtx(ctx, "z"); err != nil {
		t.Fatal(err)
	}
	want = append(want, "created z", "ended z", "expired x1", "expired x2")
	later(2 * time.Minute) // past x1's and x2's expiry, as no stream runs

	// Stop after each event in turn, resume from its position.
	for cut := range len(want) {
		var got []string
		from := start
		for part := 0; len(got) < len(want) && part < 2; part++ {
			ch, stop := stream(t, s, from)
			for len(got) < len(want) && (part == 1 || len(got) <= cut) {
				ev := next(t, ch)
				got = append(got, ev.Kind.String()+" "+ev.Token)
				from = ev.Position
			}
			stop()
		}
		// Writes in the order made; each expiry once, after its session's
		// creation: a consumer that starts after an expiry passed gets it
		// at once, before writes of other sessions it replays.
		writes := func(evs []string) []string {
			return slices.DeleteFunc(slices.Clone(evs), func(e string) bool { return strings.HasPrefix(e, "expired") })
		}
		expiries := func(evs []string) []string {
			return slices.DeleteFunc(slices.Clone(evs), func(e string) bool { return !strings.HasPrefix(e, "expired") })
		}
		if !slices.Equal(writes(got), writes(want)) || !slices.Equal(expiries(got), expiries(want)) {
			t.Fatalf("stopped after event %d and resumed: got %v, want %v", cut, got, want)
		}
		for i, e := range got {
			if tok, ok := strings.CutPrefix(e, "expired "); ok && !slices.Contains(got[:i], "created "+tok) {
				t.Fatalf("stopped after event %d and resumed: %s before its creation: %v", cut, e, got)
			}
		}
	}
}

// TestEventsCompacted: a position compacted away gets a resync with the
// live sessions, then the events after it.
func TestEventsCompacted(t *testing.T) {
	t.Parallel()
	s, c := newOwnStore(t)
	ctx := ctxFor(t)
	ch, stop := stream(t, s, Position{})
	from := next(t, ch).Position
	stop()
	for _, tok := range []string{"a", "b", "c"} {
		if err := s.CommitCtx(ctx, tok, []byte(tok), time.Now().Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.DeleteCtx(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Compact(ctx, etcdtest.Revision(t, c)); err != nil {
		t.Fatal(err)
	}
	ch, _ = stream(t, s, from)
	ev := next(t, ch)
	var live []string
	for _, l := range ev.Live {
		live = append(live, l.Token)
	}
	if ev.Kind != EventResync || !slices.Equal(live, []string{"a", "c"}) {
		t.Fatalf("after a compaction: %v with %v, want a resync with [a c]", ev.Kind, live)
	}
	if err := s.DeleteCtx(ctx, "c"); err != nil {
		t.Fatal(err)
	}
	expect(t, ch, EventEnded, "c", EndLogout)
	if st := s.Stats(); st.EventResyncs != 2 {
		t.Errorf("EventResyncs = %d, want 2", st.EventResyncs)
	}
}

// TestEventsThroughFailures: on a three-member cluster, one writer creates
// and logs out sessions while each member in turn is killed and restarted
// (the one the watch is on among them, and the leader), then the leader
// stopped; the consumer, restarted twice from its saved position, gets
// every write's event once, in the order made.
func TestEventsThroughFailures(t *testing.T) {
	t.Parallel()
	for _, cached := range []bool{false, true} {
		t.Run(fmt.Sprint("cache=", cached), func(t *testing.T) {
			t.Parallel()
			testEventsThroughFailures(t, cached)
		})
	}
}

// testEventsThroughFailures is TestEventsThroughFailures, with the read
// cache on if cached: the stream follows the cache's watch until a
// failure ends it, then watches for itself.
func testEventsThroughFailures(t *testing.T, cached bool) {
	cl := etcdtest.StartCluster(t, 3)
	c := cl.Client(t)
	s := NewWithPrefix(c, testPrefix(t))
	if cached {
		s = cachedStore(t, c)
	}
	ch, stop := stream(t, s, Position{})
	pos := next(t, ch).Position
	const ops = 120
	var want []string
	writes := make(chan string, 2*ops)
	// Each write has its own 30 s: kills and restarts on a loaded machine
	// add up to more than that for the whole run.
	within := func(do func(context.Context) error) error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		return do(ctx)
	}
	go func() {
		defer close(writes)
		for i := range ops {
			tok := fmt.Sprint("t", i)
			if err := within(func(ctx context.Context) error {
				return s.CommitCtx(ctx, tok, []byte("x"), time.Now().Add(time.Hour))
			}); err != nil {
				t.Errorf("commit %s: %v", tok, err)
				return
			}
			writes <- "created " + tok
			if i%2 == 0 {
				if err := within(func(ctx context.Context) error { return s.DeleteCtx(ctx, tok) }); err != nil {
					t.Errorf("delete %s: %v", tok, err)
					return
				}
				writes <- "ended " + tok
			}
			// Each member is killed and restarted in turn, so the one the
			// stream's watch is on dies, and so does the leader; at the end
			// the leader hands over gracefully.
			switch i {
			case 30, 60, 90:
				cl.Kill(i/30 - 1)
			case 45, 75, 105:
				cl.Restart(i/30 - 1)
			case 110:
				cl.Stop(cl.Leader())
			}
		}
	}()
	var got []string
	for w := range writes {
		want = append(want, w)
		// The consumer restarts from its position twice on the way.
		if len(want) == 40 || len(want) == 100 {
			for len(got) < len(want)-1 {
				ev := next(t, ch)
				got = append(got, ev.Kind.String()+" "+ev.Token)
				pos = ev.Position
			}
			stop()
			ch, stop = stream(t, s, pos)
		}
	}
	for len(got) < len(want) {
		ev := next(t, ch)
		got = append(got, ev.Kind.String()+" "+ev.Token)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("events differ from the writes:\ngot  %v\nwant %v", got, want)
	}
	t.Logf("watches of the streams' own: %d", s.stats.eventWatches.Load())
}

// TestEventsResumeMidRevision: a consumer that stops in the middle of a
// revision (a login that ends another session: Position.Skip > 0) and
// resumes gets the rest of the revision, and what the writes it had
// handled did is tracked: the logout of the session it saw created comes.
// Before the skipped writes were applied on resume, that logout was lost.
func TestEventsResumeMidRevision(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t, WithPrincipal("user"), WithSessionLimit(1, EndOldest))
	ctx := ctxFor(t)
	exp := time.Now().Add(time.Hour)
	if err := s.CommitCtx(ctx, "b", userData(t, "ann", "b"), exp); err != nil {
		t.Fatal(err)
	}
	ch, stop := stream(t, s, Position{})
	next(t, ch) // resync with b
	// One Txn: put a, tombstone b (EndSessionLimit).
	if err := s.CommitCtx(ctx, "a", userData(t, "ann", "a"), exp); err != nil {
		t.Fatal(err)
	}
	ev := expect(t, ch, EventCreated, "a", 0)
	t.Logf("position after 'created a': %+v", ev.Position)
	stop()
	ch, _ = stream(t, s, ev.Position)
	expect(t, ch, EventEnded, "b", EndSessionLimit)
	if err := s.DeleteCtx(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if err := s.CommitCtx(ctx, "m", userData(t, "mo", "m"), exp); err != nil { // a marker
		t.Fatal(err)
	}
	ev = next(t, ch)
	if ev.Kind != EventEnded || ev.Token != "a" {
		t.Fatalf("after the logout of a: %v %s, want ended a (the logout was lost)", ev.Kind, ev.Token)
	}
}

// TestEventsExpiryWaitsForWrites: two expiries due at once when a
// consumer resumes: s was logged out before its expiry, after the
// position; t expired. No expiry is delivered before the watch brings the
// write to s, so the position's expiry never passes it: a consumer that
// stops after its first event and resumes still gets "ended s". Before,
// "expired t" came first and the logout of s was lost.
func TestEventsExpiryWaitsForWrites(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t)
	later := skewable(s)
	ctx := ctxFor(t)
	now := time.Now()
	es, et := now.Add(time.Minute), now.Add(time.Minute+100*time.Millisecond)
	ch, stop := stream(t, s, Position{})
	next(t, ch)
	if err := s.CommitCtx(ctx, "s", []byte("s"), es); err != nil {
		t.Fatal(err)
	}
	if err := s.CommitCtx(ctx, "t", []byte("t"), et); err != nil {
		t.Fatal(err)
	}
	expect(t, ch, EventCreated, "s", 0)
	pos := expect(t, ch, EventCreated, "t", 0).Position
	stop()
	if err := s.DeleteCtx(ctx, "s"); err != nil { // a logout, before its expiry
		t.Fatal(err)
	}
	later(2 * time.Minute) // past both expiries, as no stream runs
	var got []string
	ch, stop = stream(t, s, pos)
	ev := next(t, ch)
	got = append(got, ev.Kind.String()+" "+ev.Token)
	stop() // the consumer stops after its first event
	ch, _ = stream(t, s, ev.Position)
	if err := s.CommitCtx(ctx, "m", []byte("m"), now.Add(time.Hour)); err != nil { // a marker
		t.Fatal(err)
	}
	for {
		ev := next(t, ch)
		got = append(got, ev.Kind.String()+" "+ev.Token)
		if ev.Token == "m" {
			break
		}
	}
	t.Logf("events: %v", got)
	for _, g := range got {
		if g == "ended s" {
			return
		}
	}
	t.Fatalf("the logout of s was never delivered: %v", got)
}

// TestEventsLogoutSeenLate: a consumer that was away while a session was
// logged out, its tombstone's lease ended (its revoke stood for by a
// delete) and its expiry passed gets "ended" with the logout's reason, not
// "expired": a key gone since the write the stream saw is a write to wait
// for, not a confirmed expiry.
func TestEventsLogoutSeenLate(t *testing.T) {
	t.Parallel()
	s, c := newStore(t)
	later := skewable(s)
	ctx := ctxFor(t)
	es := time.Now().Add(time.Minute)
	ch, stop := stream(t, s, Position{})
	next(t, ch)
	if err := s.CommitCtx(ctx, "s", []byte("s"), es); err != nil {
		t.Fatal(err)
	}
	pos := expect(t, ch, EventCreated, "s", 0).Position
	stop()
	if err := s.DeleteCtx(ctx, "s"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Delete(ctx, s.keys.key("s")); err != nil { // the tombstone's lease ends
		t.Fatal(err)
	}
	later(2 * time.Minute) // past the expiry, as no stream runs
	ch, _ = stream(t, s, pos)
	ev := next(t, ch)
	if ev.Kind != EventEnded || ev.Reason != EndLogout {
		t.Fatalf("first event after resume: %v %s (%v), want ended s (logout)", ev.Kind, ev.Token, ev.Reason)
	}
}

// TestEventsOutliveAnOutage: a stream outlives etcd being unreachable for
// longer than the store's timeout, on a watch of its own and following the
// read cache's: the read that confirms an expiry fails meanwhile, and the
// expiry comes once etcd is back. Before, a stream following the cache
// ended with that read's error.
func TestEventsOutliveAnOutage(t *testing.T) {
	t.Parallel()
	for _, cached := range []bool{false, true} {
		t.Run(fmt.Sprint("cache=", cached), func(t *testing.T) {
			t.Parallel()
			srv := etcdtest.Start(t, etcdtest.Own())
			c := srv.Client(t)
			var s *EtcdStore
			if cached {
				s = cachedStore(t, c, WithTimeout(time.Second))
			} else {
				s = NewWithPrefix(c, testPrefix(t), WithTimeout(time.Second))
			}
			sctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			type item struct {
				ev  Event
				err error
			}
			ch := make(chan item, 100)
			go func() {
				defer close(ch)
				for ev, err := range s.Events(sctx, Position{}) {
					ch <- item{ev, err}
				}
			}()
			if it := <-ch; it.err != nil || it.ev.Kind != EventResync {
				t.Fatalf("first: %+v", it)
			}
			// x is committed once the stream runs, so that it tracks x
			// whenever its resync came, and etcd stops once the stream saw
			// it: x's expiry falls in the outage, which lasts beyond it
			// longer than the store's timeout.
			expiry := time.Now().Add(3 * time.Second)
			if err := s.CommitCtx(ctxFor(t), "x", []byte("x"), expiry); err != nil {
				t.Fatal(err)
			}
			if it := <-ch; it.err != nil || it.ev.Kind != EventCreated || it.ev.Token != "x" {
				t.Fatalf("second: %+v", it)
			}
			if !time.Now().Before(expiry) {
				t.Fatal("the stream saw x after its expiry")
			}
			srv.Stop() // it refuses new requests at once, and closes in seconds
			time.Sleep(time.Until(expiry.Add(2500 * time.Millisecond)))
			srv.Start()
			for {
				select {
				case it, ok := <-ch:
					if !ok {
						t.Fatal("the stream ended")
					}
					if it.err != nil {
						t.Fatalf("the stream ended with: %v", it.err)
					}
					t.Logf("event %v %s", it.ev.Kind, it.ev.Token)
					if it.ev.Kind == EventExpired {
						return
					}
				case <-time.After(30 * time.Second): // gRPC reconnects with a backoff of seconds
					t.Fatal("no expiry")
				}
			}
		})
	}
}

// skewable sets s's clock to time.Now moved by an offset, and returns the
// function that sets the offset: a test moves the store past an expiry
// at once, rather than sleeping until it, which a loaded machine turns
// into a race with the steps that must come before it.
func skewable(s *EtcdStore) (later func(time.Duration)) {
	var skew atomic.Int64
	s.now = func() time.Time { return time.Now().Add(time.Duration(skew.Load())) }
	return func(d time.Duration) { skew.Store(int64(d)) }
}
