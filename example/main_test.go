package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/etcdstore/etcdstore"
	"github.com/etcdstore/etcdstore/internal/etcdtest"
	"go.uber.org/goleak"
)

// TestMain fails the run if a test leaves a goroutine behind: every
// server, client and embedded etcd a test starts must be stopped. The one
// exception is the cleanup goroutine of the in-memory store scs.New
// installs before newSessionManager replaces it: SCS gives no race-free
// way to stop it (memstore's StopCleanup reads a field its goroutine
// writes).
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		goleak.IgnoreTopFunction("github.com/alexedwards/scs/v2/memstore.(*MemStore).startCleanup"))
}

// instance is one copy of the app on a shared etcd member, behind an
// httptest server, with its own etcd client and store.
type instance struct {
	url   string
	store *etcdstore.EtcdStore
}

// startInstance starts a copy of the app on srv, its sessions under
// prefix, stopped when the test ends.
func startInstance(t *testing.T, srv *etcdtest.Server, prefix string, idle time.Duration, opts ...etcdstore.Option) *instance {
	t.Helper()
	store := etcdstore.NewWithPrefix(srv.Client(t), prefix, opts...)
	a := &app{sessions: newSessionManager(store, idle, time.Hour)}
	ts := httptest.NewServer(a.routes())
	t.Cleanup(ts.Close)
	return &instance{url: ts.URL, store: store}
}

// browser is an HTTP client with a cookie jar that does not follow
// redirects, so each request is one request to the app.
type browser struct {
	t      *testing.T
	client *http.Client
}

func newBrowser(t *testing.T) *browser {
	t.Helper()
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	return &browser{t: t, client: &http.Client{
		Jar:           jar,
		Timeout:       10 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}}
}

// get requests base+path and returns the status and body.
func (b *browser) get(base, path string) (int, string) {
	b.t.Helper()
	resp, err := b.client.Get(base + path)
	return b.read(resp, err)
}

// post posts form to base+path and returns the status and body.
func (b *browser) post(base, path string, form url.Values) (int, string) {
	b.t.Helper()
	resp, err := b.client.PostForm(base+path, form)
	return b.read(resp, err)
}

func (b *browser) read(resp *http.Response, err error) (int, string) {
	b.t.Helper()
	if err != nil {
		b.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		b.t.Fatal(err)
	}
	return resp.StatusCode, string(body)
}

// token returns the session cookie the browser holds for base, or "".
func (b *browser) token(base string) string {
	b.t.Helper()
	u, err := url.Parse(base)
	if err != nil {
		b.t.Fatal(err)
	}
	for _, c := range b.client.Jar.Cookies(u) {
		if c.Name == "session" {
			return c.Value
		}
	}
	return ""
}

// wantHome requests / and checks the visit count and login line.
func (b *browser) wantHome(base string, visits int, user string) {
	b.t.Helper()
	code, body := b.get(base, "/")
	if code != http.StatusOK {
		b.t.Fatalf("GET /: status %d, want 200; body %q", code, body)
	}
	login := "not logged in"
	if user != "" {
		login = "user: " + user
	}
	if want := fmt.Sprintf("visits: %d\n%s\n", visits, login); !strings.HasPrefix(body, want) {
		b.t.Fatalf("GET /: got body %q, want it to begin %q", body, want)
	}
}

// found reports whether the store holds a live session for token.
func found(t *testing.T, store *etcdstore.EtcdStore, token string) bool {
	t.Helper()
	_, ok, err := store.FindCtx(etcdtest.Context(t, 10*time.Second), token)
	if err != nil {
		t.Fatal(err)
	}
	return ok
}

func TestVisitsAreCountedPerSession(t *testing.T) {
	t.Parallel()
	app := startInstance(t, etcdtest.Start(t), "sessions:", time.Hour)

	ann, bob := newBrowser(t), newBrowser(t)
	ann.wantHome(app.url, 1, "")
	ann.wantHome(app.url, 2, "")
	bob.wantHome(app.url, 1, "")
	ann.wantHome(app.url, 3, "")
	if !found(t, app.store, ann.token(app.url)) {
		t.Fatal("ann's session is not in the store")
	}
}

// A session committed by one copy of the app is found by another on the
// same cluster and prefix: what makes etcd a store for a fleet.
func TestInstancesShareSessions(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t)
	a := startInstance(t, srv, "sessions:", time.Hour)
	b := startInstance(t, srv, "sessions:", time.Hour)
	other := startInstance(t, srv, "other:", time.Hour)

	// Cookies do not depend on the port, so one jar serves all three
	// loopback servers.
	ann := newBrowser(t)
	ann.wantHome(a.url, 1, "")
	ann.wantHome(b.url, 2, "")
	if code, _ := ann.post(b.url, "/login", url.Values{"name": {"ann"}}); code != http.StatusSeeOther {
		t.Fatalf("POST /login: status %d, want 303", code)
	}
	ann.wantHome(a.url, 3, "ann")
	// Another prefix is another set of sessions.
	ann.wantHome(other.url, 1, "")
}

func TestLoginRenewsTokenAndLogoutDestroys(t *testing.T) {
	t.Parallel()
	app := startInstance(t, etcdtest.Start(t), "sessions:", time.Hour)
	ann := newBrowser(t)

	ann.wantHome(app.url, 1, "")
	before := ann.token(app.url)

	if code, body := ann.post(app.url, "/login", url.Values{"name": {""}}); code != http.StatusBadRequest {
		t.Fatalf("POST /login with no name: status %d, want 400; body %q", code, body)
	}
	if code, body := ann.post(app.url, "/login", url.Values{"name": {strings.Repeat("x", maxNameLen+1)}}); code != http.StatusBadRequest {
		t.Fatalf("POST /login with a long name: status %d, want 400; body %q", code, body)
	}
	if code, body := ann.post(app.url, "/login", url.Values{"name": {"ann"}}); code != http.StatusSeeOther {
		t.Fatalf("POST /login: status %d, want 303; body %q", code, body)
	}
	after := ann.token(app.url)
	if after == "" || after == before {
		t.Fatalf("token after login %q, before %q: want a new one", after, before)
	}
	if found(t, app.store, before) {
		t.Error("the token from before the login still finds a session")
	}
	if !found(t, app.store, after) {
		t.Error("the token from the login finds no session")
	}
	ann.wantHome(app.url, 2, "ann") // the visits survive the new token

	if code, body := ann.post(app.url, "/logout", nil); code != http.StatusSeeOther {
		t.Fatalf("POST /logout: status %d, want 303; body %q", code, body)
	}
	if tok := ann.token(app.url); tok != "" {
		t.Errorf("cookie after logout %q, want none", tok)
	}
	if found(t, app.store, after) {
		t.Error("the session is still in the store after logout")
	}
	ann.wantHome(app.url, 1, "")
}

func TestSessionsListsLiveSessions(t *testing.T) {
	t.Parallel()
	app := startInstance(t, etcdtest.Start(t), "sessions:", time.Hour)
	ann, bob := newBrowser(t), newBrowser(t)

	list := func(want string) {
		t.Helper()
		code, body := bob.get(app.url, "/sessions")
		if code != http.StatusOK || body != want {
			t.Fatalf("GET /sessions: status %d, body %q; want 200, %q", code, body, want)
		}
	}
	list("live sessions: 0\n") // bob's request made no session: nothing changed in it

	ann.wantHome(app.url, 1, "")
	ann.post(app.url, "/login", url.Values{"name": {"ann"}})
	ann.wantHome(app.url, 2, "ann")
	bob.wantHome(app.url, 1, "")
	list("live sessions: 2\n(not logged in)\tvisits: 1\nann\tvisits: 2\n")

	ann.post(app.url, "/logout", nil)
	list("live sessions: 1\n(not logged in)\tvisits: 1\n")
}

// SCS itself never checks a session's expiry after the store finds it:
// the store must not return a session past its idle timeout, or the
// visitor would find their old session (and login) again. A lease bucket
// of a minute keeps the session's key in etcd long after the timeout, so
// only the store's own expiry check can hide it in time.
func TestIdleSessionExpires(t *testing.T) {
	t.Parallel()
	const idle = 2 * time.Second
	app := startInstance(t, etcdtest.Start(t), "sessions:", idle, etcdstore.WithLeaseBucket(time.Minute))
	ann := newBrowser(t)

	if code, body := ann.post(app.url, "/login", url.Values{"name": {"ann"}}); code != http.StatusSeeOther {
		t.Fatalf("POST /login: status %d, want 303; body %q", code, body)
	}
	ann.wantHome(app.url, 1, "ann")
	token := ann.token(app.url)

	// Poll the store, which does not renew the session as a request
	// would, until the idle timeout has passed.
	deadline := time.Now().Add(10 * time.Second)
	for found(t, app.store, token) {
		if time.Now().After(deadline) {
			t.Fatalf("session still found 10 s after its %v idle timeout", idle)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// A browser that still sends the expired token must start afresh.
	// The jar may have dropped the cookie at its Max-Age, so send it by
	// hand.
	req, err := http.NewRequest(http.MethodGet, app.url+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.AddCookie(&http.Cookie{Name: "session", Value: token})
	resp, err := ann.client.Do(req)
	code, body := ann.read(resp, err)
	if want := "visits: 1\nnot logged in\n"; code != http.StatusOK || !strings.HasPrefix(body, want) {
		t.Fatalf("GET / with the expired token: status %d, body %q; want 200 and a body that begins %q", code, body, want)
	}
}

// The app as run from the command line: it starts an embedded etcd in its
// data directory, serves, stops cleanly when its context ends, and finds
// its sessions again when started anew on the same directory.
func TestServeKeepsSessionsAcrossRestarts(t *testing.T) {
	t.Parallel()
	cfg, err := parseFlags([]string{"-data", t.TempDir(), "-addr", "127.0.0.1:0"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	ann := newBrowser(t)

	// start runs serve in the background and returns the app's URL and a
	// func that stops it and waits for it to return.
	start := func() (string, func()) {
		t.Helper()
		ln, err := net.Listen("tcp", cfg.addr)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- serve(ctx, cfg, ln) }()
		stop := sync.OnceFunc(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("serve: %v", err)
				}
			case <-time.After(30 * time.Second):
				t.Error("serve did not return 30 s after its context ended")
			}
		})
		t.Cleanup(stop)
		return "http://" + ln.Addr().String(), stop
	}

	base, stop := start()
	ann.wantHome(base, 1, "")
	ann.post(base, "/login", url.Values{"name": {"ann"}})
	ann.wantHome(base, 2, "ann")
	stop()

	base, stop = start() // another port on the same host: the cookie still goes
	ann.wantHome(base, 3, "ann")
	stop()
}

func TestParseFlags(t *testing.T) {
	t.Parallel()
	cfg, err := parseFlags([]string{"-endpoints", "http://127.0.0.1:2379, http://127.0.0.1:22379,", "-prefix", "app:"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Join(cfg.endpoints, " "), "http://127.0.0.1:2379 http://127.0.0.1:22379"; got != want {
		t.Errorf("endpoints %q, want %q", got, want)
	}
	if cfg.prefix != "app:" || cfg.addr != "127.0.0.1:4000" || cfg.dataDir != "etcd-data" {
		t.Errorf("got prefix %q addr %q data %q, want app:, the default address and data directory", cfg.prefix, cfg.addr, cfg.dataDir)
	}
	for _, args := range [][]string{
		{"-prefix", ""},
		{"-lifetime", "0s"},
		{"-idle", "-1s"},
		{"extra"},
	} {
		if _, err := parseFlags(args, io.Discard); err == nil {
			t.Errorf("parseFlags(%q): no error", args)
		}
	}
}
