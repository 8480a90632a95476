package etcdstore_test

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/etcdstore/etcdstore"
	"github.com/etcdstore/etcdstore/internal/etcdtest"
	"github.com/etcdstore/etcdstore/internal/exampleapp"
	"github.com/etcdstore/etcdstore/internal/webtest"
)

// logoutEverywhere posts to /logout-everywhere as b and returns the body.
func logoutEverywhere(t *testing.T, b *webtest.Browser, base string) string {
	t.Helper()
	resp, err := b.Client.Post(base+"/logout-everywhere", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("POST /logout-everywhere: %d %q %v", resp.StatusCode, body, err)
	}
	return string(body)
}

// TestSCSSessionsByUser: ann is logged in from three browsers, each on
// another of three app servers, and bob from one. A fourth store lists
// exactly ann's sessions; /logout-everywhere from one of her browsers ends
// the two others while they have requests in flight on every server (with
// IdleTimeout, so each commits), and none comes back; her kept session
// and bob's still work; a login again renews her token and keeps her
// principal.
func TestSCSSessionsByUser(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t)
	const prefix = "scs-users:"
	newStore := func() *etcdstore.EtcdStore {
		return etcdstore.NewWithPrefix(srv.Client(t), prefix, etcdstore.WithPrincipal(exampleapp.PrincipalKey))
	}
	var apps []*appServer
	for range 3 {
		app := newAppServer(t, newStore())
		app.sm.IdleTimeout = time.Hour
		apps = append(apps, app)
	}
	admin := newStore()

	var ann []*webtest.Browser
	for i := range 3 {
		b := webtest.New(t)
		b.Want(apps[i].url, "/login?name=ann", "logged in as ann\n")
		b.Want(apps[i].url, fmt.Sprintf("/put?m=ann%d", i), "stored\n")
		ann = append(ann, b)
	}
	bob := webtest.New(t)
	bob.Want(apps[1].url, "/login?name=bob", "logged in as bob\n")

	tokens := func(bs ...*webtest.Browser) []string {
		var ts []string
		for _, b := range bs {
			ts = append(ts, etcdstore.StoreToken(apps[0].sm, b.Token(apps[0].url)))
		}
		slices.Sort(ts)
		return ts
	}
	found, err := admin.FindByPrincipal(etcdtest.Context(t, 30*time.Second), "ann")
	if err != nil || !slices.Equal(slices.Sorted(maps.Keys(found)), tokens(ann...)) {
		t.Fatalf("FindByPrincipal(ann) on a fourth store = %d sessions, %v; want her three", len(found), err)
	}
	devices := ann[0].MustGet(apps[2].url, "/devices")
	if !strings.HasPrefix(devices, "sessions of ann: 3\n") || strings.Count(devices, "(this one)") != 1 {
		t.Fatalf("/devices = %q, want ann's three sessions, one of them this one", devices)
	}

	// Browsers 1 and 2 keep sending requests to every server while
	// browser 0 logs out everywhere else.
	var wg sync.WaitGroup
	started := make(chan struct{}, 2)
	for _, b := range ann[1:] {
		wg.Go(func() {
			for i := range 30 {
				b.Get(apps[i%3].url, "/get")
				if i == 3 {
					started <- struct{}{}
				}
			}
		})
	}
	<-started
	<-started
	if got := logoutEverywhere(t, ann[0], apps[0].url); got != "ended 2 other sessions of ann\n" {
		t.Errorf("/logout-everywhere = %q", got)
	}
	wg.Wait()

	ctx := etcdtest.Context(t, 30*time.Second)
	all, err := admin.AllCtx(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if keys := slices.Sorted(maps.Keys(all)); !slices.Equal(keys, tokens(ann[0], bob)) {
		t.Errorf("sessions after logout everywhere: %d, want ann's kept one and bob's", len(keys))
	}
	ann[0].Want(apps[1].url, "/get", "ann0\n")
	if got := ann[1].MustGet(apps[1].url, "/get"); got != "Hello from a session!\n" && got != "\n" {
		t.Errorf("a logged-out browser still reads %q", got)
	}
	got := ann[0].MustGet(apps[2].url, "/devices")
	if lines := strings.Split(strings.TrimSpace(got), "\n"); len(lines) != 2 || lines[0] != "sessions of ann: 1" || !strings.HasSuffix(lines[1], " (this one)") {
		t.Errorf("/devices after logout everywhere = %q, want this one only", got)
	}
	if got, err := admin.FindByPrincipal(ctx, "bob"); err != nil || len(got) != 1 {
		t.Errorf("bob's sessions after ann logged out everywhere: %d, %v", len(got), err)
	}

	// A login again renews the token; the principal stays.
	old := ann[0].Token(apps[0].url)
	ann[0].Want(apps[0].url, "/login?name=ann", "logged in as ann\n")
	found, err = admin.FindByPrincipal(ctx, "ann")
	st := func(token string) string { return etcdstore.StoreToken(apps[0].sm, token) }
	if err != nil || len(found) != 1 || found[st(ann[0].Token(apps[0].url))] == nil || found[st(old)] != nil {
		t.Errorf("after RenewToken: FindByPrincipal(ann) = %v, %v; want the new token only", slices.Collect(maps.Keys(found)), err)
	}
}
