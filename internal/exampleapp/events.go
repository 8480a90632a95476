package exampleapp

import (
	"context"
	"encoding/json"
	"fmt"
	"iter"
	"log"
	"net/http"
	"sync"
	"time"

	"github.com/etcdstore/etcdstore"
)

// eventSource is what a store that streams its sessions' events offers
// (etcdstore.EtcdStore).
type eventSource interface {
	Events(ctx context.Context, from etcdstore.Position, opts ...etcdstore.EventOption) iter.Seq2[etcdstore.Event, error]
}

// Option configures the app (New).
type Option func(*app)

// WithEvents serves /events: the app runs one consumer of the store's
// session events, from now until ctx ends, and tells each page following
// its own session there when that session ends. The /events streams end
// with ctx too, so end it before http.Server.Shutdown, which waits for
// them. Without it, or with a store that streams no events, /events
// answers 501.
func WithEvents(ctx context.Context) Option {
	return func(a *app) { a.eventsCtx = ctx }
}

// subscriberBuffer is how many events a page's stream may have waiting.
// It needs one (its session ends once); one that is full is dropped
// rather than waited for.
const subscriberBuffer = 4

// eventsRetry is how long the consumer waits before it starts again
// after its stream ended with an error.
const eventsRetry = 5 * time.Second

// hub fans the events of one consumer out to the /events streams, by the
// store's token of the session each follows. A stream never blocks the
// consumer: each has a buffered channel, and one that is full is closed
// and dropped, as are all of them when the consumer starts afresh. The
// page's EventSource then connects again, and /events checks the session
// anew. It is safe for concurrent use by multiple goroutines.
type hub struct {
	done  <-chan struct{} // the consumer's context's: the streams end with it
	ready chan struct{}   // closed once the consumer's first resync is published
	once  sync.Once

	mu sync.Mutex
	// protects subs: the channels of the streams, by store token
	subs map[string]map[chan etcdstore.Event]struct{}
}

// startHub returns a hub fed by one consumer of src's events, which runs
// until ctx ends.
func startHub(ctx context.Context, src eventSource) *hub {
	h := &hub{done: ctx.Done(), ready: make(chan struct{}), subs: make(map[string]map[chan etcdstore.Event]struct{})}
	go h.run(ctx, src)
	return h
}

// run consumes src's events from now until ctx ends. A stream that ends
// with an error (one the store cannot outlive: a refused permission, a
// closed client) is logged and started again after eventsRetry, from the
// position after the last event handled, so none is missed.
func (h *hub) run(ctx context.Context, src eventSource) {
	var from etcdstore.Position
	for {
		for ev, err := range src.Events(ctx, from) {
			if err != nil {
				log.Printf("session events: %v", err)
				break
			}
			h.publish(ev)
			if ev.Kind == etcdstore.EventResync {
				h.once.Do(func() { close(h.ready) })
			}
			from = ev.Position
		}
		h.dropAll()
		t := time.NewTimer(eventsRetry)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// subscribe returns the channel on which the hub sends the end of the
// session with store token token, and the func that unsubscribes it. The
// hub closes the channel when it drops the subscriber.
func (h *hub) subscribe(token string) (<-chan etcdstore.Event, func()) {
	ch := make(chan etcdstore.Event, subscriberBuffer)
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.subs[token] == nil {
		h.subs[token] = make(map[chan etcdstore.Event]struct{})
	}
	h.subs[token][ch] = struct{}{}
	return ch, func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		if _, ok := h.subs[token][ch]; ok {
			h.removeLocked(token, ch)
		}
	}
}

// publish hands ev to the streams it concerns: an end or an expiry to
// those of its session, and a resync drops those whose session is not
// among the live ones (it may have ended unseen).
func (h *hub) publish(ev etcdstore.Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	switch ev.Kind {
	case etcdstore.EventEnded, etcdstore.EventExpired:
		for ch := range h.subs[ev.Token] {
			select {
			case ch <- ev:
			default:
				h.dropLocked(ev.Token, ch)
			}
		}
	case etcdstore.EventResync:
		live := make(map[string]bool, len(ev.Live))
		for _, s := range ev.Live {
			live[s.Token] = true
		}
		for token, chans := range h.subs {
			if !live[token] {
				for ch := range chans {
					h.dropLocked(token, ch)
				}
			}
		}
	}
}

// dropAll drops every subscriber.
func (h *hub) dropAll() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for token, chans := range h.subs {
		for ch := range chans {
			h.dropLocked(token, ch)
		}
	}
}

// dropLocked closes ch, which ends its stream, and removes it. h.mu must
// be held.
func (h *hub) dropLocked(token string, ch chan etcdstore.Event) {
	close(ch)
	h.removeLocked(token, ch)
}

// removeLocked removes ch from the subscribers of token. h.mu must be
// held.
func (h *hub) removeLocked(token string, ch chan etcdstore.Event) {
	delete(h.subs[token], ch)
	if len(h.subs[token]) == 0 {
		delete(h.subs, token)
	}
}

// subscribers returns how many streams the hub feeds.
func (h *hub) subscribers() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, chans := range h.subs {
		n += len(chans)
	}
	return n
}

// events streams, as server-sent events, the end of the request's
// session: one event "ended", with data such as {"reason":"logged out
// everywhere","at":"2025-01-02T03:04:05Z"}, then the stream closes. A
// session that has already ended (signedOut found why) is told at once; a
// request with no session is answered 204, which tells an EventSource not
// to connect again. A stream the hub drops closes with nothing said, and
// the page's EventSource connects again a second later (retry).
//
// It subscribes before it checks, once, that the session has not ended
// since SCS loaded it (the store's Ended: one read of etcd), so that an
// end is told whether it came before or after the subscription. It waits
// for the consumer's first resync before it subscribes: that resync may
// have read the sessions before this one began, and would drop it.
func (a *app) events(w http.ResponseWriter, r *http.Request) {
	if a.hub == nil {
		http.Error(w, "the session store streams no events", http.StatusNotImplemented)
		return
	}
	ctx := r.Context()
	ending, ended := endingOf(ctx)
	var ch <-chan etcdstore.Event
	if !ended {
		token := a.sm.Token(ctx)
		if token == "" {
			w.WriteHeader(http.StatusNoContent)
			return
		}
		token = etcdstore.StoreToken(a.sm, token)
		select {
		case <-a.hub.ready:
		case <-ctx.Done():
			return
		case <-a.hub.done:
			return
		}
		var unsubscribe func()
		ch, unsubscribe = a.hub.subscribe(token)
		defer unsubscribe()
		if store, ok := a.sm.Store.(endings); ok {
			var err error
			if ending, ended, err = store.Ended(ctx, token); err != nil {
				serverError(w, r, err)
				return
			}
		}
	}

	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	fmt.Fprint(w, "retry: 1000\n\n")
	if !ended {
		if err := rc.Flush(); err != nil {
			return
		}
		select {
		case ev, ok := <-ch:
			if !ok {
				return // dropped
			}
			ending = etcdstore.Ending{Reason: ev.Reason, At: ev.At}
			if ev.Kind == etcdstore.EventExpired {
				ending.Reason = etcdstore.EndExpired
			}
		case <-ctx.Done():
			return
		case <-a.hub.done:
			return
		}
	}
	writeEnded(w, ending)
	rc.Flush()
}

// endedData is the data of the event "ended".
type endedData struct {
	Reason string `json:"reason"`
	At     string `json:"at,omitempty"` // RFC 3339, UTC
}

// writeEnded writes the event "ended" for e.
func writeEnded(w http.ResponseWriter, e etcdstore.Ending) {
	d := endedData{Reason: e.Reason.String()}
	if !e.At.IsZero() {
		d.At = e.At.UTC().Format(time.RFC3339)
	}
	data, err := json.Marshal(d)
	if err != nil {
		panic(err) // two strings
	}
	fmt.Fprintf(w, "event: ended\ndata: %s\n\n", data)
}
