package exampleapp

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/etcdstore/etcdstore"
	"github.com/etcdstore/etcdstore/internal/etcdtest"
	"github.com/etcdstore/etcdstore/internal/webtest"
)

// getWithCookie requests base+path from b with the session cookie token
// set by hand, as a browser that still holds a cookie the app told it to
// drop (another tab's copy, a restored backup), and returns the body,
// failing the test unless the status is 200.
func getWithCookie(t *testing.T, b *webtest.Browser, base, path, token string) string {
	t.Helper()
	req, err := http.NewRequestWithContext(context.Background(), http.MethodGet, base+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.AddCookie(&http.Cookie{Name: webtest.CookieName, Value: token})
	resp, err := b.Client.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s with a cookie: %d %q, want 200", path, resp.StatusCode, body)
	}
	return string(body)
}

// wantHome fails the test unless got, the home page, matches the
// regular expression want, which may leave the routes line out.
func wantHome(t *testing.T, who, got, want string) {
	t.Helper()
	if !regexp.MustCompile(`^` + want).MatchString(got) {
		t.Errorf("%s: GET / = %q\nwant it to match %q", who, got, want)
	}
}

// limited starts the app on a store with a limit of n sessions a user
// under policy, or with none for a negative n.
func limited(t *testing.T, n int, policy etcdstore.LimitPolicy) *instance {
	t.Helper()
	opts := []etcdstore.Option{etcdstore.WithPrincipal(PrincipalKey)}
	if n >= 0 {
		opts = append(opts, etcdstore.WithSessionLimit(n, policy))
	}
	return startInstance(t, etcdtest.Start(t), "limit:", time.Hour, opts...)
}

// A limit of one session with EndOldest: the second browser's login ends
// the first's session, and the first browser's next request says so,
// once, and drops the cookie.
func TestSessionLimitEndsOldest(t *testing.T) {
	t.Parallel()
	app := limited(t, 1, etcdstore.EndOldest)
	a, b := webtest.New(t), webtest.New(t)
	a.Want(app.url, "/login?name=ann", "logged in as ann\n")
	b.Want(app.url, "/login?name=ann", "logged in as ann\n")

	wantHome(t, "A after B's login", a.MustGet(app.url, "/"),
		`not logged in\nyou were signed out: ended by the session limit, at \d\d:\d\d:\d\d UTC \(you signed in on another device\)\nmessage: ""\n`)
	if tok := a.Token(app.url); tok != "" {
		t.Errorf("A's cookie after it was told %q, want none", tok)
	}
	wantHome(t, "A once told", a.MustGet(app.url, "/"), `not logged in\nmessage: ""\n`)
	wantHome(t, "B", b.MustGet(app.url, "/"), `logged in as ann\nmessage: ""\n`)
	if got := b.MustGet(app.url, "/devices"); !strings.HasPrefix(got, "sessions of ann: 1\n") {
		t.Errorf("B's /devices = %q, want one session", got)
	}
}

// A limit of one session with RefuseNew: the second browser's login is
// answered 409 with the reason and leaves it with no session; the first
// stays logged in, and once it logs out the second may log in.
func TestSessionLimitRefusesNew(t *testing.T) {
	t.Parallel()
	app := limited(t, 1, etcdstore.RefuseNew)
	a, b := webtest.New(t), webtest.New(t)
	a.Want(app.url, "/login?name=ann", "logged in as ann\n")
	b.Want(app.url, "/put", "stored\n") // a session from before the login

	code, body := b.Get(app.url, "/login?name=ann")
	if code != http.StatusConflict || body != tooManyDevices+"\n" {
		t.Fatalf("B's login: %d %q, want 409 %q", code, body, tooManyDevices+"\n")
	}
	if tok := b.Token(app.url); tok != "" {
		t.Errorf("B's cookie after the refusal %q, want none", tok)
	}
	wantHome(t, "B after the refusal", b.MustGet(app.url, "/"), `not logged in\nmessage: ""\n`)
	wantHome(t, "A", a.MustGet(app.url, "/"), `logged in as ann\nmessage: ""\n`)
	b.Want(app.url, "/sessions", "live sessions: 1\n")

	a.Want(app.url, "/logout", "logged out\n")
	b.Want(app.url, "/login?name=ann", "logged in as ann\n")
	wantHome(t, "B after A's logout", b.MustGet(app.url, "/"), `logged in as ann\n`)
}

// With no limit, both browsers stay logged in; a limit counts each user
// apart.
func TestSessionLimitOff(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		n    int
	}{{"no limit", -1}, {"zero", 0}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			app := limited(t, tc.n, etcdstore.RefuseNew)
			a, b := webtest.New(t), webtest.New(t)
			a.Want(app.url, "/login?name=ann", "logged in as ann\n")
			b.Want(app.url, "/login?name=ann", "logged in as ann\n")
			wantHome(t, "A", a.MustGet(app.url, "/"), `logged in as ann\n`)
			wantHome(t, "B", b.MustGet(app.url, "/"), `logged in as ann\n`)
		})
	}
	app := limited(t, 1, etcdstore.RefuseNew)
	webtest.New(t).Want(app.url, "/login?name=ann", "logged in as ann\n")
	webtest.New(t).Want(app.url, "/login?name=bob", "logged in as bob\n")
}

// A request with the cookie of a session logged out, or logged out
// everywhere from another device, says so.
func TestSignedOutSaysWhy(t *testing.T) {
	t.Parallel()
	app := limited(t, -1, etcdstore.EndOldest)
	a, b := webtest.New(t), webtest.New(t)
	a.Want(app.url, "/login?name=ann", "logged in as ann\n")
	token := a.Token(app.url)
	a.Want(app.url, "/logout", "logged out\n")
	got := getWithCookie(t, a, app.url, "/", token)
	wantHome(t, "the logged-out cookie", got,
		`not logged in\nyou were signed out: logged out, at \d\d:\d\d:\d\d UTC \(this session was logged out\)\nmessage: ""\n`)

	a.Want(app.url, "/login?name=ann", "logged in as ann\n")
	b.Want(app.url, "/login?name=ann", "logged in as ann\n")
	resp, err := b.Client.Post(app.url+"/logout-everywhere", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	wantHome(t, "A after B's logout everywhere", a.MustGet(app.url, "/"),
		`not logged in\nyou were signed out: logged out everywhere, at \d\d:\d\d:\d\d UTC \(you logged out everywhere from another device\)\n`)
}

// endedCounter is the store with its Ended calls counted.
type endedCounter struct {
	*etcdstore.EtcdStore
	calls atomic.Int32
}

func (c *endedCounter) Ended(ctx context.Context, token string) (etcdstore.Ending, bool, error) {
	c.calls.Add(1)
	return c.EtcdStore.Ended(ctx, token)
}

// The store is asked why a session ended only for a request whose
// cookie finds no session: not for one without a cookie, nor for one
// whose session is found.
func TestSignedOutAsksOnlyForMissingSessions(t *testing.T) {
	t.Parallel()
	store := &endedCounter{EtcdStore: etcdstore.NewWithPrefix(etcdtest.Start(t).Client(t), "asked:")}
	ts := httptest.NewServer(New(NewSessionManager(store, time.Hour, time.Hour)))
	t.Cleanup(ts.Close)
	srv := ts.URL
	ann := webtest.New(t)
	ann.Want(srv, "/get", "\n")
	ann.Want(srv, "/login?name=ann", "logged in as ann\n")
	ann.Want(srv, "/count", "count: 1\n")
	wantHome(t, "ann", ann.MustGet(srv, "/"), `logged in as ann\n`)
	if n := store.calls.Load(); n != 0 {
		t.Errorf("Ended called %d times for requests without a cookie or with a live session, want 0", n)
	}
	got := getWithCookie(t, ann, srv, "/", "no-such-session-token-000000000000000000000")
	wantHome(t, "an unknown token", got, `not logged in\nmessage: ""\n`) // the store knows nothing of it
	if n := store.calls.Load(); n != 1 {
		t.Errorf("Ended called %d times after a request with an unknown token, want 1", n)
	}
}
