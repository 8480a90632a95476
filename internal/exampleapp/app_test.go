package exampleapp

import (
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/alexedwards/scs/v2"

	"go.uber.org/goleak"

	"github.com/etcdstore/etcdstore"
	"github.com/etcdstore/etcdstore/internal/etcdtest"
	"github.com/etcdstore/etcdstore/internal/webtest"
)

// TestMain fails the run if a test leaves a goroutine behind. The one
// exception is the cleanup goroutine of the in-memory store scs.New
// installs before NewSessionManager replaces it: SCS gives no race-free
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
	sm    *scs.SessionManager
	store *etcdstore.EtcdStore
}

func startInstance(t *testing.T, srv *etcdtest.Server, prefix string, idle time.Duration, opts ...etcdstore.Option) *instance {
	t.Helper()
	store := etcdstore.NewWithPrefix(srv.Client(t), prefix, opts...)
	sm := NewSessionManager(store, idle, time.Hour)
	ts := httptest.NewServer(New(sm))
	t.Cleanup(ts.Close)
	return &instance{url: ts.URL, sm: sm, store: store}
}

// found reports whether the app's store holds a live session for token,
// the session cookie as the browser has it.
func found(t *testing.T, app *instance, token string) bool {
	t.Helper()
	_, ok, err := app.store.FindCtx(etcdtest.Context(t, 10*time.Second), etcdstore.StoreToken(app.sm, token))
	if err != nil {
		t.Fatal(err)
	}
	return ok
}

const hello = "Hello from a session!\n"

func TestPutGet(t *testing.T) {
	t.Parallel()
	app := startInstance(t, etcdtest.Start(t), "sessions:", time.Hour)
	ann, bob := webtest.New(t), webtest.New(t)
	ann.Want(app.url, "/get", "\n")
	ann.Want(app.url, "/put", "stored\n")
	ann.Want(app.url, "/get", hello)
	bob.Want(app.url, "/get", "\n")
	if !found(t, app, ann.Token(app.url)) {
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
	ann := webtest.New(t)
	ann.Want(a.url, "/put", "stored\n")
	ann.Want(b.url, "/get", hello)
	ann.Want(b.url, "/login?name=ann", "logged in as ann\n")
	ann.Want(a.url, "/count", "count: 1\n")
	ann.Want(a.url, "/count", "count: 2\n")
	ann.Want(a.url, "/", "logged in as ann\nmessage: \"Hello from a session!\"\n\nroutes: /put?m=MESSAGE /get /count /login?name=NAME /logout /sessions /devices /events, POST /logout-everywhere\n")
	// Another prefix is another set of sessions.
	ann.Want(other.url, "/get", "\n")
}

func TestLoginRenewsTokenAndLogoutDestroys(t *testing.T) {
	t.Parallel()
	app := startInstance(t, etcdtest.Start(t), "sessions:", time.Hour)
	ann := webtest.New(t)

	ann.Want(app.url, "/put", "stored\n")
	before := ann.Token(app.url)

	for _, name := range []string{"", strings.Repeat("x", MaxNameLen+1)} {
		if code, body := ann.Get(app.url, "/login?name="+name); code != http.StatusBadRequest {
			t.Fatalf("login with a %d-byte name: %d %q, want 400", len(name), code, body)
		}
	}
	resp, err := ann.Client.PostForm(app.url+"/login", url.Values{"name": {"ann"}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("POST /login: %s", resp.Status)
	}
	after := ann.Token(app.url)
	if after == "" || after == before {
		t.Fatalf("token after login %q, before %q: want a new one", after, before)
	}
	if found(t, app, before) {
		t.Error("the token from before the login still finds a session")
	}
	if !found(t, app, after) {
		t.Error("the token from the login finds no session")
	}
	ann.Want(app.url, "/get", hello) // the data survives the new token

	ann.Want(app.url, "/logout", "logged out\n")
	if tok := ann.Token(app.url); tok != "" {
		t.Errorf("cookie after logout %q, want none", tok)
	}
	if found(t, app, after) {
		t.Error("the session is still in the store after logout")
	}
	ann.Want(app.url, "/get", "\n")
}

func TestSessionsCountsLiveSessions(t *testing.T) {
	t.Parallel()
	app := startInstance(t, etcdtest.Start(t), "sessions:", time.Hour)
	ann, bob, cat := webtest.New(t), webtest.New(t), webtest.New(t)

	cat.Want(app.url, "/sessions", "live sessions: 0\n") // a request that changes nothing makes no session
	ann.Want(app.url, "/put", "stored\n")
	bob.Want(app.url, "/login?name=bob", "logged in as bob\n")
	cat.Want(app.url, "/sessions", "live sessions: 2\n")
	ann.Want(app.url, "/logout", "logged out\n")
	cat.Want(app.url, "/sessions", "live sessions: 1\n")
}

// SCS itself never checks a session's expiry after the store finds it:
// the store must not return a session past its idle timeout, or the
// visitor would find their old session (and login) again. A lease bucket
// of a minute keeps the session's key in etcd long after the timeout, so
// only the store's own expiry check can hide it in time.
func TestIdleSessionExpires(t *testing.T) {
	t.Parallel()
	const idle = time.Second
	app := startInstance(t, etcdtest.Start(t), "sessions:", idle, etcdstore.WithLeaseBucket(time.Minute))
	ann := webtest.New(t)
	ann.Want(app.url, "/login?name=ann", "logged in as ann\n")
	token := ann.Token(app.url)

	// Poll the store, which does not renew the session as a request
	// would, until the idle timeout has passed.
	deadline := time.Now().Add(10 * time.Second)
	for found(t, app, token) {
		if time.Now().After(deadline) {
			t.Fatalf("session still found 10 s after its %v idle timeout", idle)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// A browser that still sends the expired token must start afresh, and
	// is told why. The jar may have dropped the cookie at its Max-Age, so
	// send it by hand.
	body := getWithCookie(t, ann, app.url, "/", token)
	wantHome(t, "the expired token", body, `not logged in\nyou were signed out: expired, at \d\d:\d\d:\d\d UTC \(the session timed out\)\n`)
}

// /devices and /logout-everywhere need a login and a store that keeps
// sessions by user, and say so otherwise.
func TestDevicesNeedLoginAndIndex(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t)
	indexed := startInstance(t, srv, "devices:", time.Hour, etcdstore.WithPrincipal(PrincipalKey))
	plain := startInstance(t, srv, "plain:", time.Hour)

	ann := webtest.New(t)
	if code, _ := ann.Get(indexed.url, "/devices"); code != http.StatusForbidden {
		t.Errorf("/devices before login: %d, want 403", code)
	}
	ann.Want(indexed.url, "/login?name=ann", "logged in as ann\n")
	if got := ann.MustGet(indexed.url, "/devices"); !strings.HasPrefix(got, "sessions of ann: 1\n") || !strings.HasSuffix(got, " (this one)\n") {
		t.Errorf("/devices = %q, want this one", got)
	}
	if code, _ := ann.Get(indexed.url, "/logout-everywhere"); code != http.StatusMethodNotAllowed {
		t.Errorf("GET /logout-everywhere: %d, want 405: it takes a POST", code)
	}
	webtest.New(t).Want(indexed.url, "/login?name=ann", "logged in as ann\n") // another device
	resp, err := ann.Client.Post(indexed.url+"/logout-everywhere", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "ended 1 other session of ann\n" {
		t.Errorf("POST /logout-everywhere = %q", body)
	}

	bob := webtest.New(t)
	bob.Want(plain.url, "/login?name=bob", "logged in as bob\n")
	if code, _ := bob.Get(plain.url, "/devices"); code != http.StatusNotImplemented {
		t.Errorf("/devices on a store without WithPrincipal: %d, want 501", code)
	}
}
