package etcdstore_test

import (
	"context"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/alexedwards/scs/v2"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdstore/etcdstore"
	"github.com/etcdstore/etcdstore/internal/etcdtest"
)

// appServer is one app server: an SCS session manager on the shared store
// behind LoadAndSave, served over loopback.
type appServer struct {
	sm  *scs.SessionManager
	url string
}

func newAppServer(t *testing.T, store scs.Store) *appServer {
	t.Helper()
	sm := scs.New()
	sm.Store = store
	sm.Lifetime = time.Hour
	sm.ErrorFunc = func(w http.ResponseWriter, r *http.Request, err error) {
		t.Errorf("%s %s: %v", r.Method, r.URL.Path, err)
		http.Error(w, err.Error(), http.StatusInternalServerError)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/put", func(w http.ResponseWriter, r *http.Request) {
		sm.Put(r.Context(), "message", r.URL.Query().Get("m"))
	})
	mux.HandleFunc("/get", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, sm.GetString(r.Context(), "message"))
	})
	mux.HandleFunc("/login", func(w http.ResponseWriter, r *http.Request) {
		if err := sm.RenewToken(r.Context()); err != nil {
			t.Error(err)
		}
		sm.Put(r.Context(), "user", r.URL.Query().Get("user"))
	})
	mux.HandleFunc("/logout", func(w http.ResponseWriter, r *http.Request) {
		if err := sm.Destroy(r.Context()); err != nil {
			t.Error(err)
		}
	})
	srv := httptest.NewServer(sm.LoadAndSave(mux))
	t.Cleanup(srv.Close)
	return &appServer{sm: sm, url: srv.URL}
}

// browser is a user agent with a cookie jar, sending requests to any app
// server as a load balancer would.
type browser struct {
	t      *testing.T
	client *http.Client
}

func newBrowser(t *testing.T) *browser {
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	return &browser{t: t, client: &http.Client{Jar: jar, Timeout: 30 * time.Second}}
}

func (b *browser) get(app *appServer, path string) string {
	b.t.Helper()
	resp, err := b.client.Get(app.url + path)
	if err != nil {
		b.t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		b.t.Fatalf("GET %s: %s: %s", path, resp.Status, body)
	}
	b.t.Cleanup(b.client.CloseIdleConnections)
	return string(body)
}

// token returns the session token the browser holds for app.
func (b *browser) token(app *appServer) string {
	b.t.Helper()
	req := httptest.NewRequest("GET", app.url, nil)
	for _, c := range b.client.Jar.Cookies(req.URL) {
		if c.Name == app.sm.Cookie.Name {
			return c.Value
		}
	}
	return ""
}

func sessionKeys(t *testing.T, c *clientv3.Client, prefix string) []string {
	t.Helper()
	resp, err := c.Get(etcdtest.Context(t, 30*time.Second), prefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, kv := range resp.Kvs {
		keys = append(keys, strings.TrimPrefix(string(kv.Key), prefix))
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

	alice, bob := newBrowser(t), newBrowser(t)
	alice.get(app1, "/put?m=hello")
	if got := alice.get(app2, "/get"); got != "hello" {
		t.Fatalf("app2 read %q, want the value put through app1", got)
	}
	bob.get(app2, "/put?m=bye")
	if got := bob.get(app1, "/get"); got != "bye" {
		t.Fatalf("app1 read %q, want the value put through app2", got)
	}

	before := alice.token(app1)
	alice.get(app2, "/login?user=alice")
	after := alice.token(app1)
	if before == "" || after == before {
		t.Fatalf("login: token %q -> %q, want a new token", before, after)
	}
	keys := sessionKeys(t, c, prefix)
	sort.Strings(keys)
	want := []string{after, bob.token(app1)}
	sort.Strings(want)
	if strings.Join(keys, ",") != strings.Join(want, ",") {
		t.Fatalf("after RenewToken etcd holds %q, want %q (old token gone)", keys, want)
	}
	if got := alice.get(app1, "/get"); got != "hello" {
		t.Fatalf("after login the session lost its data: %q", got)
	}

	users := map[string]string{}
	err := app1.sm.Iterate(context.Background(), func(ctx context.Context) error {
		users[app1.sm.Token(ctx)] = app1.sm.GetString(ctx, "message")
		return nil
	})
	if err != nil || len(users) != 2 || users[after] != "hello" || users[bob.token(app1)] != "bye" {
		t.Fatalf("Iterate saw %v, %v; want both sessions", users, err)
	}

	alice.get(app1, "/logout")
	if keys := sessionKeys(t, c, prefix); len(keys) != 1 || keys[0] != bob.token(app1) {
		t.Fatalf("after Destroy etcd holds %q, want only bob's session", keys)
	}
	if got := alice.get(app2, "/get"); got != "" {
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
	app.sm.IdleTimeout = 500 * time.Millisecond

	b := newBrowser(t)
	b.get(app, "/put?m=secret")
	if got := b.get(app, "/get"); got != "secret" {
		t.Fatalf("within the idle timeout: %q", got)
	}
	time.Sleep(600 * time.Millisecond)
	if len(sessionKeys(t, c, prefix)) == 0 {
		t.Log("etcd already removed the key")
	}
	if got := b.get(app, "/get"); got != "" {
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
	srv := etcdtest.Start(t)
	c := srv.Client(t)
	const prefix = "scs-touch:"
	var apps []*appServer
	for range 2 {
		app := newAppServer(t, etcdstore.NewWithPrefix(srv.Client(t), prefix, etcdstore.WithTouchInterval(30*time.Minute)))
		app.sm.IdleTimeout = time.Hour
		apps = append(apps, app)
	}

	b := newBrowser(t)
	b.get(apps[0], "/login?user=alice")
	b.get(apps[1], "/put?m=hello")
	before := etcdtest.Revision(t, c)
	const requests = 40
	for i := range requests {
		if got := b.get(apps[i%2], "/get"); got != "hello" {
			t.Fatalf("request %d: %q", i, got)
		}
	}
	if n := etcdtest.Revision(t, c) - before; n != 0 {
		t.Fatalf("%d unchanged requests wrote %d times, want 0", requests, n)
	}

	b.get(apps[0], "/put?m=changed")
	if n := etcdtest.Revision(t, c) - before; n != 1 {
		t.Fatalf("a changing request wrote %d times, want 1", n)
	}
	if got := b.get(apps[1], "/get"); got != "changed" {
		t.Fatalf("the other app server read %q after the change, want %q", got, "changed")
	}
}
