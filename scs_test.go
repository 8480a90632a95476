package etcdstore_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/alexedwards/scs/v2"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdstore/etcdstore"
	"github.com/etcdstore/etcdstore/internal/etcdtest"
	"github.com/etcdstore/etcdstore/internal/exampleapp"
	"github.com/etcdstore/etcdstore/internal/webtest"
)

// appServer is one app server: an SCS session manager on the shared store
// behind LoadAndSave, served over loopback.
type appServer struct {
	sm  *scs.SessionManager
	url string
}

func newAppServer(t *testing.T, store scs.Store) *appServer {
	t.Helper()
	sm := exampleapp.NewSessionManager(store, 0, time.Hour)
	sm.ErrorFunc = func(w http.ResponseWriter, r *http.Request, err error) {
		t.Errorf("%s %s: %v", r.Method, r.URL.Path, err)
		http.Error(w, err.Error(), http.StatusInternalServerError)
	}
	srv := httptest.NewServer(exampleapp.New(sm))
	t.Cleanup(srv.Close)
	return &appServer{sm: sm, url: srv.URL}
}

// sessionKeys returns the tokens of the sessions etcd holds under prefix,
// read directly: every key but the tombstones of deleted sessions.
func sessionKeys(t *testing.T, c *clientv3.Client, prefix string) []string {
	t.Helper()
	resp, err := c.Get(etcdtest.Context(t, 30*time.Second), prefix, clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, kv := range resp.Kvs {
		if !etcdstore.IsTombstone(kv.Value) {
			keys = append(keys, strings.TrimPrefix(string(kv.Key), prefix))
		}
	}
	return keys
}

// TestSCSTwoAppServers: a session written through one app server is read
// through another on the same store; RenewToken removes the old token
// from etcd; Iterate sees every session; Destroy removes the session.
func TestSCSTwoAppServers(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t)
	c := srv.Client(t)
	const prefix = "scs-test:"
	app1 := newAppServer(t, etcdstore.NewWithPrefix(c, prefix))
	// The second app server has its own client and store, as another
	// process would.
	app2 := newAppServer(t, etcdstore.NewWithPrefix(srv.Client(t), prefix))

	alice, bob := webtest.New(t), webtest.New(t)
	alice.MustGet(app1.url, "/put?m=hello")
	if got := alice.MustGet(app2.url, "/get"); got != "hello\n" {
		t.Fatalf("app2 read %q, want the value put through app1", got)
	}
	bob.MustGet(app2.url, "/put?m=bye")
	if got := bob.MustGet(app1.url, "/get"); got != "bye\n" {
		t.Fatalf("app1 read %q, want the value put through app2", got)
	}

	before := alice.Token(app1.url)
	alice.MustGet(app2.url, "/login?name=alice")
	after := alice.Token(app1.url)
	if before == "" || after == before {
		t.Fatalf("login: token %q -> %q, want a new token", before, after)
	}
	keys := sessionKeys(t, c, prefix)
	sort.Strings(keys)
	// With HashTokenInStore, etcd holds the tokens' digests.
	want := []string{etcdstore.StoreToken(app1.sm, after), etcdstore.StoreToken(app1.sm, bob.Token(app1.url))}
	sort.Strings(want)
	if strings.Join(keys, ",") != strings.Join(want, ",") {
		t.Fatalf("after RenewToken etcd holds %q, want %q (old token gone)", keys, want)
	}
	if got := alice.MustGet(app1.url, "/get"); got != "hello\n" {
		t.Fatalf("after login the session lost its data: %q", got)
	}

	// Iterate gives each session's context the token as the store has
	// it: with HashTokenInStore, its digest (scs v2.9.0, Iterate).
	users := map[string]string{}
	err := app1.sm.Iterate(context.Background(), func(ctx context.Context) error {
		users[app1.sm.Token(ctx)] = app1.sm.GetString(ctx, "message")
		return nil
	})
	if err != nil || len(users) != 2 || users[etcdstore.StoreToken(app1.sm, after)] != "hello" || users[etcdstore.StoreToken(app1.sm, bob.Token(app1.url))] != "bye" {
		t.Fatalf("Iterate saw %v, %v; want both sessions", users, err)
	}

	alice.MustGet(app1.url, "/logout")
	if keys := sessionKeys(t, c, prefix); len(keys) != 1 || keys[0] != etcdstore.StoreToken(app1.sm, bob.Token(app1.url)) {
		t.Fatalf("after Destroy etcd holds %q, want only bob's session", keys)
	}
	if got := alice.MustGet(app2.url, "/get"); got != "\n" {
		t.Fatalf("after logout the session still reads %q", got)
	}
}

// TestSCSIdleTimeout: with IdleTimeout, a session idle past it is not
// found, although its shared lease still holds the key. SCS never checks
// the expiry itself, so this is the store's job.
func TestSCSIdleTimeout(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t)
	c := srv.Client(t)
	const prefix = "scs-idle:"
	app := newAppServer(t, etcdstore.NewWithPrefix(c, prefix))
	app.sm.IdleTimeout = 2 * time.Second // /get must come within it, on a loaded machine too

	b := webtest.New(t)
	b.MustGet(app.url, "/put?m=secret")
	if got := b.MustGet(app.url, "/get"); got != "secret\n" {
		t.Fatalf("within the idle timeout: %q", got)
	}
	time.Sleep(2100 * time.Millisecond)
	if len(sessionKeys(t, c, prefix)) == 0 {
		t.Log("etcd already removed the key")
	}
	if got := b.MustGet(app.url, "/get"); got != "\n" {
		t.Fatalf("after the idle timeout the session came back: %q", got)
	}
}

// TestSCSTouchInterval: with IdleTimeout and WithTouchInterval, requests
// that change nothing write nothing, on whichever app server they land,
// though SCS commits on every request and its GobCodec encodes the
// session's two values in random order; a request that changes the
// session is written at once and read through the other app server.
func TestSCSTouchInterval(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t, etcdtest.Own())
	c := srv.Client(t)
	const prefix = "scs-touch:"
	var apps []*appServer
	for range 2 {
		app := newAppServer(t, etcdstore.NewWithPrefix(srv.Client(t), prefix, etcdstore.WithTouchInterval(30*time.Minute)))
		app.sm.IdleTimeout = time.Hour
		apps = append(apps, app)
	}

	b := webtest.New(t)
	b.MustGet(apps[0].url, "/login?name=alice")
	b.MustGet(apps[1].url, "/put?m=hello")
	before := etcdtest.Revision(t, c)
	const requests = 40
	for i := range requests {
		if got := b.MustGet(apps[i%2].url, "/get"); got != "hello\n" {
			t.Fatalf("request %d: %q", i, got)
		}
	}
	if n := etcdtest.Revision(t, c) - before; n != 0 {
		t.Fatalf("%d unchanged requests wrote %d times, want 0", requests, n)
	}

	b.MustGet(apps[0].url, "/put?m=changed")
	if n := etcdtest.Revision(t, c) - before; n != 1 {
		t.Fatalf("a changing request wrote %d times, want 1", n)
	}
	if got := b.MustGet(apps[1].url, "/get"); got != "changed\n" {
		t.Fatalf("the other app server read %q after the change, want %q", got, "changed")
	}
}

// TestSCSEtcdDown: with etcd stopped, a request that carries a session
// cookie gets a 500 through the ErrorFunc about the store's timeout later,
// although SCS gives the store the request's context, which has no
// deadline.
func TestSCSEtcdDown(t *testing.T) {
	t.Parallel()
	const timeout = time.Second
	srv := etcdtest.Start(t, etcdtest.Own())
	store := etcdstore.NewWithPrefix(srv.Client(t), "scs-down:", etcdstore.WithTimeout(timeout))
	sm := exampleapp.NewSessionManager(store, 0, time.Hour)
	errs := make(chan error, 1)
	sm.ErrorFunc = func(w http.ResponseWriter, r *http.Request, err error) {
		select {
		case errs <- err:
		default:
		}
		http.Error(w, "session store unavailable", http.StatusInternalServerError)
	}
	app := httptest.NewServer(exampleapp.New(sm))
	t.Cleanup(app.Close)
	browser := webtest.New(t)
	browser.MustGet(app.URL, "/put?m=hi")
	srv.Stop()

	start := time.Now()
	code, _ := browser.Get(app.URL, "/get")
	took := time.Since(start)
	if code != http.StatusInternalServerError {
		t.Fatalf("GET /get with etcd down: %d, want 500", code)
	}
	if err := <-errs; !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("ErrorFunc got %v, want an error wrapping context.DeadlineExceeded", err)
	}
	if took < timeout-50*time.Millisecond || took > timeout+3*time.Second {
		t.Errorf("GET /get with etcd down answered after %v, want about %v", took, timeout)
	}
}
