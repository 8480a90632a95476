package exampleapp

import (
	"bufio"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/alexedwards/scs/v2"

	"github.com/etcdstore/etcdstore"
	"github.com/etcdstore/etcdstore/internal/etcdtest"
	"github.com/etcdstore/etcdstore/internal/webtest"
)

// startEvents starts the app as startInstance does, with WithEvents: its
// consumer runs until the test ends.
func startEvents(t *testing.T, srv *etcdtest.Server, prefix string, idle time.Duration, opts ...etcdstore.Option) *instance {
	t.Helper()
	store := etcdstore.NewWithPrefix(srv.Client(t), prefix, opts...)
	sm := NewSessionManager(store, idle, time.Hour)
	// t.Context ends before the cleanups: the /events streams end before
	// ts.Close waits for them.
	ts := httptest.NewServer(New(sm, WithEvents(t.Context())))
	t.Cleanup(ts.Close)
	return &instance{url: ts.URL, sm: sm, store: store}
}

// sseStream reads server-sent events from an /events response.
type sseStream struct {
	r *bufio.Reader
}

// sseEvent is one server-sent event: its name and data.
type sseEvent struct {
	name, data string
}

// openEvents opens /events for browser b, with a deadline of d for the
// whole stream, and returns it once its first block (the retry delay)
// has come: the app has subscribed by then. It fails the test unless the
// answer is 200 with an event stream.
func openEvents(t *testing.T, b *webtest.Browser, base string, d time.Duration) *sseStream {
	t.Helper()
	return &sseStream{r: b.Events(base, d)}
}

// next returns the next event: the fields up to a blank line, skipping
// blocks with no data, as EventSource does.
func (s *sseStream) next() (sseEvent, error) {
	var ev sseEvent
	for {
		line, err := s.r.ReadString('\n')
		if err != nil {
			return sseEvent{}, err
		}
		line = strings.TrimSuffix(line, "\n")
		switch field, value, _ := strings.Cut(line, ": "); field {
		case "":
			if ev.data != "" {
				return ev, nil
			}
			ev = sseEvent{}
		case "event":
			ev.name = value
		case "data":
			ev.data = value
		}
	}
}

// wantEnded reads the next event of s and fails the test unless it is
// "ended" with reason, a time, and the end of the stream after it.
func wantEnded(t *testing.T, s *sseStream, reason string) {
	t.Helper()
	ev, err := s.next()
	if err != nil {
		t.Fatalf("/events: %v, want the event ended", err)
	}
	var d endedData
	if err := json.Unmarshal([]byte(ev.data), &d); err != nil {
		t.Fatalf("/events: data %q: %v", ev.data, err)
	}
	if _, err := time.Parse(time.RFC3339, d.At); ev.name != "ended" || d.Reason != reason || err != nil {
		t.Fatalf("/events: event %q data %q (at: %v), want ended, reason %q, a time", ev.name, ev.data, err, reason)
	}
	if ev, err := s.next(); !errors.Is(err, io.EOF) {
		t.Fatalf("/events after ended: %q, %v; want the stream to end", ev, err)
	}
}

// logoutEverywhere posts /logout-everywhere as b and fails the test
// unless it is answered 200.
func logoutEverywhere(t *testing.T, b *webtest.Browser, base string) {
	t.Helper()
	resp, err := b.Client.Post(base+"/logout-everywhere", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("POST /logout-everywhere: %s", resp.Status)
	}
}

// logDelays logs the p50 and the max of delays, what they measure.
func logDelays(t *testing.T, what string, delays []time.Duration) {
	t.Helper()
	slices.Sort(delays)
	t.Logf("%s, %d runs: p50 %v, max %v (all: %v)", what, len(delays),
		delays[len(delays)/2].Round(100*time.Microsecond), delays[len(delays)-1].Round(100*time.Microsecond), delays)
}

// Browser A follows /events; browser B, logged in as the same user,
// logs out everywhere; A's stream says so at once, and ends.
func TestEventsTellLogoutEverywhere(t *testing.T) {
	t.Parallel()
	app := startEvents(t, etcdtest.Start(t), "events:", time.Hour, etcdstore.WithPrincipal(PrincipalKey))
	var delays []time.Duration
	for range 5 {
		a, b := webtest.New(t), webtest.New(t)
		a.Want(app.url, "/login?name=ann", "logged in as ann\n")
		stream := openEvents(t, a, app.url, 10*time.Second)
		b.Want(app.url, "/login?name=ann", "logged in as ann\n")
		start := time.Now()
		logoutEverywhere(t, b, app.url)
		wantEnded(t, stream, "logged out everywhere")
		delays = append(delays, time.Since(start))
	}
	logDelays(t, "from POST /logout-everywhere to the other browser's event ended", delays)
}

// A session that expires (an idle timeout of 1 s) tells its stream so,
// at its expiry.
func TestEventsTellExpiry(t *testing.T) {
	t.Parallel()
	const idle = time.Second
	app := startEvents(t, etcdtest.Start(t), "expiry:", idle)
	a := webtest.New(t)
	a.Want(app.url, "/login?name=ann", "logged in as ann\n")
	start := time.Now()
	stream := openEvents(t, a, app.url, 10*time.Second) // a request: it renews the idle timeout
	wantEnded(t, stream, "expired")
	if took := time.Since(start); took < idle {
		t.Errorf("the event expired came %v after the last request, before the %v idle timeout", took, idle)
	}
}

// A page that follows a session that has already ended (a logout since
// the page loaded) is told at once; one with no session is answered 204,
// which stops its EventSource.
func TestEventsOfEndedOrNoSession(t *testing.T) {
	t.Parallel()
	app := startEvents(t, etcdtest.Start(t), "ended:", time.Hour)
	a := webtest.New(t)
	a.Want(app.url, "/login?name=ann", "logged in as ann\n")
	token := a.Token(app.url)
	a.Want(app.url, "/logout", "logged out\n")

	stale := webtest.New(t)
	stale.SetToken(app.url, token)
	wantEnded(t, openEvents(t, stale, app.url, 10*time.Second), "logged out")

	if code, body := webtest.New(t).Get(app.url, "/events"); code != http.StatusNoContent {
		t.Errorf("GET /events with no session: %d %q, want 204", code, body)
	}
}

// /events answers 501 without WithEvents, and on a store that streams no
// events.
func TestEventsNotImplemented(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t)
	plain := startInstance(t, srv, "plain:", time.Hour)
	noEvents := httptest.NewServer(New(NewSessionManager(
		struct{ scs.CtxStore }{etcdstore.NewWithPrefix(srv.Client(t), "noevents:")}, time.Hour, time.Hour),
		WithEvents(t.Context())))
	t.Cleanup(noEvents.Close)
	for _, base := range []string{plain.url, noEvents.URL} {
		ann := webtest.New(t)
		ann.Want(base, "/login?name=ann", "logged in as ann\n")
		if code, body := ann.Get(base, "/events"); code != http.StatusNotImplemented {
			t.Errorf("GET /events: %d %q, want 501", code, body)
		}
	}
}

// A browser gets / as a page that follows /events; other clients get
// the text.
func TestHomePageForBrowsers(t *testing.T) {
	t.Parallel()
	app := startEvents(t, etcdtest.Start(t), "home:", time.Hour)
	ann := webtest.New(t)
	ann.Want(app.url, "/login?name=ann", "logged in as ann\n")
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, app.url+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", "text/html,application/xhtml+xml,*/*;q=0.8")
	resp, err := ann.Client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	page := string(body)
	if ct := resp.Header.Get("Content-Type"); ct != "text/html; charset=utf-8" {
		t.Errorf("Content-Type %q, want text/html", ct)
	}
	for _, want := range []string{"<pre>logged in as ann\n", `id="signed-out"`, `new EventSource("/events")`, " /events, POST /logout-everywhere"} {
		if !strings.Contains(page, want) {
			t.Errorf("the page has no %q:\n%s", want, page)
		}
	}
	wantHome(t, "text", ann.MustGet(app.url, "/"), `logged in as ann\n`)
}

// The hub drops, without waiting, a stream whose buffer is full, and on
// a resync the streams of sessions that are not live; unsubscribing
// removes a stream.
func TestHubFanOut(t *testing.T) {
	t.Parallel()
	h := &hub{subs: make(map[string]map[chan etcdstore.Event]struct{})}
	slow, _ := h.subscribe("a")
	fast, unsubscribeFast := h.subscribe("a")
	other, _ := h.subscribe("b")
	gone, unsubscribe := h.subscribe("c")
	unsubscribe()
	unsubscribe() // twice is harmless
	if n := h.subscribers(); n != 3 {
		t.Fatalf("%d subscribers, want 3", n)
	}
	ended := etcdstore.Event{Kind: etcdstore.EventEnded, Token: "a", Reason: etcdstore.EndLogout}
	for range subscriberBuffer {
		h.publish(ended)
	}
	for range subscriberBuffer {
		<-fast
	}
	h.publish(ended) // slow is full: dropped, not waited for
	if got := len(fast); got != 1 {
		t.Errorf("fast has %d events waiting, want 1", got)
	}
	n := 0
	for range slow {
		n++
	}
	if n != subscriberBuffer {
		t.Errorf("slow got %d events before it was dropped, want %d", n, subscriberBuffer)
	}
	select {
	case ev, ok := <-gone:
		t.Errorf("an unsubscribed stream got %v, %v", ev, ok)
	default:
	}
	h.publish(etcdstore.Event{Kind: etcdstore.EventCreated, Token: "b"})
	h.publish(etcdstore.Event{Kind: etcdstore.EventResync, Live: []etcdstore.Event{{Token: "a"}}})
	if _, ok := <-other; ok {
		t.Error("a resync without b's session left its stream open")
	}
	if n := h.subscribers(); n != 1 {
		t.Errorf("%d subscribers after the resync, want fast's", n)
	}
	unsubscribeFast()
	if n := h.subscribers(); n != 0 {
		t.Errorf("%d subscribers after the last unsubscribed, want 0", n)
	}
}

// In a real browser: headless Chromium logs in, opens /, and when the
// session ends elsewhere (a logout everywhere from another device, a
// login past a limit of one session) the page says why, with no reload.
func TestEventsInChromium(t *testing.T) {
	t.Parallel()
	chrome := webtest.StartChrome(t)
	srv := etcdtest.Start(t)
	everywhere := startEvents(t, srv, "everywhere:", time.Hour, etcdstore.WithPrincipal(PrincipalKey))
	limited := startEvents(t, srv, "limited:", time.Hour, etcdstore.WithPrincipal(PrincipalKey), etcdstore.WithSessionLimit(1, etcdstore.EndOldest))
	var delays []time.Duration
	for _, tc := range []struct {
		name  string
		app   *instance
		login bool // the other browser logs in before the clock starts
		end   func(other *webtest.Browser, base string)
		want  string
	}{
		{"logout everywhere", everywhere, true, func(other *webtest.Browser, base string) {
			logoutEverywhere(t, other, base)
		}, "You were signed out: logged out everywhere"},
		{"session limit", limited, false, func(other *webtest.Browser, base string) {
			other.Want(base, "/login?name=ann", "logged in as ann\n")
		}, "You were signed out: ended by the session limit"},
	} {
		chrome.Navigate(tc.app.url + "/login?name=ann")
		chrome.Navigate(tc.app.url + "/")
		if got := chrome.Text("pre"); !strings.HasPrefix(got, "logged in as ann") {
			t.Fatalf("%s: the page says %q, want logged in as ann", tc.name, got)
		}
		// events is the page's EventSource: 1 is OPEN.
		waitFor(t, chrome, "return events.readyState", float64(1), tc.name+": the page's EventSource did not open")

		other := webtest.New(t)
		if tc.login {
			other.Want(tc.app.url, "/login?name=ann", "logged in as ann\n")
		}
		start := time.Now()
		tc.end(other, tc.app.url)
		waitFor(t, chrome, `return document.getElementById("signed-out").textContent`, tc.want, tc.name+": the page did not say it was signed out")
		delays = append(delays, time.Since(start))
		if got := chrome.Text("#signed-out"); got != tc.want {
			t.Errorf("%s: #signed-out says %q, want %q", tc.name, got, tc.want)
		}
	}
	logDelays(t, "from the other browser's ending request to the text in Chromium's page (polled every 20 ms)", delays)
}

// waitFor runs script in chrome until it returns want, for at most 10
// s, and fails the test with msg and what it last returned otherwise.
func waitFor(t *testing.T, chrome *webtest.Chrome, script string, want any, msg string) {
	t.Helper()
	var got any
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if chrome.Execute(&got, script); got == want {
			return
		}
	}
	t.Fatalf("%s within 10 s: %s returned %#v, want %#v", msg, script, got, want)
}
